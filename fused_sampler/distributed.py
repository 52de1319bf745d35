"""Sampling logits sharded over the vocabulary across a torch.distributed group, never
gathered.

Under tensor parallelism each of W ranks holds ``logits[:, vocab_start:vocab_start + n]``.
:func:`sample` draws, on every rank, exactly the token :func:`fused_sampler.sample` draws
from the whole row, exchanging per row only small, exact summaries, in a number of
collectives fixed by the call's arguments (never by the data).  A call without filters
makes one all-gather (:func:`_race`), and so does one with a scalar ``top_k`` up to
CANDIDATES_MAX, with or without top-p under "top_k_first" and min-p
(:func:`_candidates`); any other filtered call (:func:`_bounds`, then :func:`_race`):

1. all-reduce (max) of each shard's max and NaN / +inf flags: the row max, the contract's
   odd rows (``validate``), min-p's threshold;
2. top-k: the k-th largest key by radix selection over the 32-bit keys of the float32
   logits, RADIX_BITS at a time (LEVELS all-reduces of integer counts, [B, 2^RADIX_BITS]);
3. top-p: the threshold key the same way, over exact fixed-point masses (LEVELS
   all-reduces of int64 masses); the normaliser K is the first level's total. With order
   "joint" the top-k and top-p levels share their all-reduces;
4. the plain call's all-gather, its race over the kept tokens alone: every token at or
   above the row's one kept key (the largest of top-k's, top-p's and min-p's), each
   shard's winner keyed by the global index as the reference's, with the kept mass and
   the lowest index of the row max (greedy rows).

Integer counts and fixed-point masses sum exactly in any order, so the kept set does not
depend on W or on where the shards are cut; the race's winner is the best of the shards'
winners, ties to the lowest index.  Nothing syncs with the host (``validate=False``): a
decode step with NCCL collectives stays graph-capturable.  Bytes and rounds per call:
docs/design.md, "Tensor parallel"; ``scripts/tp_model.py`` models them against gathering
the logits.

Where the backend resolves to Triton, the race is the kernel's (_shard_kernel: the split
kernel's chunk race, a shard being chunks of a row that live on another rank, one read;
with filters, over the kept tokens) and so is a scalar top-k's local step (torch.topk,
then _candidates_kernel), each with its combine in one launch; the other filtered calls
run each radix level in one launch (_radix_level_kernel: the previous level's choice of a
bin, then one read of the shard), their max being torch.nan_to_num and amax.
"""
from __future__ import annotations

import torch
import torch.distributed as dist

from . import _args
from ._api import resolve_backend
from .reference import (clean, greedy_and_inv_t, gumbel_noise, resolve_odd_rows,
                        scaled, strictly_above)

__all__ = ["sample", "filtered_probs", "RADIX_BITS", "LEVELS"]

RADIX_BITS = 8
"""Key bits settled per radix level: 2^RADIX_BITS bins per all-reduce."""
LEVELS = 32 // RADIX_BITS
"""Radix levels (collectives) per threshold: the keys have 32 bits."""
_BINS = 1 << RADIX_BITS
_FIX = 2.0 ** 40               # the kernel's fixed-point unit: 2^-40 of the max's weight
_LOG2E = 1.4426950408889634
_C2_FLOOR = 2.0 ** -126        # the kernel's floor on log2(e) / T (_c2 in the kernel)
_NO_INDEX = float(2 ** 62)


def _shard(local_logits, vocab_start, vocab_size):
    """(2-D logits, squeeze, width) after checking the shard's placement."""
    if not isinstance(local_logits, torch.Tensor):
        raise TypeError(f"local_logits: expected a torch.Tensor, got "
                        f"{type(local_logits).__name__}")
    if local_logits.dim() not in (1, 2):
        raise ValueError(f"local_logits: expected shape [B, n] or [n], got "
                         f"{list(local_logits.shape)}")
    for name, v in (("vocab_start", vocab_start), ("vocab_size", vocab_size)):
        if isinstance(v, bool) or not isinstance(v, int):
            raise TypeError(f"{name}: expected an int, got {type(v).__name__}")
    n = local_logits.shape[-1]
    if vocab_size < 1 or vocab_start < 0 or vocab_start + n > vocab_size:
        raise ValueError(f"the shard [{vocab_start}, {vocab_start + n}) does not lie in a "
                         f"vocabulary of {vocab_size} tokens")
    x = local_logits[None] if local_logits.dim() == 1 else local_logits
    return x, local_logits.dim() == 1, n


