"""The Triton kernel against the reference: kept sets, probabilities, tokens, log-probs.

On CPU the kernel runs in Triton's interpreter.  Small tile widths, histogram resolutions
and scratch capacities force every loop and branch of the search on small inputs:
several tiles per row, refine passes, gathers, the ties that end a refine at one key.
"""
import math

import pytest
import torch

import fused_sampler as fs
from fused_sampler import _args, reference, testing
from fused_sampler.kernels import sampler

pytestmark = pytest.mark.interpreter

# tile width / histogram bits / scratch capacity
CONFIGS = {
    "tiny": dict(block=16, bin_bits=3, cap=8),      # many tiles, refines, tiny gathers
    "small": dict(block=64, bin_bits=5, cap=32),
    "default": dict(),
}
CASES = {
    "plain": dict(),
    "greedy": dict(temperature=0.0),
    "temp": dict(temperature=0.35),
    "top_k": dict(top_k=7),
    "top_p": dict(top_p=0.8),
    "min_p": dict(min_p=0.05),
    "top_k_top_p": dict(temperature=0.7, top_k=50, top_p=0.9),
    "joint": dict(temperature=1.3, top_k=20, top_p=0.7, order="joint"),
    "all": dict(temperature=0.9, top_k=30, top_p=0.95, min_p=0.02),
}


