"""The fused sampler: one Triton kernel from logits to token ids.

A fixed grid of programs (a few per SM) walks the rows, one row at a time per program,
each program with its own small scratch: memory is per program, not per row.  Every pass
streams the row in BLOCK-wide tiles; the passes are:

  pass 1   max, greedy argmax, online normaliser, and either the Gumbel race (no filter:
           done in one read) or a count histogram of the logits' order keys (top-k/top-p).
  search   the histogram brackets the top-k threshold exactly (counts) and the top-p
           threshold (mass bounds).  If the uncertain tokens fit the program's scratch
           buffer (CAP), one *gather* pass copies them there and races every surely-kept
           token on the way; an exact search in scratch finishes.  Otherwise a *refine*
           pass histograms only the uncertain key range, 2^BIN_BITS times finer.
  race     when both thresholds are exact (min-p alone, or a refine that settled them),
           one pass races the kept tokens.
  write    filtered_probs mode only: write the [V] distribution.

Bytes: the floor is one read of the logits (V * itemsize per row).  No filter: 1 read.
Min-p alone: 2.  Top-k and/or top-p: 2 when the bracket fits in scratch (the usual case,
measured in docs/design.md), plus one per refine.  See docs/design.md for why it is exact.

All masses are exact fixed-point sums (int64, 2^-40 units) of float32 exp((x - max) / T),
so they do not depend on the tile order, the block size or the number of warps.
"""
import functools
import os
import struct

import torch
import triton
import triton.language as tl

# Module constants the kernel reads are tl.constexpr: a compiled @jit function may read
# no other globals (the interpreter does not check this).
FIX_BITS = tl.constexpr(40)      # fixed-point mass unit: 2^-40 of the row max's weight
FIX = tl.constexpr(float(2 ** 40))
# Relative and absolute slack on mass bounds taken from bin edges: covers float32 exp's
# few-ulp error and the fixed-point rounding, so a bracket never misses the threshold.
BOUND_SLACK = tl.constexpr(1e-5)
NEG_INF = tl.constexpr(float("-inf"))
POS_INF = tl.constexpr(float("inf"))


# ----------------------------------------------------------------------------- helpers

def _device(fn):
    """A device function: @triton.jit when compiled.  Under TRITON_INTERPRET it stays a
    plain Python function running the same body, because the interpreter re-patches
    triton.language on every call of a jit'd device function (about 1.5 ms), which made
    the interpreted kernel (CI's tests) some 20 times slower."""
    return fn if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0") else triton.jit(fn)


@_device
def _load_x(row_ptr, offs, msk, mode):
    """float32 logits with the contract's special values resolved (see reference._sanitize).

    mode 0: as given (NaN -> -inf, -0 -> +0); mode 1: the row holds +inf, which become 0
    and everything else -inf; mode 2: the row has no logit above -inf, all become 0.
    Lanes past V are -inf in every mode.
    """
    raw = tl.load(row_ptr + offs, mask=msk, other=NEG_INF).to(tl.float32)
    x = tl.where(raw != raw, NEG_INF, raw)
    x = tl.where(x == 0.0, 0.0, x)
    x = tl.where(mode == 1, tl.where(x == POS_INF, 0.0, NEG_INF), x)
    x = tl.where(mode == 2, tl.where(msk, 0.0, NEG_INF), x)
    return x


@_device
def _tile(row_ptr, start, lanes, V, mode, m, inv_t):
    """One tile of the row after pass 1: offsets, mask, logits, their keys, and d."""
    offs = start + lanes
    msk = offs < V
    x = _load_x(row_ptr, offs, msk, mode)
    return offs, msk, x, _key(x), _scaled(x, m, inv_t)


@_device
def _key(x):
    """Order-preserving uint32 key of a float32 (no NaN), widened to int64."""
    b = x.to(tl.uint32, bitcast=True)
    k = tl.where((b >> 31) != 0, ~b, b | 0x80000000)
    return k.to(tl.int64)


@_device
def _unkey(k):
    """Inverse of _key: int64 key in [0, 2^32) back to its float32."""
    u = k.to(tl.uint32)
    b = tl.where((u >> 31) != 0, u & 0x7FFFFFFF, ~u)
    return b.to(tl.float32, bitcast=True)


@_device
def _scaled(x, m, inv_t):
    """d = (x - max) * (1/T), float32, -inf for -inf logits: log P up to the normaliser."""
    return tl.where(x == NEG_INF, NEG_INF, (x - m) * inv_t)


@_device
def _fixed(d):
    """exp(d) (d <= 0) in exact fixed point, int64 units of 2^-40."""
    return (tl.exp(d).to(tl.float64) * FIX + 0.5).to(tl.int64)


@_device
def _philox(seed, c0, c1, c2, c3):
    """Philox-4x32-10 (Salmon et al. 2011) of counter (c0..c3) under the int64 key
    ``seed``, the same stream as triton.language.philox and reference.philox4x32."""
    k0 = (seed & 0xFFFFFFFF).to(tl.uint32)
    k1 = ((seed >> 32) & 0xFFFFFFFF).to(tl.uint32)
    round_a = tl.full([], 0xD2511F53, tl.uint32)
    round_b = tl.full([], 0xCD9E8D57, tl.uint32)
    key_a = tl.full([], 0x9E3779B9, tl.uint32)
    key_b = tl.full([], 0xBB67AE85, tl.uint32)
    for _ in tl.static_range(10):
        prev_c0 = c0
        prev_c2 = c2
        c0 = tl.umulhi(round_b, prev_c2) ^ c1 ^ k0
        c2 = tl.umulhi(round_a, prev_c0) ^ c3 ^ k1
        c1 = round_b * prev_c2
        c3 = round_a * prev_c0
        k0 = k0 + key_a
        k1 = k1 + key_b
    return c0, c1, c2, c3