def _check(local_logits, vocab_start, vocab_size, group, temperature, top_k, top_p, min_p,
           order, seed, offset, generator, backend, validate):
    """The checked call on this rank's shard (fused_sampler._args.Call; a shard of width 0
    stands in as one -inf column, masked out by ``real``), ``real`` [1, n] and the shard's
    width.  A seed drawn from a generator is the first rank's (one broadcast)."""
    x, squeeze, n = _shard(local_logits, vocab_start, vocab_size)
    stand_in = x.new_full((x.shape[0], 1), float("-inf")) if n == 0 else x
    a = _args.check(stand_in[0] if squeeze else stand_in, temperature, top_k, top_p, min_p,
                    order, seed=seed, offset=offset, generator=generator, backend=backend,
                    validate=False)
    if validate and a.batch and not _args.capturing(x):
        _args.check_param_values(a.temperature, a.top_k, a.top_p, a.min_p)
    if seed is None and a.batch:
        src = dist.get_global_rank(group, 0) if group is not None else 0
        dist.broadcast(a.seed, src=src, group=group)
    real = torch.arange(max(n, 1), device=x.device)[None, :] < n
    return a, real, n


def _noise(a, n, vocab_start):
    """float64 [B, max(n, 1)] race noise of the shard's tokens, by global index: the
    reference's (the reference backend's summaries; the kernel's draw their own)."""
    return gumbel_noise(a.seeds, a.offsets, max(n, 1), vocab_start).double()


def _terms(x, m, inv_t):
    """The kernel's exact masses (_term): float32 2^((x - m) log2(e) / T) in fixed point,
    int64 units of 2^-40 of the max's weight; 0 for -inf."""
    c2 = torch.clamp_min(inv_t * _LOG2E, _C2_FLOOR)[:, None]
    return (torch.exp2((x - m) * c2) * _FIX).to(torch.int64)


def _keys(x):
    """Order-preserving int64 keys in [0, 2^32) of float32 logits without NaN or -0.0 (the
    kernel's _key)."""
    bits = x.contiguous().view(torch.int32).to(torch.int64)
    return torch.where(bits < 0, (~bits) & 0xFFFFFFFF, bits | 0x80000000)


def _row_hist(digit, values, inside):
    """[B, 2^RADIX_BITS] int64 sums of ``values`` per digit over the ``inside`` tokens."""
    B = digit.shape[0]
    flat = (torch.arange(B, device=digit.device)[:, None] * _BINS + digit).reshape(-1)
    out = torch.zeros(B * _BINS, dtype=torch.int64, device=digit.device)
    out.scatter_add_(0, flat, torch.where(inside, values, 0).reshape(-1))
    return out.view(B, _BINS)


def _choose(hist, state, pk, p, first, has_k, has_p):
    """Each row's choice of a bin from a level's all-reduced histograms ``hist`` [H, B,
    _BINS], in place: the PyTorch twin of the kernel's _radix_choose.  ``state`` int64
    [B, 4]: top-k's prefix and the tokens it still needs, top-p's prefix and the mass
    above its bracket; ``pk`` float64 [B], p x K, set from ``p`` when ``first`` (the
    first level's total is K).

    Top-k keeps the bin where the count from the top reaches the tokens still needed;
    top-p the lowest bin whose mass strictly above it (above the bracket, plus the bins
    above it) is below pK: the tokens there and above pass the reference's test
    ``mass strictly above < p * K``, and no token lies between that key and the lowest
    passing one."""
    desc = hist.flip(2)                                       # from the top bin down
    before = torch.cumsum(desc, dim=2) - desc                 # strictly above each bin
    if has_k:
        need = state[:, 1]
        j = (before[0] < need[:, None]).sum(dim=1) - 1        # where the count reaches k
        state[:, 1] = need - before[0].gather(1, j[:, None])[:, 0]
        state[:, 0] = (state[:, 0] << RADIX_BITS) | (_BINS - 1 - j)
    if has_p:
        if first:
            pk.copy_(p * hist[-1].sum(dim=1).double())
        strictly = state[:, 3:4] + before[-1]
        j = ((strictly.double() < pk[:, None]).sum(dim=1) - 1).clamp_min(0)  # the lowest
        # passing bin (none passes only where K is 0: the top bin, as the kernel's)
        state[:, 3] = strictly.gather(1, j[:, None])[:, 0]
        state[:, 2] = (state[:, 2] << RADIX_BITS) | (_BINS - 1 - j)


def _level(keys, real, mass, shift, state, has_k, has_p):
    """A radix level's int64 [H, B, _BINS] digit counts (``has_k``) and exact masses
    (``has_p``; ``mass`` already zero below top-k's threshold under "top_k_first") over
    this shard's tokens under the prefixes in ``state``, in PyTorch: the reference
    backend's twin of the kernel's _radix_level_kernel."""
    digit = (keys >> shift) & (_BINS - 1)
    hists = []
    for on, pre, values in ((has_k, state[:, 0], torch.ones_like(keys)),
                            (has_p, state[:, 2], mass)):
        if on:
            inside = real & ((keys >> (shift + RADIX_BITS)) == pre[:, None])
            hists.append(_row_hist(digit, values, inside))
    return torch.stack(hists)