def llm_like(B, V, seed=0, dtype=torch.float32):
    """A heavy head and a long tail: normal(0, 3) logits plus a few spikes."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, V, generator=g) * 3
    spikes = torch.randint(0, V, (B, 3), generator=g)
    x.scatter_(1, spikes, x.max(dim=1, keepdim=True).values + 4 * torch.rand(B, 3, generator=g))
    return x.to(dtype)


def run(logits, cfg, probs_mode, seed=None, offset=0, **params):
    a = _args.check(logits, params.get("temperature", 1.0), params.get("top_k"),
                    params.get("top_p"), params.get("min_p"),
                    params.get("order", "top_k_first"),
                    seed=torch.arange(logits.shape[0]) + 7 if seed is None else seed,
                    offset=offset, validate=False)
    tokens, logprobs, probs, passes, _ = sampler.launch(a, probs_mode, stats=True, **cfg)
    return a, tokens, logprobs, probs, passes


def assert_matches_reference(logits, cfg, **params):
    a, _, _, probs, passes = run(logits, cfg, True, **params)
    verdict = testing.compare_filtered_probs(logits, probs=probs, **params)
    assert verdict, verdict.detail
    a, tokens, logprobs, _, passes2 = run(logits, cfg, False, **params)
    ref_tokens, ref_logprobs = reference.draw(a)
    assert torch.equal(tokens, ref_tokens)
    torch.testing.assert_close(logprobs, ref_logprobs, rtol=1e-5, atol=1e-5)
    assert int(passes2.max()) < sampler.max_passes(cfg.get("bin_bits", 4))
    return passes2


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: c)
@pytest.mark.parametrize("case", CASES, ids=lambda c: c)
def test_matches_reference_on_llm_like_logits(case, cfg):
    V = 100 if cfg == "tiny" else 300           # the interpreter's cost grows with tiles
    assert_matches_reference(llm_like(2, V, seed=len(case)), CONFIGS[cfg], **CASES[case])


@pytest.mark.parametrize("bin_bits", [4, 6])
def test_top_p_boundary_hit_exactly_between_far_apart_tokens(bin_bits):
    # found by the fuzz campaign (seed 20261203, docs/reliability.md): at T = inf every
    # weight is 1 and p * Z = 128 falls exactly between two tokens.  Row 0: the tokens on
    # either side lie in bins far apart (1.0 and 0.25), whose bounds could not place
    # them; row 1: empty bins between the boundary and the next token (positive and
    # negative logits) held the search's window, and its shift, open.  Both searches ran
    # to the cap and kept 134 and 70 tokens for 128; the search now closes in a few reads
    i = torch.arange(256)[None].float()
    x = torch.cat([torch.cat([torch.full((1, 128), 1.0), torch.zeros(1, 128)], 1) + i * 1e-3,
                   torch.where(i < 128, 1e-3 * (i + 1), -1e-3 * (i - 127))])
    passes = assert_matches_reference(x, dict(block=32, bin_bits=bin_bits, cap=16),
                                      temperature=float("inf"), top_p=0.5, order="joint")
    assert int(passes.max()) <= 6, passes


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16],
                         ids=["fp32", "fp16", "bf16"])
@pytest.mark.parametrize("case", ["top_k_top_p", "top_p", "all"])
def test_every_dtype(dtype, case):
    assert_matches_reference(llm_like(2, 500, seed=3, dtype=dtype), CONFIGS["small"],
                             **CASES[case])


@pytest.mark.parametrize("V", [1, 2, 17, 64, 65, 257])
@pytest.mark.parametrize("case", ["plain", "top_k_top_p", "top_p", "min_p"])
def test_vocab_sizes_around_the_tile(V, case):
    assert_matches_reference(llm_like(2, V, seed=V), CONFIGS["small"], **CASES[case])


@pytest.mark.parametrize("cfg", ["tiny", "small"])
@pytest.mark.parametrize("params", [
    dict(top_k=3), dict(top_k=10), dict(top_p=0.3), dict(top_p=0.9), dict(min_p=0.5),
    dict(top_k=5, top_p=0.5), dict(top_k=5, top_p=0.5, order="joint"),
], ids=lambda p: "-".join(f"{k}{v}" for k, v in p.items()))
def test_ties_at_every_boundary(cfg, params):
    # integer logits: long runs of equal values straddle the top-k and top-p boundaries,
    # and a refine ends in single-key bins holding many tokens
    g = torch.Generator().manual_seed(5)
    logits = torch.randint(-4, 3, (3, 120), generator=g).float()
    logits[2] = 1.0                                          # a row of one value
    assert_matches_reference(logits, CONFIGS[cfg], **params)


def test_top_k_tie_group_larger_than_scratch():
    # 40 tokens tie at the k-th value and the scratch holds 8: the refine narrows to one
    # key, where the whole tie group is kept without gathering it
    logits = torch.cat([torch.full((1, 5), 3.0), torch.full((1, 40), 1.0),
                        torch.full((1, 30), -2.0)], dim=1)
    p = assert_matches_reference(logits, CONFIGS["tiny"], top_k=10)
    assert int(p[0]) > 2
    probs = fs.filtered_probs(logits, top_k=10)
    assert int((probs > 0).sum()) == 45


def test_a_scalar_top_p_is_the_float64_the_caller_wrote():
    # head mass 0.89999999 lies between float32(0.9) = 0.8999999762 and 0.9: top_p=0.9
    # keeps the tail token only if the kernel compares against 0.9 itself
    q = 0.89999999
    logits = torch.tensor([[0.0, math.log((1 - q) / q)]])
    for top_p in (0.9, torch.tensor([0.9], dtype=torch.float64)):
        assert fs.filtered_probs(logits, top_p=top_p).gt(0).tolist() == [[True, True]]
        assert reference.filtered_probs(logits, top_p=top_p).gt(0).tolist() == [[True, True]]
    # the smallest positive double is a valid top_p: the most probable group alone
    logits = torch.tensor([[1.0, 3.0, 3.0, 2.0]])
    assert fs.filtered_probs(logits, top_p=5e-324).gt(0).tolist() == [[False, True, True, False]]


def test_greedy_rows_mixed_with_sampled_rows_and_per_row_parameters():
    B, V = 6, 400
    logits = llm_like(B, V, seed=11)
    params = dict(temperature=torch.tensor([0.0, 0.7, 1.0, 0.0, 2.0, 0.5]),
                  top_k=torch.tensor([0, 5, 50, 3, -1, 400]),
                  top_p=torch.tensor([1.0, 0.9, 0.5, 0.2, 0.99, 1.0]),
                  min_p=torch.tensor([0.0, 0.0, 0.1, 0.0, 0.01, 0.3]))
    for cfg in ("tiny", "default"):
        assert_matches_reference(logits, CONFIGS[cfg], **params)
    tokens = fs.sample(logits, seed=0, **params)
    assert tokens[0] == logits[0].argmax() and tokens[3] == logits[3].argmax()


def test_tokens_do_not_depend_on_block_sizes_or_batch():
    logits = llm_like(4, 300, seed=2)
    seeds = torch.tensor([5, 6, 7, 8])
    got = [run(logits, cfg, False, seed=seeds, **CASES["all"])[1] for cfg in CONFIGS.values()]
    assert all(torch.equal(got[0], g) for g in got[1:])
    alone = run(logits[2:3], CONFIGS["small"], False, seed=seeds[2:3], **CASES["all"])[1]
    assert alone[0] == got[0][2]
    verdict = testing.check_reproducible(logits, backend="triton", **CASES["top_k_top_p"])
    assert verdict, verdict.detail


def test_programs_reuse_their_scratch_row_after_row():
    # 7 rows of every path on 1 and 3 programs: each program's scratch and bin masses
    # serve several rows in turn (refines and gathers included), and no row may see the
    # last row's leftovers
    logits = torch.cat([llm_like(4, 300, seed=9), torch.full((1, 300), 1.0),
                        torch.randint(-2, 2, (2, 300), generator=torch.Generator()
                                      .manual_seed(3)).float()])
    params = dict(temperature=torch.tensor([0.7, 0.0, 1.3, 1.0, 1.0, 0.5, 2.0]),
                  top_k=torch.tensor([50, 5, 0, 300, 3, 100, 1]),
                  top_p=torch.tensor([0.9, 1.0, 0.5, 0.95, 0.3, 0.99, 0.8]), min_p=0.01)
    for programs in (1, 3):
        cfg = dict(CONFIGS["small"], programs=programs)
        a, tokens, _, _, passes = run(logits, cfg, False, **params)
        assert torch.equal(tokens, reference.draw(a)[0]), programs
    assert int(passes.max()) > 2                        # a refine ran on a shared scratch
    probs = run(logits, cfg, True, **params)[3]
    torch.testing.assert_close(probs, reference.probs(a), rtol=1e-5, atol=1e-7)


def test_seed_and_offset_select_independent_draws():
    logits = torch.zeros(1, 1000).expand(64, 1000)            # uniform rows
    base = fs.sample(logits, seed=3, offset=0)
    assert len(set(base.tolist())) == 1                       # shared seed, same rows
    per_row = fs.sample(logits, seed=torch.arange(64), offset=0)
    assert len(set(per_row.tolist())) > 50
    later = fs.sample(logits, seed=torch.arange(64), offset=torch.full((64,), 1))
    assert int((later != per_row).sum()) > 50
    assert torch.equal(later, fs.sample(logits, seed=torch.arange(64), offset=1))


def test_strided_rows_and_a_copied_last_dimension():
    hidden = llm_like(3 * 5, 256, seed=9).reshape(3, 5, 256)
    rows = hidden[:, -1, :]                                   # row stride 5 * 256
    assert rows.stride() == (5 * 256, 1)
    want = fs.sample(rows.contiguous(), seed=1, top_p=0.9)
    assert torch.equal(fs.sample(rows, seed=1, top_p=0.9), want)
    transposed = rows.t().contiguous().t()                    # last-dim stride 3: copied
    assert torch.equal(fs.sample(transposed, seed=1, top_p=0.9), want)


def test_one_dimensional_logits_answer_in_the_same_rank():
    x = llm_like(1, 100)[0]
    tok, lp = fs.sample(x, seed=1, top_k=5, return_logprobs=True)
    assert tok.dim() == 0 and lp.dim() == 0
    assert fs.filtered_probs(x, top_k=5).shape == (100,)


def test_empty_batch():
    x = torch.empty(0, 10)
    assert fs.sample(x).shape == (0,)
    assert fs.filtered_probs(x, top_p=0.5).shape == (0, 10)


def test_logprobs_are_log_filtered_probabilities_of_the_drawn_token():
    logits = llm_like(5, 300, seed=4)
    params = dict(temperature=torch.tensor([0.0, 0.5, 1.0, 1.5, 1.0]), top_k=40, top_p=0.9)
    tokens, logprobs = fs.sample(logits, seed=torch.arange(5), return_logprobs=True,
                                 **params)
    probs = fs.filtered_probs(logits, **params).double()
    want = torch.log(probs.gather(1, tokens[:, None])[:, 0])
    torch.testing.assert_close(logprobs.double(), want, rtol=1e-5, atol=1e-5)
    assert logprobs[0] == 0.0


@pytest.mark.parametrize("special", ["nan", "pos_inf", "all_neg_inf", "huge", "subnormal",
                                     "mixed"])
def test_odd_rows_without_validation_stay_defined(special):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(4, 100, generator=g)
    if special == "nan":
        x[:, ::3] = float("nan")
        x[1] = float("nan")
    elif special == "pos_inf":
        x[:, [5, 90]] = float("inf")
        x[2, :] = float("inf")
    elif special == "all_neg_inf":
        x[:] = float("-inf")
        x[3, 7] = 0.0
    elif special == "huge":
        x = x.sign() * 1e30
        x[1, 4] = 3.4e38
    elif special == "subnormal":
        x = x * 1e-40
    else:
        x[0, :] = float("nan")
        x[1, :60] = float("-inf")
        x[2, 3] = float("inf")
        x[3, 1::2] = float("-inf")
    # (greedy and T = 1e-30 rows, and the tiny sizes, with special values are covered by
    # tests/test_fuzz.py)
    for params in (dict(), dict(top_k=3, top_p=0.9), dict(top_p=0.5, min_p=0.1, order="joint")):
        for cfg in ("small", "default"):
            a, tokens, _, _, _ = run(x, CONFIGS[cfg], False, **params)
            assert bool(((tokens >= 0) & (tokens < x.shape[1])).all())
            assert torch.equal(tokens, reference.draw(a)[0])
            _, _, _, probs, _ = run(x, CONFIGS[cfg], True, **params)
            assert torch.isfinite(probs).all()
            torch.testing.assert_close(probs, reference.probs(a), rtol=1e-5, atol=1e-7)


def test_inputs_are_never_written():
    logits = llm_like(3, 200, seed=6).to(torch.bfloat16)
    params = dict(temperature=torch.tensor([0.5, 0.0, 1.0]), top_k=torch.tensor([5, 0, 9]),
                  top_p=torch.tensor([0.9, 1.0, 0.5]), min_p=torch.tensor([0.0, 0.1, 0.0]))
    seeds, offsets = torch.tensor([1, 2, 3]), torch.tensor([4, 5, 6])
    before = [t.clone() for t in (logits, *params.values(), seeds, offsets)]
    fs.sample(logits, seed=seeds, offset=offsets, **params)
    fs.filtered_probs(logits, **params)
    after = (logits, *params.values(), seeds, offsets)
    assert all(torch.equal(b, a) for b, a in zip(before, after))


def test_pass_counts_of_each_path():
    # the full-row reads each path makes on LLM-like logits, as docs/design.md states;
    # the scratch holds 1/16 of the row (the default 4096 entries: 1/31 of V = 128256)
    logits = llm_like(4, 4096, seed=8)
    cfg = dict(block=512, bin_bits=10, cap=256)

    def passes(probs_mode=False, **params):
        return sorted(set(run(logits, cfg, probs_mode, **params)[4].tolist()))
    assert passes() == [1]
    assert passes(temperature=0.0) == [1]
    assert passes(min_p=0.05) == [2]
    assert passes(temperature=0.7, top_k=50, top_p=0.9) == [2]
    assert passes(top_k=50) == [2]
    # top-p alone on a flat tail: pass 1's count bounds cannot place the threshold (a
    # head bin's upper bound alone exceeds p), so a pass sums the exact masses of pass 1's
    # bins first; a fourth read for the rows whose threshold bin holds more tokens than
    # the scratch (docs/design.md, "Top-p alone")
    assert passes(top_p=0.95) == [3, 4]
    # filtered_probs adds one write pass
    assert passes(True, top_k=50) == [3]
    # a scratch too small for the bracket costs refine passes, not exactness
    assert max(assert_matches_reference(logits, dict(cap=8), top_p=0.95).tolist()) >= 3


# 16 groups of four lanes; bins 2^29 keys wide, so the histogram way refines
LANE_CFG = dict(block=64, bin_bits=3, cap=16)


@pytest.mark.parametrize("chunks", [0, 3, 64], ids=["per_row", "S3", "S64"])
def test_top_k_from_group_maxima_reads_twice_where_the_histogram_refines(chunks):
    # sampler._lane_row: a top-k of at most lane_k takes as candidates the keys at or
    # above the k-th largest of pass 1's group maxima, a handful on LLM-like rows: two
    # reads, where the same rows the histogram way (lane_k=0) refine its coarse bins.  A
    # top-k of every group (16) gathers too many for the scratch and goes the histogram
    # way after its collect, two reads wasted.  A split row combines its chunks' groups
    # into the same candidates: the same reads; the reference's tokens and kept sets.
    logits = llm_like(4, 600, seed=11)
    params = dict(temperature=0.8, top_k=torch.tensor([1, 5, 8, 16]), top_p=0.9)
    lane = assert_matches_reference(logits, dict(LANE_CFG, lane_k=16, chunks=chunks),
                                    **params).tolist()
    histogram = assert_matches_reference(logits, dict(LANE_CFG, lane_k=0, chunks=chunks),
                                         **params).tolist()
    assert lane[:3] == [2, 2, 2] and min(histogram[:3]) > 2, (lane, histogram)
    assert lane[3] == 2 + histogram[3], (lane, histogram)
    # a row of ties: every key is the k-th largest group max's; the histogram way, exact
    ties = torch.zeros(2, 300)
    ties[1, ::7] = 1.0
    assert_matches_reference(ties, dict(LANE_CFG, lane_k=16, chunks=chunks), top_k=5,
                             top_p=0.8, order="joint")


def test_lane_k_is_at_most_the_groups():
    a = _args.check(torch.zeros(1, 64), 1.0, 5, None, None, "top_k_first", seed=0, offset=0,
                    validate=False)
    with pytest.raises(ValueError, match="lane_k"):
        sampler.kernel_args(a, False, block=64, lane_k=17)


RACE_PATHS = {   # (sizes, params): which race decides the token
    "plain": (CONFIGS["small"], dict(temperature=0.8)),                  # one-read race
    "scratch": (dict(block=64, bin_bits=5, cap=256), dict(top_k=50)),     # kept in scratch
    "dense": (CONFIGS["small"], dict(temperature=3.0, top_p=0.99)),       # kept > scratch
    "dense_wide": (dict(block=1024, bin_bits=6, cap=64), dict(top_p=0.999)),  # 512-wide
}


@pytest.mark.parametrize("noise_test", [1, 2], ids=["loosest_bounds", "spoiled_bounds"])
@pytest.mark.parametrize("path", RACE_PATHS)
def test_race_proofs_hold_at_the_margin_and_fall_back_exactly(path, noise_test):
    # noise_test=1 lowers every cheap bound by 0.99 of the race margin, the worst MUFU
    # error the margin is sized for: the proofs still pick the reference's token, with no
    # fallback.  noise_test=2 raises a third of the bounds by 100: no proof holds, and the
    # exact race (counted as a fallback; more passes) picks the same token.
    sizes, params = RACE_PATHS[path]
    V = 3000 if path == "dense_wide" else 300
    logits = llm_like(3, V, seed=13)
    a = _args.check(logits, params.get("temperature", 1.0), params.get("top_k"),
                    params.get("top_p"), None, "top_k_first", seed=torch.arange(3) + 40,
                    validate=False)
    tokens, logprobs, _, passes, fallbacks = sampler.launch(
        a, False, stats=True, noise_test=noise_test, **sizes)
    if path != "plain":                       # the rows keep more tokens than the scratch
        kept = (reference.probs(a) > 0).sum(1)
        assert bool((kept > sizes["cap"]).all()) == path.startswith("dense"), kept
    ref_tokens, ref_logprobs = reference.draw(a)
    assert torch.equal(tokens, ref_tokens)
    torch.testing.assert_close(logprobs, ref_logprobs, rtol=1e-5, atol=1e-5)
    assert fallbacks.tolist() == [noise_test - 1] * 3
    clean = sampler.launch(a, False, stats=True, **sizes)
    assert torch.equal(clean[0], tokens) and clean[4].tolist() == [0] * 3
    assert torch.equal(passes > clean[3], fallbacks > 0)      # the exact race reads again


@pytest.mark.parametrize("case", ["top_k_top_p", "min_p"])
def test_draws_follow_the_reference_distribution(case):
    # 400 draws of one row (one batched call, a seed per row): each is the reference's
    # token for that seed (whose distribution tests/test_reference.py G-tests with 50k
    # draws), and the counts pass a G-test of their own at fixed seeds.  Few draws: the
    # interpreter runs one program per draw (0.1 to 0.4 s each).
    row = llm_like(1, 40, seed=12)[0] / 2
    seeds = 100 + torch.arange(400)
    batch = row.expand(400, 40)
    tokens = fs.sample(batch, seed=seeds, backend="triton", validate=False, **CASES[case])
    assert torch.equal(tokens, fs.reference.sample(batch, seed=seeds, **CASES[case]))
    probs = fs.reference.filtered_probs(row, **CASES[case])
    assert testing.g_test(torch.bincount(tokens, minlength=40), probs)[0] > 1e-3


@pytest.mark.parametrize("chunks", [0, 3], ids=["per-row", "split3"])
def test_infinite_temperature_is_uniform_over_finite_logits_1e30_apart(chunks):
    """T = inf weighs every finite logit alike however far apart within the contract's
    +-1e30, and a -inf logit not at all: the exponent's scale log2(e)/T is floored at
    2^-126 (a floor of 1e-30 gave the finite four 0.11 / 0.22 / 0.22 / 0.44; found by the fuzz
    campaign, docs/reliability.md).  Filtered probabilities, and the log-prob of the
    drawn token, in one program per row and split rows."""
    logits = torch.tensor([[-1e30, 0.0, float("-inf"), 1.0, 1e30]]).expand(8, 5)
    want = torch.tensor([0.25, 0.25, 0.0, 0.25, 0.25]).expand(8, 5)
    probs = fs.filtered_probs(logits, temperature=float("inf"), backend="triton")
    torch.testing.assert_close(probs, want, rtol=1e-6, atol=0)
    a = _args.check(logits, float("inf"), None, None, None, "top_k_first",
                    seed=torch.arange(8), offset=0, validate=False)
    tokens, logprobs = sampler.sample(a, return_logprobs=True, chunks=chunks)
    assert torch.equal(tokens, fs.reference.sample(logits, temperature=float("inf"),
                                                   seed=torch.arange(8), validate=False))
    assert set(tokens.tolist()) <= {0, 1, 3, 4}
    torch.testing.assert_close(logprobs, torch.full((8,), math.log(0.25)), rtol=1e-6, atol=0)


@pytest.mark.parametrize("chunks", [0, 3], ids=["per_row", "split"])
@pytest.mark.parametrize("return_logprobs", [False, True], ids=["tokens", "logprobs"])
def test_infinite_temperature_row_holding_inf_draws_its_inf_tokens(chunks, return_logprobs):
    """A row holding +inf draws among its +inf tokens at any temperature, T = inf too
    (validate=False).  At T = inf the race's bound of a +inf logit is inf * 0 = NaN, which
    a plain max skips: without log-probs the race proved a winner among the finite
    tokens (found building the shard summaries); the lane max now keeps the NaN, and the
    row takes the exact way."""
    x = torch.randn(8, 300, generator=torch.Generator().manual_seed(0))
    x[:, 40] = float("inf")
    x[:, 250] = float("inf")
    x[1, 7] = float("-inf")
    a = _args.check(x, float("inf"), None, None, None, "top_k_first",
                    seed=torch.arange(8), offset=0, validate=False)
    tokens, _ = sampler.sample(a, return_logprobs=return_logprobs, chunks=chunks)
    want = fs.reference.sample(x, temperature=float("inf"), seed=torch.arange(8),
                               validate=False)
    assert torch.equal(tokens, want)
    assert set(tokens.tolist()) == {40, 250}


def test_a_subnormal_temperature_acts_as_the_smallest_normal_one():
    """Below 2^-126, 1/T overflows float32 (or its product with log2(e) does), and (x -
    max) * inf is NaN at the max: the kernel drew a token below the max, the reference
    the lowest max.  A subnormal T now acts as 2^-126 in both (the row's maxima race, as
    at any tiny T): the same tokens and filtered_probs as at 2^-126, every filter.  And
    a filtered row's race under a tiny T and logits of 1e30 is the reference's."""
    rows = torch.tensor([[100.0, 99.0, 100.0, 98.0], [0.5, -1.0, 0.25, 0.0],
                         [-30.0, -29.5, -31.0, -29.5], [1e30, -1e30, 5.0, 1e30]])
    drawn = set()
    for params in (dict(), dict(top_k=2, top_p=0.5), dict(min_p=0.5)):
        floor = fs.filtered_probs(rows, temperature=2.0 ** -126, **params)
        for t in (1e-45, 1e-40, 2.0 ** -127):
            assert torch.equal(fs.filtered_probs(rows, temperature=t, **params), floor)
            assert torch.equal(reference.filtered_probs(rows, temperature=t, **params), floor)
            for seed in range(4):
                want = reference.sample(rows, temperature=2.0 ** -126, seed=seed, **params)
                assert torch.equal(fs.sample(rows, temperature=t, seed=seed, **params), want)
                assert torch.equal(reference.sample(rows, temperature=t, seed=seed, **params),
                                   want)
                drawn.add(tuple(want.tolist()))
    assert {d[1] for d in drawn} == {0} and {d[0] for d in drawn} == {0, 2}   # maxima, raced
    # a normal tiny T under logits of 1e30: |max / T| overflows the cheap keys' float32
    # bias (every bound -inf), which _settle took for a proof and kept the first lanes'
    for t in (1e-10, 1e-30):
        for seed in range(4):
            for params in (dict(top_k=2), dict(min_p=0.5)):
                assert torch.equal(fs.sample(rows, temperature=t, seed=seed, **params),
                                   reference.sample(rows, temperature=t, seed=seed,
                                                    **params)), (t, seed, params)
    # a split row whose second chunk's bias overflows (5 / 2^-126) and whose first's does
    # not (0.1 / 2^-126): the overflowed chunk's bounds, all -inf, read as "no finite
    # logit" and the first chunk's winner won (the sharded race's empty chunk, too)
    row = torch.cat([0.1 + torch.arange(16) * 1e-3, 5.0 - torch.arange(16) * 1e-3])[None]
    for seed in range(3):
        a = _args.check(row, 1e-40, None, None, None, "top_k_first", seed=seed,
                        validate=False)
        tokens = sampler.launch(a, False, chunks=2, block=16)[0]
        want = reference.sample(row, temperature=1e-40, seed=seed)
        assert want.tolist() == [16] and torch.equal(tokens, want), (seed, tokens)