@_device
def _gumbel(seed, offset, idx):
    """Gumbel noise of token ``idx`` (int64) under (seed, offset); see reference.gumbel_noise.

    53 random bits from Philox words 0 and 1 of counter (idx, offset); -log U is computed
    from whichever of U or 1 - U is small, so both tails keep float32 relative precision
    and U is never 0 or 1: the noise is finite and has no 2^-24 floor.
    """
    c0 = (idx & 0xFFFFFFFF).to(tl.uint32)
    c1 = (idx >> 32).to(tl.uint32)
    c2 = c0 * 0 + (offset & 0xFFFFFFFF).to(tl.uint32)
    c3 = c0 * 0 + ((offset >> 32) & 0xFFFFFFFF).to(tl.uint32)
    r0, r1, _, _ = _philox(seed, c0, c1, c2, c3)
    n = (r0.to(tl.uint64) << 21) | (r1.to(tl.uint64) >> 11)
    low = n < (1 << 52)
    v = ((n.to(tl.float64) + 0.5) * (2.0 ** -53)).to(tl.float32)           # 1 - U
    w = (((1 << 53) - n).to(tl.float64) - 0.5) * (2.0 ** -53)             # U
    v = tl.where(low, v, 0.25)
    w = tl.where(low, 0.5, w.to(tl.float32))
    one_minus_v = 1.0 - v
    log1p_neg_v = tl.where(one_minus_v == 1.0, -v,
                           tl.math.div_rn(tl.log(one_minus_v) * (-v), one_minus_v - 1.0))
    e = tl.where(low, -log1p_neg_v, -tl.log(w))
    return -tl.log(e)


@_device
def _race_key(x, m, inv_t64, g):
    """float64 race key (x - max) * (1/T) + G: argmax over the kept set is a draw from it."""
    return tl.where(x == NEG_INF, NEG_INF,
                    (x.to(tl.float64) - m.to(tl.float64)) * inv_t64 + g.to(tl.float64))


@_device
def _bin_edges(span_lo, span_hi, shift, NB: tl.constexpr):
    """Lowest and highest key of each of the NB bins of width 2^shift from span_lo."""
    b = tl.arange(0, NB).to(tl.int64)
    lo = span_lo + (b << shift)
    hi = tl.minimum(span_lo + ((b + 1) << shift) - 1, span_hi)
    return lo, hi


KEY_NEG_INF = tl.constexpr(0x007FFFFF)   # _key(-inf): no sanitised logit has a smaller key
KEY_NONE = tl.constexpr(1 << 33)         # above every key: "no token" as a lower bound


@_device
def _clamped_x(key, key_max):
    """The float32 of a bin-edge key, clamped into [-inf, row max]."""
    return _unkey(tl.minimum(tl.maximum(key, KEY_NEG_INF), key_max))


@_device
def _edge_bounds(cnt, lo_key, hi_key, key_max, m, inv_t):
    """Fixed-point bounds on each bin's total mass from its count and its edges.

    Returns (lower, upper, lower bound of one token's mass).  The slack covers float32
    exp's few-ulp error and the +-1/2 rounding of each fixed-point term.
    """
    w_lo = tl.exp(_scaled(_clamped_x(lo_key, key_max), m, inv_t)).to(tl.float64) * FIX
    w_hi = tl.exp(_scaled(_clamped_x(hi_key, key_max), m, inv_t)).to(tl.float64) * FIX
    one_lo = tl.maximum(w_lo * (1.0 - BOUND_SLACK) - 1.0, 0.0)
    c = cnt.to(tl.float64)
    return c * one_lo, c * (w_hi * (1.0 + BOUND_SLACK) + 1.0), one_lo


@_device
def _pick(bins, b, v):
    """v[b] as a scalar (0 when b is out of range)."""
    return tl.sum(tl.where(bins == b, v, 0), 0)


@_device
def _next_shift(lo, hi, BIN_BITS: tl.constexpr):
    """Smallest bin width 2^s that covers keys [lo, hi] with 2^BIN_BITS bins."""
    s = tl.full([], 0, tl.int64)
    while ((hi - lo) >> s) >= (1 << BIN_BITS):
        s += 1
    return s


@_device
def _top_k_window(cnt, span_lo, span_hi, shift, above, k, NB: tl.constexpr):
    """Bin bk holding the k-th largest key, from exact counts.

    ``above`` counts keys above the span.  Returns bk, the count above bk (span and
    above), bk's count and its key range.
    """
    bins = tl.arange(0, NB)
    lo_key, hi_key = _bin_edges(span_lo, span_hi, shift, NB)
    incl = above + tl.cumsum(cnt.to(tl.int64), 0, reverse=True)     # keys >= each bin
    bk = tl.max(tl.where(incl >= k, bins, -1), 0)
    cnt_bk = _pick(bins, bk, cnt).to(tl.int64)
    return bk, _pick(bins, bk, incl) - cnt_bk, cnt_bk, _pick(bins, bk, lo_key), \
        _pick(bins, bk, hi_key)


@_device
def _top_k_mass_bounds(cnt, span_lo, span_hi, shift, bk, n_min, mass_above, key_max, m,
                       inv_t, NB: tl.constexpr):
    """Bounds on the mass of the top-k set while its threshold is only known to lie in bin
    bk: everything above bk, at least n_min of bk's tokens, at most all of them."""
    bins = tl.arange(0, NB)
    lo_key, hi_key = _bin_edges(span_lo, span_hi, shift, NB)
    lo_m, hi_m, one_lo = _edge_bounds(cnt, lo_key, hi_key, key_max, m, inv_t)
    k_lo = mass_above + tl.sum(tl.where(bins > bk, lo_m, 0.0), 0) \
        + n_min.to(tl.float64) * _pick(bins, bk, one_lo)
    k_hi = mass_above + tl.sum(tl.where(bins >= bk, hi_m, 0.0), 0)
    return k_lo, k_hi


