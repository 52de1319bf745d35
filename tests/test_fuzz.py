"""Property-based fuzzing of the kernel against the reference (bounded for CI).

Random B, V (1, primes, powers of two and one more), dtypes, row layouts (contiguous,
rows of a wider buffer, one row broadcast with stride 0, a transposed view whose last
dimension is copied), tile / histogram / scratch sizes, rows split into chunks or not, parameters at and around every
edge (scalars and per-row tensors), and logits with ties, NaN, +-inf, +-1e30,
subnormals and rows of almost only -inf.  Invariants (:func:`check_call`): the token is in [0, V) and in the
reference's kept set; it is the reference's token (same Philox stream, same race);
filtered_probs matches the reference; ``validate=True`` raises exactly when the contract
says the call is invalid.  ``derandomize=True`` makes the CI campaign the same on every
run; ``python -m tests.fuzz --minutes N`` runs a long random one (docs/reliability.md).
"""
import math

import pytest
import torch
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

import fused_sampler as fs
from fused_sampler import _args, reference, testing
from fused_sampler.kernels import sampler

VOCABS = [1, 2, 3, 7, 16, 17, 31, 64, 65, 127, 129]
SPECIAL = [float("nan"), float("inf"), float("-inf"), 1e30, -1e30, 1e-40, -1e-40, 0.0, -0.0]
CONFIGS = [dict(block=16, bin_bits=3, cap=8), dict(block=32, bin_bits=4, cap=16), dict()]
WIDE_CONFIGS = [dict(block=256, bin_bits=5, cap=64), dict()]   # V > 256: fewer tiles
LAYOUTS = ["contiguous", "wide_rows", "broadcast", "transposed"]


@st.composite
def calls(draw, vocabs=VOCABS, max_batch=3):
    B = draw(st.integers(1, max_batch))
    V = draw(st.sampled_from(vocabs))
    dtype = draw(st.sampled_from([torch.float32, torch.float16, torch.bfloat16]))
    seed = draw(st.integers(0, 2 ** 31))
    g = torch.Generator().manual_seed(seed)
    style = draw(st.sampled_from(["normal", "ties", "special", "wide", "neg_inf_heavy"]))
    x = torch.randn(B, V, generator=g) * 3
    if style == "neg_inf_heavy":          # 0-3 finite logits per row, the rest -inf
        finite = torch.rand(B, V, generator=g).argsort(dim=1) < torch.randint(
            0, 4, (B, 1), generator=g)
        x = torch.where(finite, x, float("-inf"))
    elif style == "ties":
        x = torch.randint(-2, 2, (B, V), generator=g).float()
    elif style == "wide":
        x = x * 1e4
    elif style == "special":
        n = draw(st.integers(1, max(1, V)))
        pos = torch.randint(0, B * V, (n,), generator=g)
        vals = torch.tensor([draw(st.sampled_from(SPECIAL)) for _ in range(n)])
        x.view(-1)[pos] = vals
    x = _layout(x.to(dtype), draw(st.sampled_from(LAYOUTS)))

    def per_row(values, invalid=[]):  # noqa: B006 (never mutated)
        # scalars are always checked; only tensors carry out-of-range values past
        # validate=False, and the kernel must still answer them as the reference does
        if draw(st.booleans()):
            return draw(st.sampled_from(values))
        return torch.tensor([draw(st.sampled_from(values + invalid)) for _ in range(B)])

    nan = float("nan")
    temperature = per_row([0.0, 1e-40, 1e-30, 1e-3, 0.5, 1.0, 2.0, 1e4, float("inf")], [-1.0, nan])
    top_k = draw(st.one_of(st.none(),
                           st.just(per_row([-1, 0, 1, 2, 5, V - 1, V, V + 5, 2 ** 40]))))
    top_p = draw(st.one_of(st.none(), st.just(per_row([5e-324, 1e-9, 0.1, 0.5, 0.9, 0.999, 1.0],
                                                      [0.0, -1.0, 1.5, nan]))))
    min_p = draw(st.one_of(st.none(), st.just(per_row([0.0, 1e-6, 0.05, 0.5, 1.0],
                                                      [-0.5, 1.5, nan]))))
    order = draw(st.sampled_from(["top_k_first", "joint"]))
    cfg = draw(st.sampled_from(CONFIGS if V <= 256 else WIDE_CONFIGS))
    chunks = draw(st.sampled_from([None, None, 1, 2, 3, 7]))    # rows split over programs
    if chunks is not None:
        cfg = dict(cfg, chunks=chunks)
    return x, dict(temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p,
                   order=order), cfg


