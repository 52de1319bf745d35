"""Sampling logits sharded over the vocabulary across a torch.distributed group, never
gathered.

Under tensor parallelism each of W ranks holds ``logits[:, vocab_start:vocab_start + n]``.
:func:`sample` draws, on every rank, exactly the token :func:`fused_sampler.sample` draws
from the whole row, exchanging per row only small, exact summaries, in a number of
collectives fixed by the call's arguments (never by the data).  A call without filters
makes one all-gather (:func:`_plain`); a filtered call:

1. all-reduce (max) of each shard's max and NaN / +inf flags: the row max, the contract's
   odd rows (``validate``), min-p's threshold;
2. top-k: the k-th largest key by radix selection over the 32-bit keys of the float32
   logits, RADIX_BITS at a time (LEVELS all-reduces of integer counts, [B, 2^RADIX_BITS]);
3. top-p: the threshold key the same way, over exact fixed-point masses (LEVELS
   all-reduces of int64 masses); the normaliser K is the first level's total. With order
   "joint" the top-k and top-p levels share their all-reduces;
4. one all-gather of each shard's race winner (the Gumbel-max race over the shard's kept
   tokens, each keyed by its global index, exactly as the reference), its log-weight and
   the shard's kept mass, and the lowest index of the row max (greedy rows).

Integer counts and fixed-point masses sum exactly in any order, so the kept set does not
depend on W or on where the shards are cut; the race's winner is the best of the shards'
winners, ties to the lowest index.  Nothing syncs with the host (``validate=False``): a
decode step with NCCL collectives stays graph-capturable.  Bytes and rounds per call:
docs/design.md, "Tensor parallel"; ``scripts/tp_model.py`` models them against gathering
the logits.

The local steps run as PyTorch operations on the shard (each radix level is one read of
it); building them on the kernel's chunked phases (a shard as a chunk that lives on
another rank) is the next step, not done yet.
"""
from __future__ import annotations

import torch
import torch.distributed as dist

from . import _args
from .reference import greedy_and_inv_t, gumbel_noise

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
    if validate and a.batch and not (x.is_cuda and torch.cuda.is_current_stream_capturing()):
        _args.check_param_values(a.temperature, a.top_k, a.top_p, a.min_p)
    if seed is None and a.batch:
        src = dist.get_global_rank(group, 0) if group is not None else 0
        dist.broadcast(a.seed, src=src, group=group)
    real = torch.arange(max(n, 1), device=x.device)[None, :] < n
    return a, real, n


def _local(a, real):
    """(greedy [B], 1/T [B], the float32 logits, the logits with NaN and the padding of an
    empty shard as -inf and -0.0 as +0.0)."""
    greedy, inv_t = greedy_and_inv_t(a.temperature, a.batch, a.logits.device)
    raw = a.logits.float()
    x = torch.where(torch.isnan(raw) | ~real, float("-inf"), raw)
    return greedy, inv_t, raw, torch.where(x == 0, 0.0, x)


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


def _radix_levels(keys, real, k, mass, p, group):
    """The top-k threshold key (the k-th largest key; None when ``k`` is None) and the
    top-p one (the lowest key whose strictly-larger mass is below p * K, K the sum of
    ``mass`` over the row; None when ``mass`` is None), each by LEVELS radix levels over
    the keys of every rank.  Both in the same all-reduces when both are given (order
    "joint").

    Top-k keeps the bin where the count from the top reaches the tokens still needed;
    top-p the lowest bin whose mass strictly above it (above the bracket, plus the bins
    above it) is below pK: the tokens there and above pass the reference's test
    ``mass strictly above < p * K``, and no token lies between that key and the lowest
    passing one."""
    B = keys.shape[0]
    zeros = torch.zeros(B, dtype=torch.int64, device=keys.device)
    pre_k, need = zeros, k
    pre_p, above, pk = zeros, zeros, None
    for level in range(LEVELS):
        shift = 32 - RADIX_BITS * (level + 1)
        digit = (keys >> shift) & (_BINS - 1)
        hists = []
        if k is not None:
            inside = real & ((keys >> (shift + RADIX_BITS)) == pre_k[:, None])
            hists.append(_row_hist(digit, torch.ones_like(keys), inside))
        if mass is not None:
            inside = real & ((keys >> (shift + RADIX_BITS)) == pre_p[:, None])
            hists.append(_row_hist(digit, mass, inside))
        hist = torch.stack(hists)
        dist.all_reduce(hist, group=group)
        desc = hist.flip(2)                                   # from the top bin down
        before = torch.cumsum(desc, dim=2) - desc             # strictly above each bin
        if k is not None:
            j = (before[0] < need[:, None]).sum(dim=1) - 1    # where the count reaches k
            need = need - before[0].gather(1, j[:, None])[:, 0]
            pre_k = (pre_k << RADIX_BITS) | (_BINS - 1 - j)
        if mass is not None:
            if pk is None:                                    # K: the first level's total
                pk = p * hist[-1].sum(dim=1).double()
            strictly = above[:, None] + before[-1]
            j = (strictly.double() < pk[:, None]).sum(dim=1) - 1   # the lowest passing bin
            above = strictly.gather(1, j[:, None])[:, 0]
            pre_p = (pre_p << RADIX_BITS) | (_BINS - 1 - j)
    return (pre_k if k is not None else None), (pre_p if mass is not None else None)