@_device
def _top_p_window(cnt, lo_m, hi_m, span_lo, span_hi, shift, mass_above, pk_lo, pk_hi,
                  floor_key, log_mp, key_max, m, inv_t, NB: tl.constexpr):
    """The bins whose tokens top-p may keep or drop, given bounds on each bin's mass.

    A token's top-p test compares the mass strictly above it with p * K.  A bin is surely
    kept when even its upper bound (everything above it plus its own mass) is below
    p * K_lo; surely dropped when the mass above it is at least p * K_hi, or when top-k
    (keys below floor_key) or min-p drops it whole.  Kept bins are a top prefix, dropped
    ones a bottom suffix; the bins between form the window.  With single-key bins
    (shift 0) and exact masses a token's own bin is a tie group, so the test is exact
    and the window is empty.  Returns (done, threshold key if done, window key range,
    window count).
    """
    bins = tl.arange(0, NB)
    lo_key, hi_key = _bin_edges(span_lo, span_hi, shift, NB)
    ha = mass_above + tl.cumsum(hi_m, 0, reverse=True) - hi_m
    la = mass_above + tl.cumsum(lo_m, 0, reverse=True) - lo_m
    kept = ha + tl.where(shift > 0, hi_m, 0.0) < pk_lo
    d_hi = _scaled(_clamped_x(hi_key, key_max), m, inv_t)
    dropped = (la >= pk_hi) | (hi_key < floor_key) | (d_hi < log_mp)
    whi = tl.max(tl.where(kept, -1, bins), 0)
    wlo = tl.min(tl.where(dropped, NB, bins), 0)
    in_win = (bins >= wlo) & (bins <= whi)
    return wlo > whi, span_lo + ((whi + 1).to(tl.int64) << shift), \
        _pick(bins, wlo, lo_key), _pick(bins, whi, hi_key), \
        tl.sum(tl.where(in_win, cnt, 0), 0).to(tl.int64)


@_device
def _param(ptr, val, row, IS_TENSOR: tl.constexpr, dtype: tl.constexpr):
    """A per-row parameter: entry ``row`` of a [B] tensor, or the scalar every row shares
    (a float64 one arrives as its bits: see _scalar_or_tensor)."""
    if IS_TENSOR:
        return tl.load(ptr + row).to(dtype)
    elif dtype == tl.float64:
        return tl.cast(val, tl.int64).to(tl.float64, bitcast=True)
    else:
        return tl.cast(val, dtype)


# ----------------------------------------------------------------------------- kernel

# What the next streaming pass over the row does.
REFINE = tl.constexpr(1)  # histogram the uncertain key ranges at finer resolution
GATHER = tl.constexpr(2)  # copy the uncertain tokens to scratch, race the surely-kept ones
RACE = tl.constexpr(3)    # both thresholds exact: race the kept tokens (or sum their mass)
DONE = tl.constexpr(4)


@triton.jit
def _sample_kernel(
    logits_ptr, stride_row, V, n_rows,
    temp_ptr, temp_val, topk_ptr, topk_val, topp_ptr, topp_val, minp_ptr, minp_val,
    seed_ptr, seed_val, offset_ptr, offset_val,
    tokens_ptr, logprobs_ptr, probs_ptr, scratch_ptr, binmass_ptr, stats_ptr,
    TEMP_T: tl.constexpr, TOPK_T: tl.constexpr, TOPP_T: tl.constexpr, MINP_T: tl.constexpr,
    SEED_T: tl.constexpr, OFFSET_T: tl.constexpr,
    HAS_TOP_K: tl.constexpr, HAS_TOP_P: tl.constexpr, HAS_MIN_P: tl.constexpr,
    JOINT: tl.constexpr, PROBS: tl.constexpr, LOGPROBS: tl.constexpr, STATS: tl.constexpr,
    BLOCK: tl.constexpr, BIN_BITS: tl.constexpr, CAP: tl.constexpr, CHUNK: tl.constexpr,
    MAX_PASSES: tl.constexpr,
):
    NB: tl.constexpr = 1 << BIN_BITS
    # A fixed grid of programs walks the rows, so the scratch is per program (the grid is
    # a few waves of the GPU), not per row: memory does not grow with the batch.
    program = tl.program_id(0).to(tl.int64)
    scratch_row = scratch_ptr + program * (2 * CAP)
    binmass_row = binmass_ptr + program * NB
    for row32 in range(tl.program_id(0), n_rows, tl.num_programs(0)):
        tl.debug_barrier()     # the previous row's reads of the scratch are done
        row = tl.cast(row32, tl.int64)
        _sample_row(
            logits_ptr + row * stride_row, V, row,
            temp_ptr, temp_val, topk_ptr, topk_val, topp_ptr, topp_val, minp_ptr, minp_val,
            seed_ptr, seed_val, offset_ptr, offset_val,
            tokens_ptr, logprobs_ptr, probs_ptr, scratch_row, binmass_row, stats_ptr,
            TEMP_T, TOPK_T, TOPP_T, MINP_T, SEED_T, OFFSET_T, HAS_TOP_K, HAS_TOP_P,
            HAS_MIN_P, JOINT, PROBS, LOGPROBS, STATS, BLOCK, BIN_BITS, CAP, CHUNK, MAX_PASSES)


