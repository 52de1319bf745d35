"""fused_sampler.generate against transformers on tiny randomly initialised models.

No downloads: GPT-2 and Llama models are built from small configs under a fixed
``torch.manual_seed``.  The tests pin the sampler to the reference backend (tests/conftest.py sets
TRITON_INTERPRET=1 on CPU, where the interpreted kernel takes seconds per call), except one
short test that runs whatever ``backend="auto"`` picks and holds it to the reference.
Skipped when transformers is not installed.
"""
from __future__ import annotations

import functools
import subprocess
import sys

import numpy as np
import pytest
import torch

import fused_sampler as fs
from fused_sampler.generate import GenerateOutput, StepTimer, time_decode
from fused_sampler.generate import generate as generate_any_backend

generate = functools.partial(generate_any_backend, backend="reference")
filtered_probs = functools.partial(fs.filtered_probs, backend="reference")

V, BOS, EOS, PAD = 100, 0, 1, 2
PROMPTS = [[5, 6, 7, 8, 9, 10], [11, 12], [13, 14, 15, 16]]


@pytest.fixture(scope="module")
def transformers():
    return pytest.importorskip("transformers")


def _gpt2(tf):
    cfg = tf.GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=V, n_positions=64,
                        bos_token_id=BOS, eos_token_id=EOS, pad_token_id=PAD,
                        initializer_range=0.2)
    torch.manual_seed(0)
    return tf.GPT2LMHeadModel(cfg).eval()


def _llama(tf):
    cfg = tf.LlamaConfig(num_hidden_layers=2, hidden_size=32, intermediate_size=64,
                         num_attention_heads=2, num_key_value_heads=1, vocab_size=V,
                         max_position_embeddings=64, bos_token_id=BOS, eos_token_id=EOS,
                         pad_token_id=PAD, initializer_range=0.2)
    torch.manual_seed(0)
    return tf.LlamaForCausalLM(cfg).eval()


@pytest.fixture(scope="module")
def gpt2(transformers):
    return _gpt2(transformers)


@pytest.fixture(scope="module", params=["gpt2", "llama"])
def model(request, transformers):
    # GPT-2 has learned absolute positions, Llama rotary ones: both break if the
    # position ids ignore the padding.
    return {"gpt2": _gpt2, "llama": _llama}[request.param](transformers)


def _pad(prompts, side="left"):
    """``(ids, mask)`` int64 ``[B, P]`` with PAD on the given side."""
    width = max(map(len, prompts))
    ids = torch.full((len(prompts), width), PAD, dtype=torch.int64)
    mask = torch.zeros_like(ids)
    for i, p in enumerate(prompts):
        cols = slice(width - len(p), width) if side == "left" else slice(0, len(p))
        ids[i, cols] = torch.tensor(p)
        mask[i, cols] = 1
    return ids, mask


def _hf_greedy(model, ids, mask, n, eos=None):
    return model.generate(input_ids=ids, attention_mask=mask, do_sample=False,
                          max_new_tokens=n, pad_token_id=PAD, eos_token_id=eos)


# ---------------------------------------------------------------- greedy vs transformers

def test_greedy_matches_hf_left_padding(model):
    ids, mask = _pad(PROMPTS, "left")
    want = _hf_greedy(model, ids, mask, 10)
    got = generate(model, ids, mask, max_new_tokens=10, temperature=0.0, echo=True)
    assert torch.equal(got.sequences, want)
    plain = generate(model, ids, mask, max_new_tokens=10, temperature=0.0)
    assert torch.equal(plain.sequences, want[:, ids.shape[1]:])
    assert plain.lengths.tolist() == [10] * 3
    assert plain.prompt_lengths.tolist() == [len(p) for p in PROMPTS]