def _kept(a, real, vocab_size, group, validate):
    """The kept set of this rank's tokens, as fused_sampler.reference.keep_mask defines it
    for the whole rows: (keep, d, greedy, x, m, inv_t, raw max), with the collectives of
    steps 1-3 (module docstring)."""
    logits = a.logits
    B, dev = a.batch, logits.device
    greedy, inv_t, raw, x = _local(a, real)
    nan = torch.isnan(raw) & real
    # 1. the row max and the odd-row flags, over every rank
    summary = torch.stack([x.amax(dim=1), nan.any(dim=1).float(),
                           (x == float("inf")).any(dim=1).float()], dim=1)
    dist.all_reduce(summary, op=dist.ReduceOp.MAX, group=group)
    m_raw = summary[:, 0:1]
    if validate and not (logits.is_cuda and torch.cuda.is_current_stream_capturing()):
        _args.raise_bad_rows("logits", summary[:, 1] > 0, "contain NaN")
        _args.raise_bad_rows("logits", summary[:, 2] > 0, "contain +inf")
        _args.raise_bad_rows("logits", m_raw[:, 0] == float("-inf"), "have no finite logit")
    # the contract's odd rows, as the reference's _sanitize resolves them
    pos, neg = m_raw == float("inf"), m_raw == float("-inf")
    x_s = torch.where(pos, torch.where(x == float("inf"), 0.0, float("-inf")), x)
    x_s = torch.where(neg & real, 0.0, x_s)
    m = torch.where(pos | neg, 0.0, m_raw)
    d = torch.where(x_s == float("-inf"), float("-inf"), (x_s - m) * inv_t[:, None])
    keep = real.expand(B, -1).clone()
    keys = _keys(x_s)

    k = None
    if a.top_k is not None:
        k = _args.rows(a.top_k, B, torch.int64, dev)
        k_on = (k > 0) & (k < vocab_size)
        k = k.clamp(1, vocab_size)
    mass = None
    if a.top_p is not None:
        p = _args.rows(a.top_p, B, torch.float64, dev)
        p_on = p < 1.0
        p = p.clamp_min(1e-30)
        # the kernel's exact masses: float32 2^((x - m) log2(e) / T), fixed point
        c2 = torch.clamp_min(inv_t * _LOG2E, _C2_FLOOR)[:, None]
        mass = (torch.exp2((x_s - m) * c2) * _FIX).to(torch.int64)
    joint = a.order == "joint"
    if k is not None and (mass is None or not joint):
        theta_k, _ = _radix_levels(keys, real, k, None, None, group)
        keep &= ~k_on[:, None] | (keys >= theta_k[:, None])
    if mass is not None:
        # top-p measures the top-k set's mass (order "top_k_first") or the whole row's
        mass = torch.where(keep if not joint else real, mass, 0)
        theta_k, theta_p = _radix_levels(keys, real, k if joint else None, mass, p, group)
        if joint and k is not None:
            keep &= ~k_on[:, None] | (keys >= theta_k[:, None])
        keep &= ~p_on[:, None] | (keys >= theta_p[:, None])
    if a.min_p is not None:
        mp = _args.rows(a.min_p, B, torch.float32, dev)
        mp_on = mp > 0
        mp = mp.clamp_max(1.0)
        keep &= ~mp_on[:, None] | (d >= torch.log(torch.where(mp_on, mp, 1.0))[:, None])
    return keep, d, greedy, x_s, m, inv_t, m_raw, x


