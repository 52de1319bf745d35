"""The reference is the specification: pin it to hand-worked cases of the contract."""
import math

import pytest
import torch

import fused_sampler as fs
from fused_sampler import reference

NEG = float("-inf")


def probs(x, **kw):
    return fs.reference.filtered_probs(torch.tensor(x, dtype=torch.float32), **kw)


def support(x, **kw):
    return (probs(x, **kw) > 0).nonzero().flatten().tolist()


def test_philox_matches_random123_known_answers():
    z = torch.zeros(1, dtype=torch.int64)
    assert [int(v) for v in reference.philox4x32(z, z, z, z, z)] == \
        [0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8]
    f = torch.full((1,), 0xFFFFFFFF, dtype=torch.int64)
    key = torch.full((1,), -1, dtype=torch.int64)                  # both key words all-ones
    assert [int(v) for v in reference.philox4x32(key, f, f, f, f)] == \
        [0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD]
    c = [torch.tensor([v]) for v in (0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344)]
    key = torch.tensor([0xA4093822 | (0x299F31D0 << 32)])
    assert [int(v) for v in reference.philox4x32(key, *c)] == \
        [0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1]


def test_gumbel_noise_is_finite_and_reaches_past_the_24_bit_ceiling():
    seeds = torch.arange(64, dtype=torch.int64)
    g = reference.gumbel_noise(seeds, torch.zeros(64, dtype=torch.int64), 4096)
    assert torch.isfinite(g).all()
    assert g.min() >= -3.7 and g.max() <= 37.5
    # mean and variance of a standard Gumbel: Euler's gamma and pi^2 / 6
    assert abs(g.double().mean().item() - 0.5772156649) < 0.01
    assert abs(g.double().var().item() - math.pi ** 2 / 6) < 0.03


def test_uniform_to_exponential_keeps_both_tails():
    # The exponential E = -log U must keep relative precision where U is near 1 (E tiny:
    # the weight a low-probability token needs to win) and near 0 (E large).
    n = torch.tensor([0, 1, 2 ** 20, 2 ** 52 - 1, 2 ** 52, 2 ** 53 - 2, 2 ** 53 - 1])
    half = n < 2 ** 52
    # U = 1 - (n + 1/2) / 2^53, with whichever of U and 1 - U is small exact in float64
    exact = torch.where(half, -torch.log1p(-(n.double() + 0.5) / 2 ** 53),
                        -torch.log(((2 ** 53 - n).double() - 0.5) / 2 ** 53))
    v = ((n.double() + 0.5) * 2.0 ** -53).float()
    w = ((2 ** 53 - n).double() - 0.5).mul(2.0 ** -53).float()
    e = torch.where(half, -reference._log1p_neg(torch.where(half, v, 0.25)),
                    -torch.log(torch.where(half, 0.5, w)))
    rel = ((e.double() - exact) / exact).abs()
    assert rel.max() < 3e-7, rel
    assert e[0] < 1e-15 and e[-1] > 36                        # no floor, no infinity


def test_greedy_is_first_argmax_and_ignores_nan():
    x = torch.tensor([[1.0, 3.0, 3.0, float("nan")]])
    assert fs.reference.sample(x, temperature=0.0, validate=False).tolist() == [1]
    assert probs([1.0, 3.0, 3.0, 0.0], temperature=0.0).tolist() == [0, 1, 0, 0]


def test_top_k_keeps_every_tie_with_the_kth_value():
    assert support([5.0, 4.0, 4.0, 4.0, 1.0], top_k=2) == [0, 1, 2, 3]
    assert support([5.0, 4.0, 3.0, 3.0], top_k=3) == [0, 1, 2, 3]
    assert support([5.0, 4.0, 3.0, 2.0], top_k=0) == [0, 1, 2, 3]      # off
    assert support([5.0, 4.0, 3.0, 2.0], top_k=4) == [0, 1, 2, 3]      # off (k >= V)