def test_greedy_right_padding_is_converted_to_left(model):
    left_ids, left_mask = _pad(PROMPTS, "left")
    right_ids, right_mask = _pad(PROMPTS, "right")
    want = _hf_greedy(model, left_ids, left_mask, 10)
    got = generate(model, right_ids, right_mask, max_new_tokens=10, temperature=0.0,
                   echo=True, pad_token_id=PAD)
    # echo returns the prompt left-aligned, so the whole thing equals HF's left-padded run
    assert torch.equal(got.sequences, want)


# ------------------------------------------------------------------------------ EOS, length

def test_eos_stops_a_row_and_pads_the_rest(gpt2):
    ids, mask = _pad(PROMPTS)
    n = 10
    free = generate(gpt2, ids, mask, max_new_tokens=n, temperature=0.0).sequences
    eos = int(free[0, 3])                 # row 0 is forced to stop by step 3
    got = generate(gpt2, ids, mask, max_new_tokens=n, temperature=0.0, eos_token_id=eos,
                   pad_token_id=PAD, echo=True)
    want = _hf_greedy(gpt2, ids, mask, n, eos=eos)
    assert torch.equal(got.sequences, want)
    new = got.sequences[:, ids.shape[1]:]
    for b in range(len(PROMPTS)):
        hits = (free[b] == eos).nonzero().flatten().tolist()
        stop = hits[0] + 1 if hits else new.shape[1]
        assert got.lengths[b] == (hits[0] + 1 if hits else n)
        assert torch.equal(new[b, :stop], free[b, :stop])
        assert (new[b, stop:] == PAD).all()
    assert got.lengths[0] <= 4


def test_stops_early_when_every_row_has_finished(gpt2):
    ids, mask = _pad(PROMPTS)
    free = generate(gpt2, ids, mask, max_new_tokens=6, temperature=0.0).sequences
    eos_ids = sorted(set(free[:, 1].tolist()))     # every row emits one of these by step 1
    got = generate(gpt2, ids, mask, max_new_tokens=6, temperature=0.0,
                   eos_token_id=eos_ids, pad_token_id=PAD, return_logprobs=True)
    assert got.sequences.shape[1] == int(got.lengths.max()) <= 2
    assert got.logprobs.shape == got.sequences.shape
    assert torch.equal(got.sequences, _hf_greedy(gpt2, ids, mask, 6, eos=eos_ids)[:, 6:])


def test_sampled_rows_after_eos_have_pad_and_zero_logprob(gpt2):
    ids, mask = _pad(PROMPTS * 4)
    seeds = torch.arange(12, dtype=torch.int64) * 101
    free = generate(gpt2, ids, mask, max_new_tokens=12, seed=seeds)
    eos = int(free.sequences[0, 2])
    got = generate(gpt2, ids, mask, max_new_tokens=12, seed=seeds, eos_token_id=eos,
                   return_logprobs=True)
    for b in range(12):
        n = int(got.lengths[b])
        assert torch.equal(got.sequences[b, :n], free.sequences[b, :n])
        assert (got.sequences[b, n:] == eos).all()            # pad defaults to the EOS id
        assert (got.logprobs[b, n:] == 0).all()
        assert (got.logprobs[b, :n] < 0).all()


@pytest.mark.parametrize("n", [0, 1, 7])
def test_max_new_tokens_holds(gpt2, n):
    ids, mask = _pad(PROMPTS)
    out = generate(gpt2, ids, mask, max_new_tokens=n, top_p=0.9, seed=3,
                   return_logprobs=True)
    assert isinstance(out, GenerateOutput)
    assert out.sequences.shape == (3, n) and out.sequences.dtype == torch.int64
    assert out.logprobs.shape == (3, n) and out.logprobs.dtype == torch.float32
    assert out.lengths.tolist() == [n] * 3
    echo = generate(gpt2, ids, mask, max_new_tokens=n, top_p=0.9, seed=3, echo=True)
    assert echo.sequences.shape == (3, ids.shape[1] + n)
    assert torch.equal(echo.sequences[:, ids.shape[1]:], out.sequences)


# ------------------------------------------------------------------------------- logprobs