def _radix_levels(a, real, n, keys, mass, m_raw, inv_t, kept_lo, k, p, group):
    """The top-k threshold key (the k-th largest key; None when ``k`` is None) and the
    top-p one (the lowest key whose strictly-larger mass is below p * K, K the row's
    mass; None when ``p`` is None), each by LEVELS radix levels over the keys of every
    rank, one all-reduce a level: both in the same all-reduces when both are given (order
    "joint").  On the kernel's backends each level is one launch of _radix_level_kernel,
    which makes the previous level's choice of a bin and sums this one over the shard
    (one read, the rows cut into level_plan's chunks; masses at or above ``kept_lo``),
    and one more launch makes the last choice; else PyTorch (_level, _choose) over
    ``keys`` and ``mass``."""
    B, dev = a.batch, a.logits.device
    has_k, has_p = k is not None, p is not None
    zeros = torch.zeros(B, dtype=torch.int64, device=dev)
    state = torch.stack([zeros, k if has_k else zeros, zeros, zeros], dim=1)
    pk = torch.zeros(B, dtype=torch.float64, device=dev)
    sampler = _kernel(a)
    if sampler is not None:
        m32 = m_raw[:, 0].contiguous()
        hists = torch.zeros(LEVELS, int(has_k) + int(has_p), B, _BINS, dtype=torch.int64,
                            device=dev).unbind(0)         # every level's, zeroed at once
        # a row's chunks all choose, chunk 0 writes: each choice reads one state, writes
        # the other
        states = [state, torch.empty_like(state)]
        chunks = sampler.level_plan(B, n, dev)
    hist = None
    for level in range(LEVELS):
        shift = 32 - RADIX_BITS * (level + 1)
        if sampler is not None:
            hist = sampler.radix_level(a.logits, n, m32, inv_t, shift, RADIX_BITS,
                                       states[0], has_k=has_k, has_p=has_p, kept_lo=kept_lo,
                                       prev=hist, pk=pk, p=p, first=level == 1,
                                       out=hists[level], state_out=states[1], chunks=chunks)
            if level:
                states.reverse()
        else:
            if hist is not None:
                _choose(hist, state, pk, p, level == 1, has_k, has_p)
            hist = _level(keys, real, mass, shift, state, has_k, has_p)
        dist.all_reduce(hist, group=group)
    if sampler is not None:
        sampler.radix_level(a.logits, n, m32, inv_t, 0, RADIX_BITS, states[0], has_k=has_k,
                            has_p=has_p, prev=hist, pk=pk, p=p, stream=False,
                            state_out=states[1])
        state = states[1]
    else:
        _choose(hist, state, pk, p, False, has_k, has_p)
    return (state[:, 0] if has_k else None), (state[:, 2] if has_p else None)


def _bounds(a, real, n, vocab_size, group, validate):
    """Steps 1-3 (module docstring): (greedy [B], 1/T [B], the rows' max float32 [B, 1]
    over every rank (+-inf for the contract's odd rows), kept_lo int64 [B]: the lowest
    key the rows' top-k and top-p keep (0 where neither filters a row), and on the
    reference backend the shard's resolved logits, their max and keys (``_Local``; None
    on the kernel's, whose levels read the logits themselves))."""
    logits = a.logits
    B, dev = a.batch, logits.device
    greedy, inv_t = greedy_and_inv_t(a.temperature, B, dev)
    # 1. the row max and the odd-row flags, over every rank (an empty shard's stand-in
    # column is -inf; NaN is -inf; the +inf flag is the max's)
    m_local = torch.nan_to_num(logits, nan=float("-inf"), posinf=float("inf"),
                               neginf=float("-inf")).amax(dim=1)
    nan = torch.isnan(logits).any(dim=1) if validate else m_local.new_zeros(B, dtype=bool)
    summary = torch.stack([m_local.float(), nan.float(), (m_local == float("inf")).float()],
                          dim=1)
    dist.all_reduce(summary, op=dist.ReduceOp.MAX, group=group)
    m_raw = summary[:, 0:1].contiguous()     # (its [:, 0] goes to the kernels as is)
    if validate and not _args.capturing(logits):
        _args.raise_bad_rows("logits", summary[:, 1] > 0, "contain NaN")
        _args.raise_bad_rows("logits", summary[:, 2] > 0, "contain +inf")
        _args.raise_bad_rows("logits", m_raw[:, 0] == float("-inf"), "have no finite logit")
    local = None if _kernel(a) is not None else _Local(a, real, m_raw)

    k = None
    if a.top_k is not None:
        k = _args.rows(a.top_k, B, torch.int64, dev)
        k_on = (k > 0) & (k < vocab_size)
        k = k.clamp(1, vocab_size)
    has_p = a.top_p is not None
    if has_p:
        p = _args.rows(a.top_p, B, torch.float64, dev)
        p_on = p < 1.0                                        # NaN: off, as the reference
        p = torch.where(p_on, p, 1.0).clamp_min(1e-30)        # (levels need a finite p K)
    joint = a.order == "joint"
    kept_lo = torch.zeros(B, dtype=torch.int64, device=dev)
    keys = local.keys if local is not None else None
    if k is not None and (not has_p or not joint):
        theta_k, _ = _radix_levels(a, real, n, keys, None, m_raw, inv_t, None, k, None,
                                   group)
        kept_lo = torch.where(k_on, theta_k, 0)
    if has_p:
        # top-p measures the top-k set's mass (order "top_k_first") or the whole row's;
        # the kernel's levels sum their own masses (at or above kept_lo)
        mass = None if local is None else \
            torch.where(real & (keys >= kept_lo[:, None]),
                        _terms(local.x_s, local.m, inv_t), 0)
        theta_k, theta_p = _radix_levels(a, real, n, keys, mass, m_raw, inv_t, kept_lo,
                                         k if joint else None, p, group)
        if joint and k is not None:
            kept_lo = torch.where(k_on, theta_k, 0)
        kept_lo = torch.maximum(kept_lo, torch.where(p_on, theta_p, 0))
    return greedy, inv_t, m_raw, kept_lo, local