def _greedy_index(x, m_raw, real, vocab_start):
    """This rank's lowest global index holding the row's (raw) max, as float64; none:
    _NO_INDEX."""
    pos = torch.arange(x.shape[1], device=x.device, dtype=torch.float64)[None, :] + vocab_start
    hit = real & (x == m_raw)
    return torch.where(hit, pos, _NO_INDEX).amin(dim=1)


def _plain(a, real, n, vocab_start, group, validate):
    """(tokens, logprobs) of a call without filters, in one all-gather: each rank sends
    its shard's max and odd-value flags, its race winner for each way the whole row may
    turn out (finite max: the winner under the shard's own max as anchor, with its logit
    and noise, so that every rank recomputes its key under the row's max; a row holding
    +inf: the best noise among the shard's +inf tokens; no finite logit: the best noise
    of all), its normaliser relative to its max, and the lowest index of its max."""
    logits = a.logits
    B = a.batch
    greedy, inv_t, raw, x = _local(a, real)
    m_r = x.amax(dim=1, keepdim=True)
    g = gumbel_noise(a.seeds, a.offsets, max(n, 1), vocab_start).double()

    def best(key):                                            # (key, global index)
        k = key.amax(dim=1)
        return k, torch.where(k > float("-inf"), torch.argmax(key, dim=1).double() +
                              vocab_start, _NO_INDEX)
    finite = (x > float("-inf")) & (x < float("inf"))
    anchor = torch.where(finite, x, float("-inf")).amax(dim=1, keepdim=True)
    key_a, idx_a = best(torch.where(finite, (x.double() - anchor.double()) *
                                    inv_t.double()[:, None] + g, float("-inf")))
    local = (idx_a - vocab_start).clamp(0, max(n - 1, 0)).long()[:, None]
    x_a, g_a = x.gather(1, local)[:, 0].double(), g.gather(1, local)[:, 0]
    key_b, idx_b = best(torch.where(x == float("inf"), g, float("-inf")))
    key_c, idx_c = best(torch.where(real, g, float("-inf")))
    z = torch.where(finite, torch.exp((x - anchor) * inv_t[:, None]).double(), 0.0).sum(dim=1)
    mine = torch.stack([m_r[:, 0].double(), (torch.isnan(raw) & real).any(dim=1).double(),
                        anchor[:, 0].double(), idx_a, x_a, g_a, key_b, idx_b, key_c, idx_c,
                        z, _greedy_index(x, m_r, real, vocab_start),
                        (x == float("inf")).sum(dim=1).double(),
                        real.sum(dim=1).double().expand(B)], dim=1)
    every = [torch.empty_like(mine) for _ in range(dist.get_world_size(group))]
    dist.all_gather(every, mine, group=group)
    e = torch.stack(every)                                    # [W, B, 14], rank order
    m_raw = e[:, :, 0].amax(dim=0)
    if validate and not (logits.is_cuda and torch.cuda.is_current_stream_capturing()):
        _args.raise_bad_rows("logits", e[:, :, 1].amax(dim=0) > 0, "contain NaN")
        _args.raise_bad_rows("logits", m_raw == float("inf"), "contain +inf")
        _args.raise_bad_rows("logits", m_raw == float("-inf"), "have no finite logit")
    # finite max: the shards' winners' keys under the row's max, ties to the lowest index
    m = e[:, :, 2].amax(dim=0)
    key = torch.where(e[:, :, 3] < _NO_INDEX,
                      (e[:, :, 4] - m.double()) * inv_t.double() + e[:, :, 5], float("-inf"))

    def winner(k, idx):
        top = k.amax(dim=0)
        return torch.where(k == top, idx, _NO_INDEX).amin(dim=0)
    token = winner(key, e[:, :, 3])
    token = torch.where(m_raw == float("inf"), winner(e[:, :, 6], e[:, :, 7]), token)
    token = torch.where(m_raw == float("-inf"), winner(e[:, :, 8], e[:, :, 9]), token)
    # log-probs: the winner's d over the normaliser, each shard's rescaled to the row max
    scale = torch.exp((e[:, :, 2].float() - m.float()) * inv_t).double()
    total = torch.where(e[:, :, 10] > 0, e[:, :, 10] * scale, 0.0).sum(dim=0)
    x_tok = torch.where(e[:, :, 3] == token, e[:, :, 4], float("-inf")).amax(dim=0)
    logp = ((x_tok.float() - m.float()) * inv_t).double() - torch.log(total)
    # uniform rows: over the +inf tokens, or over all V when no logit is finite
    logp = torch.where(m_raw == float("inf"), -torch.log(e[:, :, 12].sum(dim=0)), logp)
    logp = torch.where(m_raw == float("-inf"), -torch.log(e[:, :, 13].sum(dim=0)), logp)
    # greedy: the lowest index of the row max, among the shards that hold it
    argmax = torch.where(e[:, :, 0] == m_raw, e[:, :, 11], _NO_INDEX).amin(dim=0)
    tokens = torch.where(greedy, argmax, token).to(torch.int64)
    return tokens, torch.where(greedy, 0.0, logp).float()


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
        Checked; every backend runs the shard's steps as PyTorch operations for now.

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
    if a.top_k is None and a.top_p is None and a.min_p is None:
        return a.finish(*_plain(a, real, n, vocab_start, group, validate), return_logprobs)
    keep, d, greedy, x_s, m, inv_t, m_raw, x = _kept(a, real, vocab_size, group, validate)
    # 4. this shard's race winner (the reference's float64 key, noise by global index)
    g = gumbel_noise(a.seeds, a.offsets, max(n, 1), vocab_start).double()
    key = (x_s.double() - m.double()) * inv_t.double()[:, None] + g
    race = torch.where(keep & (x_s > float("-inf")), key, float("-inf"))
    best = race.amax(dim=1)
    local = torch.argmax(race, dim=1)                          # the first of equal keys
    winner = torch.where(best > float("-inf"), local.double() + vocab_start, _NO_INDEX)
    d_win = d.gather(1, local[:, None])[:, 0].double()
    w_sum = torch.where(keep, torch.exp(d).double(), 0.0).sum(dim=1)
    mine = torch.stack([best, winner, d_win, w_sum, _greedy_index(x, m_raw, real,
                                                                  vocab_start)], dim=1)
    world = dist.get_world_size(group)
    every = [torch.empty_like(mine) for _ in range(world)]
    dist.all_gather(every, mine, group=group)
    every = torch.stack(every)                                 # [W, B, 5], rank order
    top = every[:, :, 0].amax(dim=0)
    index = torch.where(every[:, :, 0] == top, every[:, :, 1], _NO_INDEX).amin(dim=0)
    d_tok = torch.where((every[:, :, 0] == top) & (every[:, :, 1] == index),
                        every[:, :, 2], float("-inf")).amax(dim=0)
    total = every[:, :, 3].sum(dim=0)                          # in rank order: the same
    tokens = torch.where(greedy, every[:, :, 4].amin(dim=0), index).to(torch.int64)
    logprobs = torch.where(greedy, 0.0, d_tok - torch.log(total)).float()
    return a.finish(tokens, logprobs, return_logprobs)


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
    keep, d, greedy, x_s, m, inv_t, m_raw, x = _kept(a, real, vocab_size, group, True)
    w = torch.where(keep, torch.exp(d).double(), 0.0)
    mine = torch.stack([w.sum(dim=1), _greedy_index(x, m_raw, real, vocab_start)], dim=1)
    world = dist.get_world_size(group)
    every = [torch.empty_like(mine) for _ in range(world)]
    dist.all_gather(every, mine, group=group)
    every = torch.stack(every)
    total = every[:, :, 0].sum(dim=0)
    arg = every[:, :, 1].amin(dim=0)
    pos = torch.arange(w.shape[1], device=w.device, dtype=torch.float64)[None, :] + vocab_start
    one_hot = (pos == arg[:, None]).double()
    probs = torch.where(greedy[:, None], one_hot, w / total[:, None]).float()
    probs = probs[:, :n]
    return probs[0] if a.squeeze else probs