def test_logprobs_match_a_full_forward_recomputation(model):
    prompts = PROMPTS + [[20, 21, 22]]
    ids, mask = _pad(prompts, "right")
    params = dict(temperature=torch.tensor([0.0, 0.7, 1.0, 1.3]),
                  top_k=torch.tensor([0, 0, 20, 5]),
                  top_p=torch.tensor([1.0, 0.9, 1.0, 0.8]),
                  min_p=torch.tensor([0.0, 0.0, 0.05, 0.0]))
    n = 8
    out = generate(model, ids, mask, max_new_tokens=n, seed=torch.tensor([1, 2, 3, 4]),
                   echo=True, return_logprobs=True, pad_token_id=PAD, **params)
    seq = out.sequences
    full_mask = torch.cat([torch.sort(mask, dim=1, stable=True).values,
                           torch.ones(len(prompts), n, dtype=torch.int64)], dim=1)
    pos = (full_mask.cumsum(1) - 1).masked_fill(full_mask == 0, 1)
    with torch.no_grad():
        logits = model(input_ids=seq, attention_mask=full_mask, position_ids=pos).logits
    p = ids.shape[1]
    for t in range(n):
        probs = filtered_probs(logits[:, p - 1 + t], **params)
        tok = seq[:, p + t]
        picked = probs.gather(1, tok[:, None]).squeeze(1)
        assert (picked > 0).all(), f"step {t}: a token outside the kept set was drawn"
        torch.testing.assert_close(out.logprobs[:, t], picked.log(), atol=2e-4, rtol=0)
    assert (out.logprobs[0] == 0).all()                  # the greedy row


# ---------------------------------------------------------------------------- distribution

@pytest.mark.parametrize("params", [dict(temperature=0.9, top_p=0.9),
                                    dict(temperature=1.2, top_k=20, min_p=0.05)])
def test_first_step_follows_the_filtered_distribution(gpt2, params):
    scipy_stats = pytest.importorskip("scipy.stats")
    rows, prompt = 2000, [5, 6, 7]
    ids = torch.tensor([prompt] * rows)
    seeds = torch.arange(rows, dtype=torch.int64) * 7919 + 12345
    out = generate(gpt2, ids, max_new_tokens=1, seed=seeds, **params)
    with torch.no_grad():
        logits = gpt2(input_ids=torch.tensor([prompt])).logits[:, -1]
    expected = filtered_probs(logits, **params)[0].double().numpy() * rows
    counts = np.bincount(out.sequences[:, 0].numpy(), minlength=V).astype(float)
    assert counts[expected == 0].sum() == 0, "drew a token the filters remove"
    # pool the rare cells so that every expected count is >= 5 (chi-square's validity)
    kept = expected > 0
    big = kept & (expected >= 5)
    obs = list(counts[big]) + ([counts[kept & ~big].sum()] if (kept & ~big).any() else [])
    exp = list(expected[big]) + ([expected[kept & ~big].sum()] if (kept & ~big).any() else [])
    if exp[-1] < 5:                                      # a small pooled cell: merge it too
        obs[-2:], exp[-2:] = [sum(obs[-2:])], [sum(exp[-2:])]
    assert len(exp) >= 5
    p_value = scipy_stats.chisquare(obs, exp).pvalue
    assert p_value > 1e-3, f"chi-square p = {p_value:.2e} over {len(exp)} cells"


# --------------------------------------------------------------------------------- seeds

def test_a_row_continues_the_same_alone_and_in_a_batch(model):
    target, seed = [30, 31, 32], 4242
    knobs = dict(temperature=1.0, top_p=0.95, max_new_tokens=10, return_logprobs=True)
    alone = generate(model, torch.tensor([target]), seed=torch.tensor([seed]), **knobs)
    # in the batch the target is padded on the left (it is not the longest prompt)
    ids, mask = _pad([[40, 41, 42, 43, 44, 45], target, [50]], "right")
    batch = generate(model, ids, mask, seed=torch.tensor([7, seed, 9]), **knobs)
    assert torch.equal(batch.sequences[1], alone.sequences[0])
    torch.testing.assert_close(batch.logprobs[1], alone.logprobs[0], atol=1e-5, rtol=0)
    assert not torch.equal(batch.sequences[0][:3], batch.sequences[2][:3])