class _Local:
    """The shard's logits as the reference resolves them, under the rows' max ``m_raw``
    [B, 1] over every rank: ``x`` clean (NaN -inf, -0.0 +0.0, an empty shard's padding
    -inf), ``x_s`` and ``m`` with the odd rows resolved, ``keys`` (_keys of x_s)."""

    def __init__(self, a, real, m_raw):
        self.x = torch.where(real, clean(a.logits), float("-inf"))
        self.x_s, self.m = resolve_odd_rows(self.x, m_raw)
        self.keys = _keys(self.x_s)


def _min_p_log(a):
    """float32 [B] ln(min_p) of the rows min-p filters (min_p > 1 acting as 1), -inf of
    the others (min_p <= 0 or NaN), as reference.keep_mask tests it."""
    mp = _args.rows(a.min_p, a.batch, torch.float32, a.logits.device)
    return torch.where(mp > 0, torch.log(mp.clamp_max(1.0)), float("-inf"))


def _kept(a, real, n, vocab_size, group, validate):
    """The kept set of this rank's tokens, as fused_sampler.reference.keep_mask defines it
    for the whole rows (greedy rows aside), in PyTorch after the collectives of steps
    1-3: (keep [B, n], d, greedy, 1/T, the rows' max, the clean logits)."""
    greedy, inv_t, m_raw, kept_lo, local = _bounds(a, real, n, vocab_size, group, validate)
    if local is None:
        local = _Local(a, real, m_raw)
    keep = real & (local.keys >= kept_lo[:, None])
    d = scaled(local.x_s, local.m, inv_t)
    if a.min_p is not None:
        keep &= d >= _min_p_log(a)[:, None]
    return keep, d, greedy, inv_t, m_raw, local.x


def _gather(mine, group):
    """All ranks' ``mine`` (the same shape on each), stacked [W, ...] in rank order."""
    every = [torch.empty_like(mine) for _ in range(dist.get_world_size(group))]
    dist.all_gather(every, mine, group=group)
    return torch.stack(every)


def _winner(key, idx, dim=0):
    """The index of the largest key along ``dim``, ties to the lowest index (Gumbel-max
    over parts of a row)."""
    return torch.where(key == key.amax(dim=dim, keepdim=True), idx, _NO_INDEX).amin(dim=dim)


def _greedy_index(x, m_raw, real, vocab_start):
    """This rank's lowest global index holding the row's (raw) max, as float64; none:
    _NO_INDEX."""
    pos = torch.arange(x.shape[1], device=x.device, dtype=torch.float64)[None, :] + vocab_start
    hit = real & (x == m_raw)
    return torch.where(hit, pos, _NO_INDEX).amin(dim=1)


def _kernel(a):
    """The kernel module where the call's backend resolves to Triton, else None."""
    if resolve_backend(a.backend, a.logits.device) == "triton":
        from .kernels import sampler      # imported late: TRITON_INTERPRET is read then
        return sampler
    return None


