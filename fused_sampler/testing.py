"""The checks that hold a sampler backend to the reference, as a library.

The project's tests call these, and so can an engine that integrates the sampler:
``python -m fused_sampler check`` runs them on the current device over a spread of shapes,
dtypes and parameters and prints a verdict table.

- :func:`compare_filtered_probs`: kept sets equal to the reference's exactly (outside the
  contract's 1e-6 top-p near-tie band), probabilities within a tight tolerance.
- :func:`draw_p_value`: a G-test of many draws of one row against the reference
  distribution (scipy; fixed seeds, so a result never changes from run to run).
- :func:`check_reproducible`: same (seed, offset) gives the same tokens; the batch around
  a row, and its position in it, do not change its token.
- :func:`allocations`: every tensor a call allocates, with its size (the fused path must
  allocate nothing of size B x V), on any device.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from . import _args, reference
from ._api import filtered_probs, resolve_backend, sample

TOP_P_BAND = 1e-6


@dataclass
class Verdict:
    """Outcome of one check: ``ok`` and a one-line ``detail`` saying what was seen."""
    ok: bool
    detail: str

    def __bool__(self) -> bool:
        return self.ok


def top_p_near_ties(logits, *, temperature=1.0, top_k=None, top_p=None, order="top_k_first"):
    """Boolean [B, V]: tokens whose top-p decision the contract lets fall either way.

    A token is in the band when the Q-mass strictly above it lies within 1e-6 (relative)
    of ``top_p`` times the normaliser, as the reference computes it in float64.
    """
    a = _args.check(logits, temperature, top_k, top_p, None, order, seed=0)
    B, V = a.logits.shape
    if a.top_p is None:
        return torch.zeros(B, V, dtype=torch.bool, device=a.logits.device)
    keep_k, d, greedy, x, *_ = reference.keep_mask(a.logits, a.temperature, a.top_k, None,
                                                   None, a.order)
    e = torch.exp(d).double()
    q = torch.where(keep_k if order == "top_k_first" else torch.ones_like(keep_k), e, 0.0)
    above = reference.strictly_above(x, q)
    p = _args.rows(a.top_p, B, torch.float64, a.logits.device)[:, None]
    target = p * q.sum(dim=1, keepdim=True)
    band = (above - target).abs() <= TOP_P_BAND * target
    return band & (p < 1) & ~greedy[:, None]


def compare_filtered_probs(logits, *, temperature=1.0, top_k=None, top_p=None, min_p=None,
                           order="top_k_first", backend="auto", rtol=1e-5, atol=1e-7,
                           probs=None) -> Verdict:
    """``filtered_probs`` of ``backend`` against the reference on the same call.

    Kept sets (nonzero entries) must match exactly except for tokens in the top-p
    near-tie band; inside the kept set probabilities must agree within ``rtol``/``atol``
    (float32 exp against float64).  ``probs`` skips the backend call (already computed).
    """
    kw = dict(temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p, order=order)
    got = filtered_probs(logits, backend=backend, **kw) if probs is None else probs
    want = reference.filtered_probs(logits, **kw)
    got2, want2 = torch.atleast_2d(got), torch.atleast_2d(want)
    band = top_p_near_ties(torch.atleast_2d(logits), temperature=temperature, top_k=top_k,
                           top_p=top_p, order=order)
    differ = ((got2 > 0) != (want2 > 0)) & ~band
    if bool(differ.any()):
        rows = differ.any(dim=1).nonzero().flatten().tolist()
        return Verdict(False, f"kept sets differ in rows {rows[:8]} "
                              f"({int(differ.sum())} tokens)")
    both = (got2 > 0) & (want2 > 0) & ~band.any(dim=1, keepdim=True)
    err = torch.where(both, (got2.double() - want2.double()).abs()
                      - rtol * want2.double().abs(), -1.0)
    worst = float(err.max()) if err.numel() else -1.0
    if worst > atol:
        return Verdict(False, f"probabilities differ by {worst + rtol:.3g} beyond rtol")
    sums = got2.double().sum(dim=1)
    if bool(((sums - 1).abs() > 1e-5).any()):
        return Verdict(False, f"rows do not sum to 1: {sums.tolist()[:4]}")
    return Verdict(True, f"kept sets equal, max excess error {max(worst, 0.0):.2g}")


def g_test(counts: torch.Tensor, probs: torch.Tensor, min_expected: float = 5.0):
    """G-test of observed ``counts`` against ``probs`` (both [V]); returns (p-value, dof).

    Cells expected to hold fewer than ``min_expected`` draws are pooled into one, so the
    chi-square approximation holds.  A draw outside the support gives p = 0.
    """
    from scipy import stats

    counts = counts.double().cpu()
    probs = probs.double().cpu()
    n = counts.sum()
    if bool((counts[probs == 0] > 0).any()):
        return 0.0, 0
    expected = probs * n
    big = expected >= min_expected
    obs = torch.cat([counts[big], counts[~big].sum().reshape(1)])
    exp = torch.cat([expected[big], expected[~big].sum().reshape(1)])
    keep = exp > 0
    obs, exp = obs[keep], exp[keep]
    if obs.numel() < 2:
        return 1.0, 0
    g = 2.0 * float(torch.where(obs > 0, obs * torch.log(obs / exp), 0.0).sum())
    dof = obs.numel() - 1
    return float(stats.chi2.sf(g, dof)), dof


def draw_counts(logits_row, *, draws=20000, seed=0, backend="auto", **params):
    """Token counts [V] of ``draws`` draws of one row, in one batched call: the row
    repeated ``draws`` times with per-row seeds ``seed + i`` (independent Philox keys)."""
    row = logits_row.reshape(1, -1)
    batch = row.expand(draws, row.shape[1])
    seeds = seed + torch.arange(draws, dtype=torch.int64, device=row.device)
    tokens = sample(batch, seed=seeds, backend=backend, validate=False, **params)
    return torch.bincount(tokens.cpu(), minlength=row.shape[1])


def draw_p_value(logits_row, *, draws=20000, seed=0, backend="auto", **params) -> float:
    """p-value of the G-test of draws of ``backend`` against the reference distribution."""
    counts = draw_counts(logits_row, draws=draws, seed=seed, backend=backend, **params)
    probs = reference.filtered_probs(logits_row.reshape(1, -1), **params)[0]
    return g_test(counts, probs)[0]


def check_reproducible(logits, *, seed=1234, backend="auto", **params) -> Verdict:
    """Tokens depend only on (row, parameters, seed, offset): the same call twice gives
    the same tokens, each row alone gives its batched token, reversing the batch reverses
    the tokens, and a new offset changes some draw."""
    B = logits.shape[0]
    seeds = seed + torch.arange(B, dtype=torch.int64, device=logits.device)
    run = lambda x, s, o=0: sample(x, seed=s, offset=o, backend=backend, **params)  # noqa
    first, again = run(logits, seeds), run(logits, seeds)
    if not torch.equal(first, again):
        return Verdict(False, "same seeds, different tokens")
    alone = torch.stack([run(logits[i:i + 1], seeds[i:i + 1])[0] for i in range(B)])
    if not torch.equal(first, alone):
        return Verdict(False, "a row's token changed with its batch")
    flipped = run(logits.flip(0), seeds.flip(0)).flip(0)
    if not torch.equal(first, flipped):
        return Verdict(False, "a row's token changed with its position")
    return Verdict(True, f"{B} rows reproducible and batch-invariant")


class _Allocations(TorchDispatchMode):
    """Records each new storage an ATen op returns (views of known storages are not new)."""

    def __init__(self, known):
        super().__init__()
        self.seen = {t.untyped_storage().data_ptr() for t in known}
        self.sizes = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() not in self.seen:
                self.seen.add(t.untyped_storage().data_ptr())
                self.sizes.append((str(func), t.untyped_storage().nbytes()))
        return out


def allocations(fn, *inputs):
    """Run ``fn()`` and return its result and the ``(op, bytes)`` of every tensor storage
    it allocated, in order (``inputs``' storages excluded).  Counts what torch allocates,
    on any device; a kernel's own launch allocates nothing."""
    with _Allocations(inputs) as rec:
        out = fn()
    return out, rec.sizes


def check(device=None, backend="auto", quick=False):
    """Run the checks over a spread of shapes, dtypes and parameters; return the rows of
    the verdict table as (name, ok, detail)."""
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    # Triton's interpreter runs one program per row at ~0.1 s: a quick spread there
    quick = quick or (device.type == "cpu" and resolve_backend(backend, device) == "triton")
    gen = torch.Generator().manual_seed(0)
    vocabs = [1, 37, 1000] if quick else [1, 37, 1000, 4099, 32000]
    cases = [("plain", {}), ("greedy", dict(temperature=0.0)),
             ("top_k", dict(top_k=5)), ("top_p", dict(top_p=0.9)),
             ("min_p", dict(min_p=0.05)),
             ("top_k_top_p", dict(temperature=0.7, top_k=50, top_p=0.9)),
             ("joint", dict(top_k=20, top_p=0.8, order="joint"))]
    rows = []
    for V in vocabs:
        for dtype in (torch.float32, torch.bfloat16):
            logits = (torch.randn(4, V, generator=gen) * 3).to(dtype).to(device)
            for name, params in cases:
                v = compare_filtered_probs(logits, backend=backend, **params)
                rows.append((f"filtered_probs {name} V{V} {str(dtype)[6:]}", v.ok, v.detail))
    row = (torch.randn(50, generator=gen) * 2).to(device)
    draws = 600 if quick else 20000
    for name, params in (cases[4:6] if quick else cases[2:]):
        # the backend's draws are the reference's tokens for the same seeds, and their
        # counts pass a G-test against the reference distribution
        seeds = torch.arange(draws, device=device)
        batch = row.expand(draws, 50)
        tokens = sample(batch, seed=seeds, backend=backend, validate=False, **params)
        same = bool(torch.equal(tokens, reference.sample(batch, seed=seeds, **params)))
        pv = g_test(torch.bincount(tokens.cpu(), minlength=50),
                    reference.filtered_probs(row, **params))[0]
        rows.append((f"draws {name} V50 x{draws}", same and pv > 1e-3,
                     f"{'same tokens as the reference' if same else 'TOKENS DIFFER'}, "
                     f"G-test p = {pv:.3g}"))
    v = check_reproducible((torch.randn(6, 300, generator=gen) * 3).to(device),
                           backend=backend, top_p=0.9)
    rows.append(("reproducible, batch-invariant", v.ok, v.detail))
    return rows


def print_table(rows, device, backend) -> bool:
    """Print the verdict table; return True when every check passed."""
    dev = torch.device(device)
    where = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "CPU"
    print(f"fused_sampler check: backend {resolve_backend(backend, dev)} on {where}")
    width = max(len(r[0]) for r in rows)
    for name, ok, detail in rows:
        print(f"  {'PASS' if ok else 'FAIL'}  {name.ljust(width)}  {detail}")
    failed = sum(1 for r in rows if not r[1])
    print(f"{len(rows) - failed} passed, {failed} failed")
    return failed == 0