@_device
def _sample_row(
    row_ptr, V, row,
    temp_ptr, temp_val, topk_ptr, topk_val, topp_ptr, topp_val, minp_ptr, minp_val,
    seed_ptr, seed_val, offset_ptr, offset_val,
    tokens_ptr, logprobs_ptr, probs_ptr, scratch_row, binmass_row, stats_ptr,
    TEMP_T: tl.constexpr, TOPK_T: tl.constexpr, TOPP_T: tl.constexpr, MINP_T: tl.constexpr,
    SEED_T: tl.constexpr, OFFSET_T: tl.constexpr,
    HAS_TOP_K: tl.constexpr, HAS_TOP_P: tl.constexpr, HAS_MIN_P: tl.constexpr,
    JOINT: tl.constexpr, PROBS: tl.constexpr, LOGPROBS: tl.constexpr, STATS: tl.constexpr,
    BLOCK: tl.constexpr, BIN_BITS: tl.constexpr, CAP: tl.constexpr, CHUNK: tl.constexpr,
    MAX_PASSES: tl.constexpr,
):
    """One row, start to finish: the whole algorithm (module docstring)."""
    NB: tl.constexpr = 1 << BIN_BITS
    lanes = tl.arange(0, BLOCK)
    bins = tl.arange(0, NB)
    slots = tl.arange(0, CAP)

    # ---- per-row parameters: a tensor entry, or the scalar shared by every row
    t = _param(temp_ptr, temp_val, row, TEMP_T, tl.float32)
    seed = _param(seed_ptr, seed_val, row, SEED_T, tl.int64)
    offset = _param(offset_ptr, offset_val, row, OFFSET_T, tl.int64)
    # Out-of-range values can only arrive in tensors with validate=False; each has a
    # defined meaning (docs/design.md, "Odd input"): T <= 0 or NaN is greedy, a NaN
    # top_p / min_p is off, top_p <= 0 keeps the most probable tokens, min_p > 1 acts as 1.
    greedy = ~(t > 0.0)
    inv_t = tl.math.div_rn(1.0, tl.where(greedy, 1.0, t))          # T = +inf gives 0
    inv_t64 = inv_t.to(tl.float64)
    no = greedy & ~greedy                                           # scalar False
    k = tl.full([], 0, tl.int64)
    k_on = no
    if HAS_TOP_K:
        k = _param(topk_ptr, topk_val, row, TOPK_T, tl.int64)
        k_on = ~greedy & (k > 0) & (k < V)
    p = tl.full([], 1.0, tl.float64)
    p_on = no
    if HAS_TOP_P:
        p = _param(topp_ptr, topp_val, row, TOPP_T, tl.float64)
        p_on = ~greedy & (p < 1.0)
        p = tl.maximum(p, 1e-30)
    mp = tl.full([], 1.0, tl.float32)
    m_on = no
    if HAS_MIN_P:
        mp = _param(minp_ptr, minp_val, row, MINP_T, tl.float32)
        m_on = ~greedy & (mp > 0.0)
        mp = tl.minimum(mp, 1.0)
    # min-p keeps d >= ln(min_p); -inf keeps every token when min-p is off
    log_mp = tl.where(m_on, tl.log(tl.where(m_on, mp, 1.0)), NEG_INF)
    search = k_on | p_on
    plain = ~greedy & ~search & ~m_on

    # ---- pass 1: max, greedy argmax, online normaliser; then the race (no filter: the
    # row is done in this one read) or a count histogram of the keys (top-k / top-p).
    # A row whose max is +-inf is read once more with its special values resolved.
    mode = tl.full([], 0, tl.int32)
    passes = tl.full([], 0, tl.int32)
    again = ~no
    m = tl.full([], NEG_INF, tl.float32)
    arg = tl.full([], 0, tl.int64)
    z = tl.full([], 0.0, tl.float64)
    hist = tl.zeros([NB], tl.int32)
    best_idx = tl.full([], 0, tl.int64)
    best_x = tl.full([], NEG_INF, tl.float32)
    best_key = tl.full([], NEG_INF, tl.float64)
    while again:
        # Per-lane state through the tiles, reduced once at the end (one reduction per
        # pass instead of one per tile): running max, first index of it, normaliser
        # relative to the lane max, and the lane's race winner.
        m_v = tl.full([BLOCK], NEG_INF, tl.float32)
        arg_v = tl.zeros([BLOCK], tl.int64)
        z_v = tl.zeros([BLOCK], tl.float64)
        best_x_v = tl.full([BLOCK], NEG_INF, tl.float32)
        best_g_v = tl.zeros([BLOCK], tl.float64)
        best_i_v = tl.zeros([BLOCK], tl.int64)
        hist = tl.zeros([NB], tl.int32)
        for start in range(0, V, BLOCK):  # stream: first
            offs = start + lanes
            msk = offs < V
            x = _load_x(row_ptr, offs, msk, mode)
            arg_v = tl.where(x > m_v, offs.to(tl.int64), arg_v)   # first of equal maxima
            m_new = tl.maximum(m_v, x)
            rescale = tl.where(m_v == NEG_INF, 0.0, tl.exp((m_v - m_new) * inv_t))
            w = tl.where(x == NEG_INF, 0.0, tl.exp((x - m_new) * inv_t))
            z_v = z_v * rescale.to(tl.float64) + w.to(tl.float64)
            if not PROBS:
                if plain:
                    # One-read draw: keys anchored at the lane's running max, and the
                    # lane's winner re-keyed with the same anchor before each comparison.
                    g = _gumbel(seed, offset, offs.to(tl.int64))
                    win = _race_key(x, m_new, inv_t64, g) > \
                        _race_key(best_x_v, m_new, inv_t64, best_g_v)
                    best_x_v = tl.where(win, x, best_x_v)
                    best_g_v = tl.where(win, g.to(tl.float64), best_g_v)
                    best_i_v = tl.where(win, offs.to(tl.int64), best_i_v)
            if search:
                top_bits = (_key(x) >> (32 - BIN_BITS)).to(tl.int32)
                hist += tl.histogram(top_bits, NB, mask=msk)
            m_v = m_new
        m = tl.max(m_v, 0)
        arg = tl.min(tl.where(m_v == m, arg_v, KEY_NONE), 0)
        z = tl.sum(z_v * tl.where(m_v == NEG_INF, 0.0, tl.exp((m_v - m) * inv_t))
                   .to(tl.float64), 0)
        keys = _race_key(best_x_v, m, inv_t64, best_g_v)
        best_key = tl.max(keys, 0)
        best_idx = tl.min(tl.where(keys == best_key, best_i_v, KEY_NONE), 0)
        best_x = tl.sum(tl.where((keys == best_key) & (best_i_v == best_idx), best_x_v, 0.0), 0)
        passes += 1
        again = (mode == 0) & ~greedy & ((m == POS_INF) | (m == NEG_INF))
        mode = tl.where(again, tl.where(m == POS_INF, 1, 2), mode)

    # ---- threshold search.  Window A brackets the top-k threshold key, window B the
    # top-p one; each is [lo, hi] in keys with 2^BIN_BITS bins of width 2^shift, and is
    # "done" once its threshold is exact.  Masses are fixed point (units of 2^-40).
    key_max = _key(m)
    a_done = ~k_on
    a_lo = tl.full([], 0, tl.int64)
    a_hi = tl.full([], 0xFFFFFFFF, tl.int64)
    a_shift = tl.full([], 32 - BIN_BITS, tl.int64)
    a_above = tl.full([], 0, tl.int64)              # tokens with keys above window A
    theta_k = tl.full([], 0, tl.int64)
    b_done = ~p_on
    b_lo = tl.full([], 0, tl.int64)
    b_hi = tl.full([], 0xFFFFFFFF, tl.int64)
    b_shift = tl.full([], 32 - BIN_BITS, tl.int64)
    theta_p = tl.full([], 0, tl.int64)
    hist_a = hist
    hist_b = hist
    z_lo = z * FIX * (1.0 - BOUND_SLACK) - V        # pass 1's normaliser, as bounds
    z_hi = z * FIX * (1.0 + BOUND_SLACK) + V
    z_fix = z_lo                                    # exact once a later pass streamed it
    mass_above_a = tl.full([], 0.0, tl.float64)     # streamed: keys above window A
    mass_above_b = tl.full([], 0.0, tl.float64)     # streamed: keys above window B
    mass_ge_k = tl.full([], 0.0, tl.float64)        # streamed: keys >= theta_k
    kept_mass = tl.full([], 0.0, tl.float64)        # streamed: the surely-kept tokens
    best_key = tl.where(plain, best_key, NEG_INF)   # the race so far (pass 1's, if any)
    n_gathered = tl.full([], 0, tl.int32)
    exact = no                                      # masses above come from a full pass
    classify = search
    kind = tl.where(search, REFINE, tl.where(m_on, RACE, DONE))

    while (kind != DONE) & (passes < MAX_PASSES):
        if classify:
            # -- K: bounds on the top-p normaliser.  Z (joint order, or no top-k): bounds
            # after pass 1, exact after any later pass.  The top-k set's mass
            # (top_k_first): exact once theta_k is exact and a pass streamed it.
            k_lo = tl.where(exact, z_fix, z_lo)
            k_hi = tl.where(exact, z_fix, z_hi)
            if HAS_TOP_K and not JOINT:
                if k_on & a_done:
                    k_lo = mass_ge_k
                    k_hi = mass_ge_k
            # -- window A (top-k): the bin of the k-th largest key, from exact counts.
            n_a = tl.full([], 0, tl.int64)
            if ~a_done:
                bk, above_bk, cnt_bk, bk_lo, bk_hi = _top_k_window(
                    hist_a, a_lo, a_hi, a_shift, a_above, k, NB)
                if HAS_TOP_P and not JOINT:
                    k_lo, k_hi = _top_k_mass_bounds(hist_a, a_lo, a_hi, a_shift, bk,
                                                    k - above_bk, mass_above_a, key_max, m,
                                                    inv_t, NB)
                # exact when bk is a single key, or when all of bk is kept
                a_done = (a_shift == 0) | (above_bk + cnt_bk == k)
                theta_k = bk_lo
                a_above = above_bk
                a_lo = bk_lo
                a_hi = bk_hi
                a_shift = tl.maximum(a_shift - BIN_BITS, 0)
                n_a = tl.where(a_done, 0, cnt_bk)
            # -- window B (top-p): from each bin's mass, exact after a refine pass (its
            # atomics), bounded from counts and bin edges after pass 1.
            n_b = tl.full([], 0, tl.int64)
            if ~b_done:
                lo_key, hi_key = _bin_edges(b_lo, b_hi, b_shift, NB)
                if exact:
                    tl.debug_barrier()
                    lo_m = tl.load(binmass_row + bins, cache_modifier=".cg").to(tl.float64)
                    hi_m = lo_m
                else:
                    lo_m, hi_m, _ = _edge_bounds(hist_b, lo_key, hi_key, key_max, m, inv_t)
                b_done, theta_p, new_lo, new_hi, n_b = _top_p_window(
                    hist_b, lo_m, hi_m, b_lo, b_hi, b_shift, mass_above_b, p * k_lo,
                    p * k_hi, a_lo, log_mp, key_max, m, inv_t, NB)
                b_lo = new_lo
                b_hi = new_hi
                b_shift = _next_shift(b_lo, b_hi, BIN_BITS)
                n_b = tl.where(b_done, 0, n_b)
            kind = tl.where(a_done & b_done, RACE, tl.where(n_a + n_b <= CAP, GATHER, REFINE))
            classify = no

        # ---- one streaming pass: exact masses; the race over the surely-kept tokens;
        # finer histograms of the windows (refine) or their tokens to scratch (gather).
        refine = kind == REFINE
        gather = kind == GATHER
        if refine & ~b_done:
            tl.store(binmass_row + bins, tl.zeros([NB], tl.int64))
            tl.debug_barrier()
        # exact fixed-point sums, per lane until the end of the pass
        z_acc = tl.zeros([BLOCK], tl.int64)
        above_a_acc = tl.zeros([BLOCK], tl.int64)
        above_b_acc = tl.zeros([BLOCK], tl.int64)
        ge_k_acc = tl.zeros([BLOCK], tl.int64)
        kept_acc = tl.zeros([BLOCK], tl.int64)
        race_v = tl.full([BLOCK], NEG_INF, tl.float64)
        race_i_v = tl.zeros([BLOCK], tl.int64)
        race_x_v = tl.full([BLOCK], NEG_INF, tl.float32)
        hist_a = tl.zeros([NB], tl.int32)
        hist_b = tl.zeros([NB], tl.int32)
        n_gathered = tl.full([], 0, tl.int32)
        # Vector tests take scalar key bounds only: a done window is empty (lo > hi), and
        # its tokens are surely kept from its threshold up; an open one from above it.
        a_win_lo = tl.where(a_done, 1, a_lo)
        a_win_hi = tl.where(a_done, 0, a_hi)
        b_win_lo = tl.where(b_done, 1, b_lo)
        b_win_hi = tl.where(b_done, 0, b_hi)
        a_sure = tl.where(a_done, theta_k, a_hi + 1)
        b_sure = tl.where(b_done, theta_p, b_hi + 1)
        above_a_from = tl.where(a_done, KEY_NONE, a_hi + 1)
        above_b_from = tl.where(b_done, KEY_NONE, b_hi + 1)
        ge_k_from = tl.where(a_done, theta_k, KEY_NONE)
        for start in range(0, V, BLOCK):  # stream: second
            offs, msk, x, key, d = _tile(row_ptr, start, lanes, V, mode, m, inv_t)
            fx = _fixed(d)                          # 0 for -inf and for lanes past V
            z_acc += fx
            in_a = msk & (key >= a_win_lo) & (key <= a_win_hi)
            in_b = msk & (key >= b_win_lo) & (key <= b_win_hi)
            above_a_acc += tl.where(key >= above_a_from, fx, 0)
            above_b_acc += tl.where(key >= above_b_from, fx, 0)
            ge_k_acc += tl.where(key >= ge_k_from, fx, 0)
            sure = msk & (d >= log_mp) & (key >= a_sure) & (key >= b_sure)
            kept_acc += tl.where(sure, fx, 0)
            if not PROBS:
                if ~refine:
                    g = _gumbel(seed, offset, offs.to(tl.int64))
                    rk = tl.where(sure, _race_key(x, m, inv_t64, g), NEG_INF)
                    win = rk > race_v
                    race_v = tl.where(win, rk, race_v)
                    race_i_v = tl.where(win, offs.to(tl.int64), race_i_v)
                    race_x_v = tl.where(win, x, race_x_v)
            if refine:
                if ~a_done:
                    ba = tl.where(in_a, (key - a_lo) >> a_shift, 0).to(tl.int32)
                    hist_a += tl.histogram(ba, NB, mask=in_a)
                if ~b_done:
                    bb = tl.where(in_b, (key - b_lo) >> b_shift, 0).to(tl.int32)
                    hist_b += tl.histogram(bb, NB, mask=in_b)
                    tl.atomic_add(binmass_row + bb, fx, mask=in_b)
            if gather:
                take = in_a | in_b
                pos = n_gathered + tl.cumsum(take.to(tl.int32), 0) - 1
                ok = take & (pos < CAP)             # the counts guarantee pos < CAP
                tl.store(scratch_row + pos, key, mask=ok)
                tl.store(scratch_row + CAP + pos, offs.to(tl.int64), mask=ok)
                n_gathered += tl.sum(take.to(tl.int32), 0)
        passes += 1
        z_fix = tl.sum(z_acc, 0).to(tl.float64)
        mass_above_a = tl.sum(above_a_acc, 0).to(tl.float64)
        mass_above_b = tl.sum(above_b_acc, 0).to(tl.float64)
        mass_ge_k = tl.sum(ge_k_acc, 0).to(tl.float64)
        kept_mass = tl.sum(kept_acc, 0).to(tl.float64)
        exact = ~no
        if not PROBS:
            if ~refine:
                best_key = tl.max(race_v, 0)
                best_idx = tl.min(tl.where(race_v == best_key, race_i_v, KEY_NONE), 0)
                won = (race_v == best_key) & (race_i_v == best_idx)
                best_x = tl.sum(tl.where(won, race_x_v, 0.0), 0)

        if gather:
            # ---- exact, sort-free search over the gathered tokens (at most CAP): for each
            # one, the count of window-A tokens and the mass of window-B tokens with a
            # strictly larger key, summed over the others CHUNK at a time.  Tied tokens get
            # equal sums, so ties fall on the same side of both thresholds.
            tl.debug_barrier()
            valid = slots < n_gathered
            keys_u = tl.load(scratch_row + slots, mask=valid, other=-1)
            idx_u = tl.load(scratch_row + CAP + slots, mask=valid, other=0)
            in_a_u = valid & (keys_u >= a_win_lo) & (keys_u <= a_win_hi)
            in_b_u = valid & (keys_u >= b_win_lo) & (keys_u <= b_win_hi)
            larger_a = tl.zeros([CAP], tl.int64)
            larger_b_mass = tl.zeros([CAP], tl.int64)
            for j0 in range(0, n_gathered, CHUNK):
                cj = j0 + tl.arange(0, CHUNK)
                vj = cj < n_gathered
                kj = tl.load(scratch_row + cj, mask=vj, other=-1)
                fj = tl.where(vj, _fixed(_scaled(_unkey(tl.where(vj, kj, KEY_NEG_INF)), m,
                                                 inv_t)), 0)
                aj = vj & (kj >= a_win_lo) & (kj <= a_win_hi)
                bj = vj & (kj >= b_win_lo) & (kj <= b_win_hi)
                larger = kj[None, :] > keys_u[:, None]                  # [CAP, CHUNK]
                larger_a += tl.sum(tl.where(larger & aj[None, :], 1, 0), 1).to(tl.int64)
                larger_b_mass += tl.sum(tl.where(larger & bj[None, :], fj[None, :], 0), 1)
            if ~a_done:
                # in the top-k set iff fewer than k tokens are strictly larger
                in_top_k = in_a_u & (a_above + larger_a < k)
                theta_k = tl.min(tl.where(in_top_k, keys_u, KEY_NONE), 0)
                f_a = tl.where(in_top_k, _fixed(_scaled(_unkey(tl.where(in_a_u, keys_u,
                                                                        KEY_NEG_INF)),
                                                        m, inv_t)), 0)
                mass_ge_k = mass_above_a + tl.sum(f_a, 0).to(tl.float64)
                a_done = ~no
            if ~b_done:
                # kept by top-p iff the mass strictly above is below p * K
                k_norm = z_fix
                if HAS_TOP_K and not JOINT:
                    k_norm = tl.where(k_on, mass_ge_k, z_fix)
                strictly_above = mass_above_b + larger_b_mass.to(tl.float64)
                keep_b = in_b_u & (strictly_above < p * k_norm)
                theta_p = tl.min(tl.where(keep_b, keys_u, b_hi + 1), 0)
                b_done = ~no
            x_u = _unkey(tl.where(valid, keys_u, KEY_NEG_INF))
            d_u = _scaled(x_u, m, inv_t)
            kept_u = valid & (keys_u >= theta_k) & (keys_u >= theta_p) \
                & (d_u >= log_mp)
            kept_mass += tl.sum(tl.where(kept_u, _fixed(d_u), 0), 0).to(tl.float64)
            if not PROBS:
                g_u = _gumbel(seed, offset, idx_u)
                rk_u = tl.where(kept_u, _race_key(x_u, m, inv_t64, g_u), NEG_INF)
                t_best = tl.max(rk_u, 0)
                sel = slots == tl.argmax(rk_u, 0)
                t_idx = tl.sum(tl.where(sel, idx_u, 0), 0)
                win = (t_best > best_key) | ((t_best == best_key) & (t_idx < best_idx))
                best_key = tl.where(win, t_best, best_key)
                best_idx = tl.where(win, t_idx, best_idx)
                best_x = tl.where(win, tl.sum(tl.where(sel, x_u, 0.0), 0), best_x)
        classify = kind == REFINE
        kind = tl.where(kind == REFINE, kind, DONE)

    # ---- results.  The kept mass is pass 1's normaliser for a row with no filter.
    kept_nat = tl.where(plain, z, kept_mass / FIX)
    if PROBS:
        for start in range(0, V, BLOCK):  # stream: write
            offs, msk, x, key, d = _tile(row_ptr, start, lanes, V, mode, m, inv_t)
            keep = (d >= log_mp) & (key >= theta_k) & (key >= theta_p)
            prob = tl.where(keep, (tl.exp(d).to(tl.float64) / kept_nat).to(tl.float32), 0.0)
            prob = tl.where(greedy, tl.where(offs == arg, 1.0, 0.0), prob)
            tl.store(probs_ptr + row * V + offs, prob, mask=msk)
        passes += 1
    else:
        tl.store(tokens_ptr + row, tl.where(greedy, arg, best_idx))
        if LOGPROBS:
            d_tok = _scaled(best_x, m, inv_t).to(tl.float64)
            logp = tl.where(greedy, 0.0, d_tok - tl.log(kept_nat))
            tl.store(logprobs_ptr + row, logp.to(tl.float32))
    if STATS:
        tl.store(stats_ptr + row, passes)