def _race(a, real, n, vocab_start, vocab_size, group, validate, return_logprobs):
    """(tokens, logprobs) of a call without filters, or (after steps 1-3, _bounds) one
    with filters that is not a candidates call, in one all-gather of each shard's
    summaries, laid out as _exchange's columns: besides the shared columns, each sends
    its race winner among its finite (kept) tokens (index, logit, noise) and their
    normaliser relative to an anchor of its own (their max), so that every rank
    recomputes the winners' keys under one anchor and rescales the normalisers to it.

    On the kernel's backends the shard's chunks make the summaries (_shard_kernel: the
    split kernel's chunk race, each chunk proved on its own tokens, one read; a filtered
    row's over the tokens at or above its kept_lo and min-p's bound) and one launch
    combines them (_combine_shards_kernel); on "reference", PyTorch makes one for the
    whole shard (exact float64 keys; a filtered row's over _kept's set) and combines them
    (_plain_result)."""
    filtered = a.top_k is not None or a.top_p is not None or a.min_p is not None
    check = validate and not filtered                     # (_bounds checked the rows)
    sampler = _kernel(a)
    if sampler is not None:
        kept = None
        if filtered:
            _, _, m_raw, kept_lo, _ = _bounds(a, real, n, vocab_size, group, validate)
            kept = (kept_lo, m_raw[:, 0],
                    _min_p_log(a) if a.min_p is not None else None)
        widest = -(-vocab_size // dist.get_world_size(group))    # every rank cuts alike
        chunks, block = sampler.shard_plan(a.batch, widest, a.logits.device)
        cols = sampler.shard_parts(a, vocab_start, n, chunks, block=block,
                                   return_logprobs=return_logprobs, kept=kept)
        if check and not _args.capturing(a.logits):
            cols[0, :, 1] = (torch.isnan(a.logits) & real).any(dim=1).double()
        return sampler.combine_shards(a, _exchange(a, cols, group, check))
    keep = None
    if filtered:
        keep, _, greedy, inv_t, _, _ = _kept(a, real, n, vocab_size, group, validate)
    else:
        greedy, inv_t = greedy_and_inv_t(a.temperature, a.batch, a.logits.device)
    cols = _plain_columns(a, real, n, vocab_start, inv_t, keep)[None]
    return _plain_result(*_split(_exchange(a, cols, group, check)), greedy, inv_t)


def _plain_result(e, m_raw, shared, greedy, inv_t):
    """_race's tokens and log-probs from every shard's summaries (split by _split), in
    PyTorch operations: the arithmetic of the kernel's _combine_shards_kernel."""
    # finite max: the shards' winners' keys under one anchor, ties to the lowest index
    m = e[:, :, 0].amax(dim=0)
    key = torch.where(e[:, :, 1] < _NO_INDEX,
                      (e[:, :, 2] - m.double()) * inv_t.double() + e[:, :, 3], float("-inf"))
    token = _winner(key, e[:, :, 1])
    # log-probs: the winner's d over the normaliser, each shard's rescaled to the anchor
    scale = torch.exp((e[:, :, 0].float() - m.float()) * inv_t).double()
    total = torch.where(e[:, :, 4] > 0, e[:, :, 4] * scale, 0.0).sum(dim=0)
    x_tok = torch.where(e[:, :, 1] == token, e[:, :, 2], float("-inf")).amax(dim=0)
    logp = ((x_tok.float() - m.float()) * inv_t).double() - torch.log(total)
    return _finish_rows(token, logp, greedy, m_raw, shared)


def _plain_columns(a, real, n, vocab_start, inv_t, keep=None):
    """[B, _SHARED + 5] float64: _race's summary of the whole shard, by PyTorch, over
    the finite tokens (and with ``keep``, [B, n] bool, the kept ones)."""
    raw, x = a.logits.float(), torch.where(real, clean(a.logits), float("-inf"))
    g = _noise(a, n, vocab_start)
    finite = (x > float("-inf")) & (x < float("inf"))
    if keep is not None:
        finite &= keep
    anchor = torch.where(finite, x, float("-inf")).amax(dim=1, keepdim=True)
    key = torch.where(finite, (x.double() - anchor.double()) * inv_t.double()[:, None] + g,
                      float("-inf"))
    won = key.amax(dim=1) > float("-inf")
    local = torch.argmax(key, dim=1)[:, None]
    z = torch.where(finite, torch.exp((x - anchor) * inv_t[:, None]).double(), 0.0).sum(dim=1)
    own = torch.stack([anchor[:, 0].double(),
                       torch.where(won, local[:, 0].double() + vocab_start, _NO_INDEX),
                       x.gather(1, local)[:, 0].double(), g.gather(1, local)[:, 0], z], dim=1)
    return torch.cat([_shared_columns(x, raw, g, real, vocab_start), own], dim=1)


_SHARED = 9      # the columns _shared_columns puts before each call's own


def _best_noise(key, vocab_start):
    """([B] the largest of each row's ``key``, [B] float64 global index of its first
    holder, _NO_INDEX where the row's best is -inf)."""
    k = key.amax(dim=1)
    return k, torch.where(k > float("-inf"), torch.argmax(key, dim=1).double() + vocab_start,
                          _NO_INDEX)


def _shared_columns(x, raw, g, real, vocab_start):
    """[B, _SHARED] float64: a shard's max, NaN flag, lowest index of its max, and its
    share of the rows the contract makes uniform whatever the filters: the best noise
    among its +inf tokens and of all its tokens, with their indices, its +inf count and
    its token count."""
    m_r = x.amax(dim=1, keepdim=True)
    return torch.stack([m_r[:, 0].double(), (torch.isnan(raw) & real).any(dim=1).double(),
                        _greedy_index(x, m_r, real, vocab_start),
                        *_best_noise(torch.where(x == float("inf"), g, float("-inf")),
                                     vocab_start),
                        *_best_noise(torch.where(real, g, float("-inf")), vocab_start),
                        (x == float("inf")).sum(dim=1).double(),
                        real.sum(dim=1).double().expand(x.shape[0])], dim=1)


def _exchange(a, cols, group, validate):
    """The one all-gather of a plain or candidates call: every rank's summaries
    [..., B, _SHARED + own] float64 (the shared columns, then the call's own), with the
    same shape on every rank.  Raises on every rank when ``validate`` finds NaN, +inf or
    no finite logit in a row.  Returns the summaries of all ranks [P, B, *], in rank
    order on every rank."""
    e = _gather(cols, group).reshape(-1, *cols.shape[-2:])
    if validate and not _args.capturing(a.logits):
        own, m_raw, shared = _split(e)
        _args.raise_bad_rows("logits", shared[:, :, 1].amax(dim=0) > 0, "contain NaN")
        _args.raise_bad_rows("logits", m_raw == float("inf"), "contain +inf")
        _args.raise_bad_rows("logits", m_raw == float("-inf"), "have no finite logit")
    return e


def _split(e):
    """(own columns, row max, shared columns) of the gathered summaries [P, B, *]."""
    return e[:, :, _SHARED:], e[:, :, 0].amax(dim=0), e[:, :, :_SHARED]


def _finish_rows(tokens, logp, greedy, m_raw, shared):
    """The tokens and log-probs [B] of a finite row, with the rows the shared columns
    settle: a row holding +inf draws among its +inf tokens and one with no finite logit
    among all V (uniform whatever the filters: the best noise, ties to the lowest index);
    a greedy row takes the lowest index of the row max."""
    pinf, none = m_raw == float("inf"), m_raw == float("-inf")
    tokens = torch.where(pinf, _winner(shared[:, :, 3], shared[:, :, 4]), tokens)
    tokens = torch.where(none, _winner(shared[:, :, 5], shared[:, :, 6]), tokens)
    logp = torch.where(pinf, -torch.log(shared[:, :, 7].sum(dim=0)), logp)
    logp = torch.where(none, -torch.log(shared[:, :, 8].sum(dim=0)), logp)
    argmax = torch.where(shared[:, :, 0] == m_raw, shared[:, :, 2], _NO_INDEX).amin(dim=0)
    tokens = torch.where(greedy, argmax, tokens).to(torch.int64)
    return tokens, torch.where(greedy, 0.0, logp).float()


CANDIDATES_MAX = 1024
"""A scalar ``top_k`` up to this (order "top_k_first") settles in one all-gather of each
shard's top-k candidates; larger or per-row ``top_k`` takes the radix levels."""


def by_candidates(top_k, has_top_p, order, vocab_size):
    """Whether a call takes the candidates path (one all-gather): ``top_k`` a Python int
    in (0, min(CANDIDATES_MAX, V - 1)], and top-p, if any, under "top_k_first"."""
    return (isinstance(top_k, int) and not isinstance(top_k, bool)
            and 0 < top_k <= CANDIDATES_MAX and top_k < vocab_size
            and (not has_top_p or order == "top_k_first"))


def _candidates(a, real, n, vocab_start, group, validate):
    """(tokens, logprobs) of a call with a scalar top-k (CANDIDATES_MAX at most; top-p
    under "top_k_first" and min-p allowed) in one all-gather.

    Every token the row keeps is above some shard's k-th largest c_r, or ties with it
    where c_r is the row's k-th largest.  So each shard sends, as candidates, its tokens
    among its k largest that lie strictly above c_r (logit, global index, noise; fewer
    than k, padded), and its tokens tied at c_r as one group: c_r, their count, and the
    best noise among them with its index (they share one logit, so one weight and one
    key but for the noise).  The row's k-th largest is the k-th largest of the candidates
    and the groups, each group counted as many times as it holds tokens; from that every
    rank computes the row's thresholds, masses (exact fixed point), race and normaliser,
    exactly as the reference does for the whole row.  A shard narrower than k sends all
    its tokens above -inf as candidates and its -inf ones as the group (c_r = -inf: they
    count towards k, and never win).  Rows with +inf or no finite logit are uniform over
    their +inf tokens or all tokens whatever the filters (_finish_rows).

    On the kernel's backends the shard's summary is torch.topk and one launch
    (_candidates_kernel: the candidates' noise, the group, the shared columns; one read
    of the shard), and one more launch combines the summaries
    (_combine_candidates_kernel); on "reference", PyTorch operations do both
    (_candidate_columns, _candidates_result)."""
    e = _exchange(a, _candidate_summary(a, real, n, vocab_start, validate), group, validate)
    sampler = _kernel(a)
    if sampler is not None:
        return sampler.combine_candidates(a, e, a.top_k)
    greedy, inv_t = greedy_and_inv_t(a.temperature, a.batch, a.logits.device)
    return _candidates_result(a, *_split(e), greedy, inv_t)


def _candidate_summary(a, real, n, vocab_start, validate, block=None):
    """[B, _SHARED + 3k + 4] float64: this shard's summary for _candidates, on the
    call's backend: torch.topk and _candidates_kernel (``block``: its tile, tests shrink
    it), or PyTorch (_candidate_columns)."""
    sampler = _kernel(a)
    if sampler is None:
        return _candidate_columns(a, real, n, vocab_start, a.top_k)
    x = torch.nan_to_num(a.logits, nan=float("-inf"), posinf=float("inf"),
                         neginf=float("-inf"))              # in the logits' dtype
    top_x, top_i = torch.topk(x, min(a.top_k, x.shape[1]), dim=1)
    cols = sampler.candidate_columns(a, top_x, top_i, vocab_start, n, a.top_k,
                                     block=block)
    if validate and not _args.capturing(a.logits):
        cols[:, 1] = (torch.isnan(a.logits) & real).any(dim=1).double()
    return cols


def _candidates_result(a, e, m_raw, shared, greedy, inv_t):
    """_candidates' tokens and log-probs from every shard's summaries (split by _split),
    in PyTorch operations: the arithmetic of the kernel's _combine_candidates_kernel."""
    k, B, dev = a.top_k, a.batch, a.logits.device
    W = e.shape[0]
    cand = e[:, :, :3 * k].reshape(W, B, 3, k).permute(1, 2, 0, 3).reshape(B, 3, W * k)
    X, I, G = cand[:, 0].float(), cand[:, 1], cand[:, 2]
    ex = e[:, :, 3 * k:]                                      # [W, B, 4]: the ties
    finite = (m_raw > float("-inf")) & (m_raw < float("inf"))
    m = torch.where(finite, m_raw, 0.0).float()[:, None]
    # the shards' groups tied at their k-th largest: [B, W] logit kth_r, count
    kth_r, n_tied = ex[:, :, 0].T.float(), ex[:, :, 1].T
    # the row's k-th largest: of the candidates and the groups, a group counting its size
    vals, order = torch.sort(torch.cat([X, kth_r], dim=1), dim=1, descending=True)
    reach = torch.cumsum(torch.cat([(I < _NO_INDEX).double(), n_tied], dim=1)
                         .gather(1, order), dim=1)
    theta_k = vals.gather(1, (reach < k).sum(dim=1, keepdim=True))
    keep = (I < _NO_INDEX) & (X >= theta_k)
    tied_on = (n_tied > 0) & (kth_r == theta_k)
    d = scaled(X, m, inv_t)
    d_tied = scaled(theta_k, m, inv_t)                             # [B, 1]
    if a.top_p is not None:
        p = _args.rows(a.top_p, B, torch.float64, dev)
        p_on = p < 1.0
        q = torch.where(keep, _terms(X, m, inv_t), 0)
        q_tied = torch.where(tied_on, n_tied.long() * _terms(theta_k, m, inv_t), 0)
        pk = p.clamp_min(1e-30) * (q.sum(dim=1) + q_tied.sum(dim=1)).double()
        passes = keep & (strictly_above(X, q).double() < pk[:, None])
        theta_p = torch.where(passes, X, float("inf")).amin(dim=1, keepdim=True)
        keep &= ~p_on[:, None] | (X >= theta_p)
        # a group at theta_k passes when the kept mass strictly above it is below pK
        above_k = torch.where(X > theta_k, q, 0).sum(dim=1).double()
        tied_on &= ~p_on[:, None] | (above_k < pk)[:, None]
    if a.min_p is not None:
        mp = _args.rows(a.min_p, B, torch.float32, dev)
        mp_on = mp > 0
        log_mp = torch.log(torch.where(mp_on, mp.clamp_max(1.0), 1.0))[:, None]
        keep &= ~mp_on[:, None] | (d >= log_mp)
        tied_on &= ~mp_on[:, None] | (d_tied >= log_mp)
    # the race over the kept candidates and the shards' best tied tokens
    base = (X.double() - m.double()) * inv_t.double()[:, None]
    key = torch.where(keep, base + G, float("-inf"))        # (candidates: X > c_r)
    t_key = torch.where(tied_on & (theta_k > float("-inf")),
                        (theta_k.double() - m.double()) * inv_t.double()[:, None] +
                        ex[:, :, 2].T, float("-inf"))
    keys, idx = torch.cat([key, t_key], dim=1), torch.cat([I, ex[:, :, 3].T], dim=1)
    token = _winner(keys, idx, dim=1)
    d_all = torch.cat([d, d_tied.expand(B, W)], dim=1)
    d_tok = torch.where(idx == token[:, None], d_all.double(), float("-inf")).amax(dim=1)
    w = torch.where(keep, torch.exp(d).double(), 0.0).sum(dim=1) + \
        torch.where(tied_on, n_tied * torch.exp(d_tied).double(), 0.0).sum(dim=1)
    return _finish_rows(token, d_tok - torch.log(w), greedy, m_raw, shared)


def _candidate_columns(a, real, n, vocab_start, k):
    """[B, _SHARED + 3k + 4] float64: _candidates' summary of the shard, by PyTorch: the
    shared columns, the candidates (logits, global indices, noises; padded with -inf,
    _NO_INDEX and 0), then the group tied at the shard's k-th largest (its logit, size,
    best noise and that token's index)."""
    B, dev = a.batch, a.logits.device
    raw, x = a.logits.float(), torch.where(real, clean(a.logits), float("-inf"))
    g = _noise(a, n, vocab_start)
    kk = min(k, x.shape[1])
    top_x, top_i = torch.topk(x, kk, dim=1)
    kth = top_x[:, -1] if kk == k else torch.full((B,), float("-inf"), device=dev)
    above = real.expand(B, -1).gather(1, top_i) & (top_x > kth[:, None])
    pad = [torch.full((B, k - kk), v, device=dev, dtype=torch.float64)
           for v in (float("-inf"), _NO_INDEX, 0.0)]
    tied = real & (x == kth[:, None])
    best, best_idx = _best_noise(torch.where(tied & (kth[:, None] > float("-inf")), g,
                                             float("-inf")), vocab_start)
    return torch.cat([
        _shared_columns(x, raw, g, real, vocab_start),
        torch.where(above, top_x, float("-inf")).double(), pad[0],
        torch.where(above, top_i.double() + vocab_start, _NO_INDEX), pad[1],
        torch.where(above, g.gather(1, top_i), 0.0), pad[2],
        torch.stack([kth.double(), tied.sum(dim=1).double(), best, best_idx], dim=1)],
        dim=1)


def sample(local_logits, *, vocab_start, vocab_size, group=None, temperature=1.0, top_k=None,
           top_p=None, min_p=None, order="top_k_first", seed=None, offset=0, generator=None,
           return_logprobs=False, validate=True, backend="auto"):
    """:func:`fused_sampler.sample` of the whole rows, from this rank's shard of them.

    Every rank of ``group`` calls it with its own shard and the same other arguments, and
    every rank gets the same tokens: those :func:`fused_sampler.sample` draws from the
    concatenated logits, for every seed and parameter.

    Parameters
    ----------
    local_logits : torch.Tensor
        ``[B, n]`` (or ``[n]``): columns ``vocab_start`` to ``vocab_start + n - 1`` of the
        whole logits; float32, float16 or bfloat16; any ``n >= 0``, shards may differ in
        width and may hold no kept token.
    vocab_start : int
        The global index of the shard's first column.
    vocab_size : int
        V, the whole vocabulary (top-k is off for ``top_k >= V``).
    group : torch.distributed.ProcessGroup, optional
        The ranks sharing the rows (default: the world).  Collectives run on the logits'
        device (gloo for CPU tensors, NCCL for CUDA tensors).
    temperature, top_k, top_p, min_p, order, seed, offset, generator, return_logprobs
        As in :func:`fused_sampler.sample`; the same on every rank.  With ``seed=None``
        the seeds are drawn on the group's first rank and broadcast.
    validate : bool
        As in :func:`fused_sampler.sample`; the logits checks (NaN, +inf, rows with no
        finite logit) hold for the whole rows, so every rank raises the same error.
    backend : {"auto", "triton", "reference"}
        "triton" (and "auto" for CUDA tensors, or CPU ones under TRITON_INTERPRET=1): the
        race and its combine (a call without filters; the other filtered calls after
        their thresholds), a scalar top-k's shard and combine, and each radix level run
        as kernel launches, the rows' max and parameters as a few PyTorch operations;
        "reference": PyTorch.

    Returns
    -------
    tokens : torch.Tensor
        int64 ``[B]`` global token ids, the same on every rank (0-d for 1-D logits); with
        ``return_logprobs`` the pair ``(tokens, logprobs)``.
    """
    a, real, n = _check(local_logits, vocab_start, vocab_size, group, temperature, top_k,
                        top_p, min_p, order, seed, offset, generator, backend, validate)
    if a.batch == 0:
        return a.empty_tokens(return_logprobs)
    if by_candidates(a.top_k, a.top_p is not None, a.order, vocab_size):
        return a.finish(*_candidates(a, real, n, vocab_start, group, validate),
                        return_logprobs)
    return a.finish(*_race(a, real, n, vocab_start, vocab_size, group, validate,
                           return_logprobs), return_logprobs)


def filtered_probs(local_logits, *, vocab_start, vocab_size, group=None, temperature=1.0,
                   top_k=None, top_p=None, min_p=None, order="top_k_first", backend="auto"):
    """This rank's columns of :func:`fused_sampler.filtered_probs` of the whole rows:
    float32 ``[B, n]`` (or ``[n]``).  Arguments as in :func:`sample`; always validates.
    The normaliser is a float64 sum over the ranks (in rank order), so the last bit of a
    probability may differ from the unsharded call's."""
    a, real, n = _check(local_logits, vocab_start, vocab_size, group, temperature, top_k,
                        top_p, min_p, order, 0, 0, None, backend, True)
    if a.batch == 0:
        return torch.empty(local_logits.shape, dtype=torch.float32,
                           device=local_logits.device)
    keep, d, greedy, inv_t, m_raw, x = _kept(a, real, n, vocab_size, group, True)
    w = torch.where(keep, torch.exp(d).double(), 0.0)
    every = _gather(torch.stack([w.sum(dim=1), _greedy_index(x, m_raw, real, vocab_start)],
                                dim=1), group)
    total = every[:, :, 0].sum(dim=0)
    arg = every[:, :, 1].amin(dim=0)
    pos = torch.arange(w.shape[1], device=w.device, dtype=torch.float64)[None, :] + vocab_start
    one_hot = (pos == arg[:, None]).double()
    probs = torch.where(greedy[:, None], one_hot, w / total[:, None]).float()
    probs = probs[:, :n]
    return probs[0] if a.squeeze else probs