def test_top_p_smallest_set_reaching_p_with_boundary_ties():
    x = torch.log(torch.tensor([0.5, 0.3, 0.1, 0.1])).tolist()
    assert support(x, top_p=0.5) == [0]            # mass above token 1 is 0.5, not < 0.5
    assert support(x, top_p=0.6) == [0, 1]
    assert support(x, top_p=0.85) == [0, 1, 2, 3]  # 2 and 3 tie at the boundary
    assert support(x, top_p=1e-9) == [0]           # the most probable token stays


def test_top_p_orders_differ_as_the_contract_says():
    x = torch.log(torch.tensor([0.4, 0.3, 0.2, 0.1])).tolist()
    # top_k_first: Q over {0, 1} is (4/7, 3/7): 0.55 needs both.  joint: 0.4 < 0.55, so 0
    # and 1 by P as well; p = 0.45 separates them: Q keeps 0 only (4/7 >= .45) ...
    assert support(x, top_k=2, top_p=0.45, order="top_k_first") == [0]
    # ... while joint P mass above token 1 is 0.4 < 0.45: keeps 0 and 1.
    assert support(x, top_k=2, top_p=0.45, order="joint") == [0, 1]


def test_min_p_relative_to_the_max():
    x = torch.log(torch.tensor([0.5, 0.25, 0.2, 0.05])).tolist()
    assert support(x, min_p=0.45) == [0, 1]
    assert support(x, min_p=1.0) == [0]


def test_temperature_scales_and_renormalises():
    x = [1.0, 0.0, -1.0]
    p = probs(x, temperature=0.5)
    want = torch.softmax(torch.tensor(x) / 0.5, 0)
    assert torch.allclose(p, want, rtol=1e-6)


@pytest.mark.parametrize("row, support_", [
    ([NEG, float("inf"), 2.0, float("inf")], [1, 3]),       # +inf tokens share the mass
    ([NEG, NEG, NEG], [0, 1, 2]),                           # no finite logit: uniform
    ([float("nan"), 1.0, NEG], [1]),
])
def test_special_values_have_a_defined_distribution(row, support_):
    x = torch.tensor([row])
    a = fs._args.check(x, 1.0, None, None, None, "top_k_first", seed=0, validate=False)
    p = reference.probs(a)[0]
    assert (p > 0).nonzero().flatten().tolist() == support_
    assert torch.allclose(p[p > 0], torch.full((len(support_),), 1 / len(support_)))


@pytest.mark.parametrize("params", [
    dict(), dict(temperature=0.3), dict(top_k=7), dict(top_p=0.8), dict(min_p=0.1),
    dict(temperature=0.7, top_k=20, top_p=0.9), dict(top_k=10, top_p=0.6, order="joint"),
], ids=lambda p: "-".join(f"{k}{v}" for k, v in p.items()) or "plain")
def test_reference_draws_follow_the_filtered_distribution(params):
    # 50k draws of one row, one seed per draw, against filtered_probs: a G-test at fixed
    # seeds (the same verdict on every run); rare tokens are pooled to keep it valid
    from fused_sampler import testing
    g = torch.Generator().manual_seed(1)
    row = torch.randn(30, generator=g) * 2.5
    counts = testing.draw_counts(row, draws=50_000, seed=7, backend="reference", **params)
    probs = fs.reference.filtered_probs(row, **params)
    p_value, dof = testing.g_test(counts, probs)
    assert p_value > 1e-3 and dof >= 1


def test_g_test_rejects_a_wrong_distribution():
    # the statistic has teeth: draws from a slightly different temperature fail
    from fused_sampler import testing
    row = torch.randn(30, generator=torch.Generator().manual_seed(1)) * 2.5
    counts = testing.draw_counts(row, draws=50_000, seed=7, backend="reference",
                                 temperature=1.05)
    assert testing.g_test(counts, fs.reference.filtered_probs(row))[0] < 1e-6