# ----------------------------------------------------------------------------- launcher

DEFAULT_BIN_BITS = 11
DEFAULT_CAP = 1024


def _sizes_for(vocab: int):
    """(tile width, histogram bits, scratch capacity) for a vocabulary of V tokens.

    The tile is the whole row for small V, else 4096 lanes (16 KB of float32).  Small
    vocabularies get a histogram and a scratch no larger than the row: with CAP >= V every
    bracket fits, so no refine pass runs, and no program carries 2^11-bin vectors for a
    9-token row.  The tokens never depend on these sizes.
    """
    v2 = triton.next_power_of_2(vocab)
    bits = min(DEFAULT_BIN_BITS, max(4, v2.bit_length() - 1))
    return min(4096, v2), bits, min(DEFAULT_CAP, v2)


def _scalar_or_tensor(v, dtype, dummy):
    """(pointer, value, is_tensor) for a parameter given as a number or a [B] tensor.

    Triton passes a Python float as fp32, so a float64 scalar goes as its bits (int64),
    which _param reinterprets: top_p = 0.9 would otherwise act as 0.8999999762."""
    if isinstance(v, torch.Tensor):
        return v.to(dtype), 0, True
    if dtype == torch.float64:
        return dummy, struct.unpack("<q", struct.pack("<d", v))[0], False
    return dummy, v, False