def _layout(x, layout):
    """The same values in another memory layout (the kernel reads rows by stride)."""
    B, V = x.shape
    if layout == "wide_rows":             # rows of a wider buffer: row stride > V
        wide = torch.full((B, V + 7), float("nan"), dtype=x.dtype)
        wide[:, 3:3 + V] = x
        return wide[:, 3:3 + V]
    if layout == "broadcast":             # one row seen B times: row stride 0
        return x[:1].expand(B, V)
    if layout == "transposed":            # last-dimension stride B: copied once
        return x.t().contiguous().t()
    return x


def _invalid(x, params):
    """Whether the contract calls this call invalid (validate=True must raise), stated
    independently of fused_sampler._args: out-of-range parameter values, NaN or +inf
    logits, a row with no finite logit."""
    def bad(name, test):
        v = params[name]
        return v is not None and bool(test(torch.as_tensor(v, dtype=torch.float64)).any())

    xf = x.float()
    return (bad("temperature", lambda t: t.isnan() | (t < 0))
            or bad("top_p", lambda p: p.isnan() | (p <= 0) | (p > 1))
            or bad("min_p", lambda m: m.isnan() | (m < 0) | (m > 1))
            or bool(xf.isnan().any()) or bool((xf == math.inf).any())
            or bool((xf == -math.inf).all(dim=1).any()))


def check_call(call):
    """Every invariant for one drawn call (shared by CI and the long campaign)."""
    x, params, cfg = call
    B, V = x.shape
    seeds = torch.arange(B, device=x.device) * 3 + 1
    a = _args.check(x, params["temperature"], params["top_k"], params["top_p"],
                    params["min_p"], params["order"], seed=seeds, offset=5, validate=False)
    tokens, logprobs, _, passes, _ = sampler.launch(a, False, stats=True, **cfg)
    assert bool(((tokens >= 0) & (tokens < V)).all())
    assert int(passes.max()) < sampler.max_passes(cfg.get("bin_bits", 4))
    assert torch.isfinite(logprobs).all() or bool((x.float() == float("inf")).any())
    ref_probs = reference.probs(a)
    assert bool((ref_probs.gather(1, tokens[:, None]) > 0).all()), "token outside kept set"
    assert torch.equal(tokens, reference.draw(a)[0])
    probs = sampler.launch(a, True, **cfg)[2]
    invalid = _invalid(x, params)
    if not invalid:
        verdict = testing.compare_filtered_probs(x, probs=probs, **params)
        assert verdict, verdict.detail
    else:
        torch.testing.assert_close(probs, ref_probs, rtol=1e-5, atol=1e-7)
    # validation lives in _args, shared by every backend: the reference backend checks it
    # without another interpreted launch
    try:
        fs.sample(x, seed=0, validate=True, backend="reference", **params)
        raised = False
    except ValueError:
        raised = True
    assert raised == invalid, f"validate=True raised={raised}, contract says {invalid}"


# no shrinking: in the interpreter it takes minutes; the failing example prints as drawn
@pytest.mark.interpreter
@settings(max_examples=40, deadline=None, derandomize=True,
          phases=[Phase.explicit, Phase.reuse, Phase.generate],
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(calls())
def test_kernel_agrees_with_reference_on_anything(call):
    check_call(call)


@pytest.mark.parametrize("bad", ["temperature", "top_p", "min_p"])
def test_validate_raises_exactly_where_the_contract_says(bad):
    x = torch.randn(3, 10)
    good = dict(temperature=torch.tensor([1.0, 0.0, 2.0]), top_p=torch.tensor([0.5, 1.0, 0.9]),
                min_p=torch.tensor([0.0, 1.0, 0.2]))
    reference.sample(x, seed=0, **good)                       # edges are valid
    broken = dict(good)
    broken[bad] = broken[bad].clone()
    broken[bad][2] = {"temperature": -1.0, "top_p": 0.0, "min_p": 1.5}[bad]
    with pytest.raises(ValueError, match=rf"{bad}: rows \[2\]"):
        reference.sample(x, seed=0, **broken)
    reference.sample(x, seed=0, validate=False, **broken)     # no check, no crash