def test_seed_forms(gpt2):
    ids = torch.tensor([[5, 6, 7]] * 4)
    same = generate(gpt2, ids, max_new_tokens=8, seed=11).sequences
    assert all(torch.equal(same[0], row) for row in same)     # an int seed is every row's
    torch.manual_seed(5)
    a = generate(gpt2, ids, max_new_tokens=8)
    torch.manual_seed(5)
    b = generate(gpt2, ids, max_new_tokens=8)
    assert torch.equal(a.sequences, b.sequences) and torch.equal(a.seeds, b.seeds)
    assert len(set(a.seeds.tolist())) == 4                    # None draws one seed per row
    again = generate(gpt2, ids, max_new_tokens=8, seed=a.seeds)
    assert torch.equal(again.sequences, a.sequences)


def test_auto_backend_draws_what_the_reference_draws(gpt2):
    # "auto" is the Triton kernel on CUDA or under TRITON_INTERPRET=1 (kept tiny: the
    # interpreter takes seconds per call); the contract says it draws the reference's
    # tokens for the same seed and offset.
    ids, mask = _pad(PROMPTS[:2], "right")
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = gpt2.to(dev)
    ids, mask = ids.to(dev), mask.to(dev)
    try:
        knobs = dict(max_new_tokens=3, top_p=0.9, seed=torch.tensor([3, 4], device=dev),
                     return_logprobs=True)
        auto = generate_any_backend(model, ids, mask, **knobs)
        ref = generate(model, ids, mask, **knobs)
        assert torch.equal(auto.sequences, ref.sequences)
        torch.testing.assert_close(auto.logprobs, ref.logprobs, atol=1e-5, rtol=0)
        greedy = generate_any_backend(model, ids, mask, max_new_tokens=3, temperature=0.0)
        assert torch.equal(greedy.sequences, generate(model, ids, mask, max_new_tokens=3,
                                                      temperature=0.0).sequences)
    finally:
        gpt2.to("cpu")


# ------------------------------------------------------------------------ timer, errors

def test_step_timer_splits_the_decode_step(gpt2):
    timer = StepTimer()
    generate(gpt2, torch.tensor([[5, 6, 7]] * 2), max_new_tokens=5, seed=0, timer=timer)
    s = timer.summary(batch=2)
    assert s["steps"] == 4 and len(timer.sample) == 5
    assert 0 < s["sample_share"] < 1 and s["tokens_per_s"] > 0
    stats = time_decode(gpt2, torch.tensor([[5, 6, 7]] * 2), max_new_tokens=4, repeats=2,
                        top_p=0.9, seed=0, backend="reference")
    assert stats["steps"] == 6 and stats["batch"] == 2 and stats["vocab"] == V
    assert stats["backend"] == "reference" and 0 < stats["sample_share"] < 1


def test_bad_arguments(gpt2):
    ids = torch.tensor([[5, 6, 7]])
    with pytest.raises(ValueError, match="max_new_tokens"):
        generate(gpt2, ids, max_new_tokens=-1)
    with pytest.raises(ValueError, match="attention_mask"):
        generate(gpt2, ids, torch.ones(1, 2), max_new_tokens=1)
    with pytest.raises(ValueError, match="seed"):
        generate(gpt2, ids, max_new_tokens=1, seed=torch.tensor([1], dtype=torch.int32))
    with pytest.raises(ValueError, match="unmasked"):
        generate(gpt2, ids, torch.zeros(1, 3), max_new_tokens=1)
    with pytest.raises(ValueError, match="top_p"):
        generate(gpt2, ids, max_new_tokens=1, top_p=1.5)


def test_module_imports_without_transformers():
    code = ("import sys; sys.modules['transformers'] = None; "
            "from fused_sampler.generate import generate; print(generate.__name__)")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "generate"