def max_passes(bin_bits: int) -> int:
    """The kernel's cap on full-row reads of one row, 4 + 3 * ceil(32 / bin_bits): far
    above anything measured (docs/design.md, "Worst case"); the tests assert no row
    reaches it."""
    return 4 + 3 * -(-32 // bin_bits)


@functools.lru_cache(maxsize=None)
def _programs_for(device: torch.device) -> int:
    """How many programs walk the rows: four per SM on a GPU (more than can be resident:
    the grid never idles an SM), 32 in the interpreter (so tests run the row loop)."""
    if device.type == "cuda":
        return 4 * torch.cuda.get_device_properties(device).multi_processor_count
    return 32


def kernel_args(a, probs_mode: bool, *, return_logprobs: bool = True, block: int = None,
                bin_bits: int = None, cap: int = None, programs: int = None,
                stats: bool = False):
    """The launch of a checked call (see fused_sampler._args.Call), without launching it.

    Returns (grid, args, constexprs and launch options, outputs) where outputs are
    (tokens int64 [B], logprobs float32 [B], probs float32 [B, V], passes int32 [B]), the
    unrequested ones a 1-element dummy.  ``block``, ``bin_bits`` and ``cap`` override the
    tile width, the histogram resolution and the scratch capacity (tests shrink them so
    that every multi-tile, refine and gather path runs on small inputs); ``programs`` the
    number of programs sharing the rows (each owns one scratch); ``stats`` counts the
    full-row reads each row made.
    """
    x = a.logits
    B, V = x.shape
    dev = x.device
    sizes = _sizes_for(V)
    block, bin_bits, cap = block or sizes[0], bin_bits or sizes[1], cap or sizes[2]
    has_k = a.top_k is not None
    has_p = a.top_p is not None
    has_m = a.min_p is not None
    dummy = torch.empty(1, dtype=torch.int64, device=dev)
    temp_ptr, temp_val, temp_t = _scalar_or_tensor(a.temperature, torch.float32, dummy)
    k_ptr, k_val, k_t = _scalar_or_tensor(a.top_k if has_k else 0, torch.int64, dummy)
    p_ptr, p_val, p_t = _scalar_or_tensor(a.top_p if has_p else 1.0, torch.float64, dummy)
    mp_ptr, mp_val, mp_t = _scalar_or_tensor(a.min_p if has_m else 0.0, torch.float32, dummy)
    seed_ptr, seed_val, seed_t = _scalar_or_tensor(a.seed, torch.int64, dummy)
    off_ptr, off_val, off_t = _scalar_or_tensor(a.offset, torch.int64, dummy)

    tokens = torch.empty(B, dtype=torch.int64, device=dev)
    logprobs = torch.empty(B, dtype=torch.float32, device=dev) if return_logprobs else dummy
    probs = torch.empty(B, V, dtype=torch.float32, device=dev) if probs_mode else dummy
    grid = min(B, programs or _programs_for(dev))
    scratch = torch.empty(grid, 2 * cap, dtype=torch.int64, device=dev) if has_k or has_p \
        else dummy
    binmass = torch.empty(grid, 1 << bin_bits, dtype=torch.int64, device=dev) if has_p \
        else dummy
    passes = torch.empty(B, dtype=torch.int32, device=dev) if stats else dummy
    args = (x, x.stride(0), V, B,
            temp_ptr, temp_val, k_ptr, k_val, p_ptr, p_val, mp_ptr, mp_val,
            seed_ptr, seed_val, off_ptr, off_val,
            tokens, logprobs, probs, scratch, binmass, passes)
    consts = dict(
        TEMP_T=temp_t, TOPK_T=k_t, TOPP_T=p_t, MINP_T=mp_t, SEED_T=seed_t, OFFSET_T=off_t,
        HAS_TOP_K=has_k, HAS_TOP_P=has_p, HAS_MIN_P=has_m, JOINT=a.order == "joint",
        PROBS=probs_mode, LOGPROBS=return_logprobs, STATS=stats,
        BLOCK=block, BIN_BITS=bin_bits, CAP=cap, CHUNK=min(16, cap),
        MAX_PASSES=max_passes(bin_bits))
    # No FMA contraction: the kernel's float32 / float64 arithmetic must round as the
    # reference's separate operations do (Triton 3.9 still fuses by default).
    options = dict(num_warps=8 if block >= 2048 else 4, enable_fp_fusion=False)
    return (grid,), args, {**consts, **options}, (tokens, logprobs, probs, passes)


def launch(a, probs_mode: bool, *, return_logprobs: bool = True, stats: bool = False,
           **sizes):
    """Run the kernel on a checked call (arguments as in :func:`kernel_args`).

    Returns (tokens int64 [B], logprobs float32 [B] or None, probs float32 [B, V] or None,
    passes int32 [B] or None).
    """
    grid, args, kwargs, (tokens, logprobs, probs, passes) = kernel_args(
        a, probs_mode, return_logprobs=return_logprobs, stats=stats, **sizes)
    _sample_kernel[grid](*args, **kwargs)
    return (tokens, logprobs if return_logprobs else None, probs if probs_mode else None,
            passes if stats else None)


def sample(a):
    """(tokens, logprobs) for a checked call."""
    tokens, logprobs, _, _ = launch(a, probs_mode=False)
    return tokens, logprobs


def filtered_probs(a):
    """float32 [B, V] filtered probabilities for a checked call."""
    return launch(a, probs_mode=True, return_logprobs=False)[2]
