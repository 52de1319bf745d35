"""The fused sampler: one Triton kernel from logits to token ids.

A fixed grid of programs (a few per SM) walks the rows, one row at a time per program,
each program with its own small scratch: memory is per program, not per row.  A row
takes one of three paths, each a few streaming passes over the row in BLOCK-wide tiles:

  greedy   (T = 0)  one pass: the first index of the max.
  plain    (no filter)  one pass: the *race*.  Each token's Gumbel key is bounded from
           above by a cheap float32 expression of one Philox word (one Philox call serves
           four tokens; MUFU logs); each lane keeps its largest bound.  Afterwards the
           exact keys of the few lanes with the largest bounds are computed, and the
           winner is proved: every other lane's bound, plus a margin that covers every
           rounding and approximation error, lies below the winner's exact key.  When
           that proof fails (about never), an exact pass decides.
  filtered (top-k / top-p / min-p)
           first    max, normaliser, count histogram of the logits' order keys.
           search   the counts pin the top-k threshold to a bin; count and mass bounds
                    bracket the top-p one; min-p is an exact key threshold (bisection).
                    A top-k of at most LANE_K needs neither histogram nor search: the
                    k-th largest of pass 1's group maxima bounds it (_lane_row).
           refine   when a bracket holds more tokens than the scratch: finer histograms
                    of it, or exact bin masses (the next search narrows it).  Top-p alone
                    takes the exact masses of pass 1's bins (bin masses) first.
           collect  one pass marks every token that may be kept or whose mass matters
                    (a bit per lane per tile, no scan), with the exact normaliser when
                    top-p needs it; the marked tokens go to the scratch, where the
                    thresholds are settled exactly (finer histograms of the scratch) and
                    the kept tokens are raced.  Rows with more candidates than the
                    scratch holds collect only the brackets and race in one more pass.
  write    filtered_probs mode: write the [V] distribution.

Bytes: the floor is one read of the logits.  Plain and greedy: 1 read.  Filtered: 2 (first,
collect), plus one per refine; see docs/design.md for the counts measured and why each path
is exact, and scripts/sass_report.py for the instructions each streaming loop costs.

All masses are exact fixed-point sums (int64, units of 2^-40 of the max token's weight) of
float32 exp((x - max) / T), so they do not depend on the tile order, the block size or the
number of warps.
"""
import functools
import os
import struct

import torch
import triton
import triton.language as tl

INTERPRETED = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")

if not INTERPRETED:
    from triton.language.extra.cuda import libdevice

# Module constants the kernel reads are tl.constexpr: a compiled @jit function may read
# no other globals (the interpreter does not check this).
IN_INTERPRETER = tl.constexpr(INTERPRETED)
FIX = tl.constexpr(float(2 ** 40))      # fixed-point mass unit: 2^-40 of the max's weight
# Relative and absolute slack on mass bounds taken from bin edges: covers float32 exp's
# few-ulp error and the fixed-point truncation, so a bracket never misses the threshold.
BOUND_SLACK = tl.constexpr(1e-5)
NEG_INF = tl.constexpr(float("-inf"))
POS_INF = tl.constexpr(float("inf"))
FLT_MAX = tl.constexpr(3.4028234663852886e38)
LOG2E = tl.constexpr(1.4426950408889634)
KEY_NEG_INF = tl.constexpr(0x007FFFFF)   # _key(-inf): no sanitised logit has a smaller key
KEY_TOP = tl.constexpr(0xFFFFFFFF)       # above every key: "no token" as a lower bound
KEY_NONE = tl.constexpr(1 << 33)         # above every key, in the int64 search
NO_TOKEN = tl.constexpr(2 ** 31 - 1)     # "no index" in a min-reduction
RACE_LANES = tl.constexpr(4)             # lanes whose tokens get exact keys in a race
SMALL_TOP_P = tl.constexpr(64)           # top-p by pairs up to this many candidates

# Philox-4x32-10 (Salmon et al. 2011), the stream of triton.language.philox.
PHILOX_ROUND_A = tl.constexpr(0xD2511F53)
PHILOX_ROUND_B = tl.constexpr(0xCD9E8D57)
PHILOX_KEY_A = tl.constexpr(0x9E3779B9)
PHILOX_KEY_B = tl.constexpr(0xBB67AE85)
# a * ROUND as one mul.wide.u32 (LLVM splits umulhi and mul into two multiplies)
MUL_WIDE_A = tl.constexpr("{ .reg .b64 t; mul.wide.u32 t, $2, 0xD2511F53; mov.b64 {$0, $1}, t; }")
MUL_WIDE_B = tl.constexpr("{ .reg .b64 t; mul.wide.u32 t, $2, 0xCD9E8D57; mov.b64 {$0, $1}, t; }")

# The race's cheap bound (see _cheap_key), in units of 2^-32 for E = -log U.
LN2 = tl.constexpr(0.6931471805599453)
LN2_LO_2_32 = tl.constexpr(0.6931471805599453 * (1 - 2.0 ** -21) * 2.0 ** 32)
EPS_E_2_32 = tl.constexpr(2.0 ** -21 * 2.0 ** 32)
BIAS_2_32 = tl.constexpr(32 * 0.6931471805599453)       # -log(2^-32)
# A lane's bound c covers every exact key of the lane up to
# MARGIN_REL * (|c| + |anchor / T| + MARGIN_ABS): docs/design.md, "The race".
C2_FLOOR = tl.constexpr(2.0 ** -126)     # the smallest normal float32: see _c2
MARGIN_REL = tl.constexpr(2.0 ** -20)
MARGIN_ABS = tl.constexpr(64.0)
ANCHOR_MAX = tl.constexpr(1e38)          # |anchor / T| the cheap race keys can bound: _settle


# ----------------------------------------------------------------------------- helpers

def _device(fn):
    """A device function: @triton.jit when compiled.  Under TRITON_INTERPRET it stays a
    plain Python function running the same body, because the interpreter re-patches
    triton.language on every call of a jit'd device function (about 1.5 ms), which made
    the interpreted kernel (CI's tests) some 20 times slower."""
    return fn if INTERPRETED else triton.jit(fn)


@_device
def _here(ptr):
    """``ptr`` itself, opaque to the compiler: a vector of addresses built from it where it
    is used cannot be hoisted to the kernel's entry (LLVM's loop-invariant code motion
    ignores register pressure; a hoisted [NB] vector of 64-bit addresses holds 8
    registers per thread for the whole kernel).  A no-op in the interpreter."""
    if IN_INTERPRETER:
        return ptr
    else:
        return tl.inline_asm_elementwise("mov.b64 $0, $1;", "=l,l", [ptr], dtype=ptr.dtype,
                                         is_pure=False, pack=1)


@_device
def _sanitize(raw):
    """float32 logits with NaN -> -inf and -0 -> +0 (equal values, equal order keys)."""
    return tl.maximum(raw.to(tl.float32), NEG_INF) + 0.0


@_device
def _key(x):
    """Order-preserving uint32 key of a sanitised float32: flip the sign bit of positives,
    every bit of negatives."""
    b = x.to(tl.uint32, bitcast=True)
    return b ^ ((x.to(tl.int32, bitcast=True) >> 31).to(tl.uint32, bitcast=True) | 0x80000000)


@_device
def _unkey(k):
    """Inverse of _key, for an int64 or uint32 key in [0, 2^32)."""
    u = k.to(tl.uint32)
    b = tl.where((u >> 31) != 0, u & 0x7FFFFFFF, ~u)
    return b.to(tl.float32, bitcast=True)


@_device
def _u32(key64):
    """An int64 key bound, clamped into uint32 for the streaming loops' comparisons."""
    k = tl.cast(key64, tl.int64)
    return tl.minimum(tl.maximum(k, 0), KEY_TOP).to(tl.uint32)


@_device
def _scaled(x, m, inv_t):
    """d = (x - max) * (1/T), float32, -inf for -inf logits: log P up to the normaliser."""
    return tl.where(x == NEG_INF, NEG_INF, (x - m) * inv_t)


@_device
def _exp2_fast(x):
    """2^x by the special-function unit, subnormal results flushed to zero (MUFU.EX2,
    ex2.approx.ftz: 2 ulp; tl.exp2 adds a range fix-up of three instructions per
    element); numpy's exp2 in the interpreter."""
    if IN_INTERPRETER:
        return tl.exp2(x)
    else:
        return tl.inline_asm_elementwise("ex2.approx.ftz.f32 $0, $1;", "=f,f", [x],
                                         dtype=tl.float32, is_pure=True, pack=1)


@_device
def _c2(inv_t):
    """log2(e) / T, the scale of every weight's exponent, floored at the smallest normal
    float32 (C2_FLOOR).  At T = inf, (x - max) * 0 would be NaN for a -inf logit, while
    (x - max) * 2^-126 is -inf for it and, for finite logits up to 2e30 apart (the
    contract's +-1e30), at most 2.4e-8: weights of 1 to float32 rounding, uniform over the
    finite tokens as the contract says.  (The floor of 1e-30 used before weighed logits
    1e30 apart unequally: 0.44 for a 0.25 share.)"""
    return tl.maximum(inv_t * LOG2E, C2_FLOOR)


@_device
def _term(x, m, inv_t):
    """Each token's exact mass: float32 2^((x - m) log2(e) / T) in fixed point, int64 units
    of 2^-40, truncated.  A function of the token alone, so sums of it are exact and
    order-free; it is exp((x - m) / T) within a few ulp, inside the contract's top-p band
    (weights below 2^-126 flush to zero, far below the fixed point's unit)."""
    c2 = _c2(inv_t)
    return (_exp2_fast((x - m) * c2) * FIX).to(tl.int64)


@_device
def _log2_fast(x):
    """log2 by the special-function unit (MUFU.LG2, lg2.approx: 2^-22 absolute error on
    (0.5, 2), 2 ulp elsewhere); numpy's log2 in the interpreter."""
    if IN_INTERPRETER:
        return tl.log2(x)
    else:
        return libdevice.fast_log2f(x)


@_device
def _mul_hi_lo(a, B: tl.constexpr, MUL_WIDE: tl.constexpr):
    """(high, low) 32-bit halves of the uint32 product a * B."""
    if IN_INTERPRETER:
        return tl.umulhi(a, tl.full([], B, tl.uint32)), a * tl.full([], B, tl.uint32)
    else:
        lo, hi = tl.inline_asm_elementwise(MUL_WIDE, "=r,=r,r", [a],
                                           dtype=(tl.uint32, tl.uint32), is_pure=True, pack=1)
        return hi, lo


@_device
def _offset_halves(offset):
    """The int64 offset as the two uint32 words of the Philox counter (low, high)."""
    return (offset & 0xFFFFFFFF).to(tl.uint32), ((offset >> 32) & 0xFFFFFFFF).to(tl.uint32)


@_device
def _philox(seed, c0, c1, c2, c3):
    """Philox-4x32-10 of counter (c0..c3) under the int64 key ``seed``."""
    k0 = (seed & 0xFFFFFFFF).to(tl.uint32)
    k1 = ((seed >> 32) & 0xFFFFFFFF).to(tl.uint32)
    key_a = tl.full([], PHILOX_KEY_A, tl.uint32)
    key_b = tl.full([], PHILOX_KEY_B, tl.uint32)
    for _ in tl.static_range(10):
        hi_b, lo_b = _mul_hi_lo(c2, PHILOX_ROUND_B, MUL_WIDE_B)
        hi_a, lo_a = _mul_hi_lo(c0, PHILOX_ROUND_A, MUL_WIDE_A)
        c0 = hi_b ^ c1 ^ k0
        c2 = hi_a ^ c3 ^ k1
        c1 = lo_b
        c3 = lo_a
        k0 = k0 + key_a
        k1 = k1 + key_b
    return c0, c1, c2, c3


@_device
def _tile_words(seed, off_lo, off_hi, start, stream, BLOCK: tl.constexpr):
    """The Philox word of each of the BLOCK tokens from ``start`` (a multiple of 4) in
    ``stream``: token i takes word i % 4 of the call with counter (i // 4, stream, offset)
    (reference.noise_words).  One call per four tokens."""
    q = (start // 4 + tl.arange(0, BLOCK // 4)).to(tl.uint32)
    zero = tl.zeros([BLOCK // 4], tl.uint32)
    r0, r1, r2, r3 = _philox(seed, q, zero + stream, zero + off_lo, zero + off_hi)
    return tl.join(tl.join(r0, r2), tl.join(r1, r3)).reshape([BLOCK])


@_device
def _token_words(seed, off_lo, off_hi, idx, stream):
    """The Philox word of tokens at arbitrary indices ``idx`` (int32) in ``stream``."""
    q = (idx >> 2).to(tl.uint32)
    zero = q * 0
    r0, r1, r2, r3 = _philox(seed, q, zero + stream, zero + off_lo, zero + off_hi)
    j = idx & 3
    return tl.where(j == 0, r0, tl.where(j == 1, r1, tl.where(j == 2, r2, r3)))


@_device
def _gumbel(w, e):
    """Exact Gumbel noise (float32) from a token's main and extension words: the
    reference's gumbel_from_words, operation for operation."""
    n = (w.to(tl.uint64) << 21) | (e.to(tl.uint64) >> 11)
    low = n < (1 << 52)
    v = ((n.to(tl.float64) + 0.5) * (2.0 ** -53)).to(tl.float32)           # 1 - U
    u = (((1 << 53) - n).to(tl.float64) - 0.5) * (2.0 ** -53)             # U
    v = tl.where(low, v, 0.25)
    u = tl.where(low, 0.5, u.to(tl.float32))
    one_minus_v = 1.0 - v
    log1p_neg_v = tl.where(one_minus_v == 1.0, -v,
                           tl.math.div_rn(tl.log(one_minus_v) * (-v), one_minus_v - 1.0))
    return -tl.log(tl.where(low, -log1p_neg_v, -tl.log(u)))


@_device
def _exact_key(x, anchor, inv_t64, g):
    """float64 race key (x - anchor) * (1/T) + G, -inf for -inf logits.  Its argmax over a
    kept set is a draw from that set (Gumbel-max); any anchor gives the same argmax."""
    return tl.where(x == NEG_INF, NEG_INF,
                    (x.to(tl.float64) - anchor.to(tl.float64)) * inv_t64 + g.to(tl.float64))


@_device
def _cheap_key(x, w, inv_t, bias):
    """A float32 upper bound, up to the race margin, of each token's race key
    (x - anchor) / T + G, from the token's main word ``w`` alone.

    G = -log(E), E = -log(U), and w fixes U's top 32 bits, so G <= -log(E_min(w)).  E_min
    is bounded below twice, in units of 2^-32: by 1 - U itself (E >= 1 - U, tight where U
    nears 1, the likeliest winners) and by the MUFU log of U's upper end (tight elsewhere;
    its error is absolute, hence the slack).  ``bias`` is 32 ln 2 - anchor / T.
    """
    f = w.to(tl.float32)                                  # (1 - U) * 2^32, rounded
    u = tl.fma(f, -2.0 ** -32, 1.0 + 2.0 ** -23)          # >= the top of U's interval
    e_log = tl.fma(_log2_fast(u), -LN2_LO_2_32, -EPS_E_2_32)
    return tl.fma(_log2_fast(tl.maximum(f, e_log)), -LN2, tl.fma(x, inv_t, bias))


@_device
def _margin(c, anchor_scaled):
    """How far above a lane's cheap bound ``c`` an exact key of the lane may lie."""
    return MARGIN_REL * (tl.abs(c).to(tl.float64) + anchor_scaled + MARGIN_ABS)


@_device
def _bin_lo(span_lo, shift, b):
    """Lowest key of bin b (bins of width 2^shift from span_lo)."""
    return span_lo + (b.to(tl.int64) << shift)


@_device
def _bin_hi(span_lo, span_hi, shift, b):
    """Highest key of bin b, clamped to the span."""
    return tl.minimum(span_lo + ((b.to(tl.int64) + 1) << shift) - 1, span_hi)


@_device
def _clamped_x(key, key_max):
    """The float32 of a bin-edge key, clamped into [-inf, row max]."""
    return _unkey(tl.minimum(tl.maximum(key, KEY_NEG_INF), key_max))


@_device
def _edge_bounds(cnt, span_lo, span_hi, shift, key_max, m, inv_t, NB: tl.constexpr):
    """Fixed-point bounds on each bin's total mass from its count and its edges.

    Returns (lower, upper, lower bound of one token's mass).  The slack covers float32
    exp's few-ulp error and the truncation of each fixed-point term.
    """
    bins = tl.arange(0, NB)
    w_lo = tl.exp(_scaled(_clamped_x(_bin_lo(span_lo, shift, bins), key_max), m, inv_t))
    w_hi = tl.exp(_scaled(_clamped_x(_bin_hi(span_lo, span_hi, shift, bins), key_max), m,
                          inv_t))
    one_lo = tl.maximum(w_lo.to(tl.float64) * (FIX * (1.0 - BOUND_SLACK)) - 1.0, 0.0)
    c = cnt.to(tl.float64)
    return c * one_lo, c * (w_hi.to(tl.float64) * (FIX * (1.0 + BOUND_SLACK)) + 1.0), one_lo


@_device
def _sum_bounds(total, V, BLOCK: tl.constexpr):
    """Fixed-point bounds on an exact mass from its float32 sum ``total`` (units of the
    max's weight): each term exp2((x - m) * c) by MUFU (2^-22 relative), its exponent y
    rounded twice (c = log2(e) / T and the product: 3 * 2^-24 |y| relative, ln 2 of that
    in the term; terms with |y| > 100 are below 2^-100 and count in the absolute slack);
    summed in float32 per lane or group over the tiles and combined in float64.  The
    relative slack, 2e-5 plus (tiles + 32) * 2^-22, covers these; the absolute slack V
    units, the fixed point's truncation and the terms below 2^-100."""
    rel = (tl.cdiv(V, BLOCK) + 32).to(tl.float64) * (2.0 ** -22) + 2 * BOUND_SLACK
    return _bounds32(tl.maximum(total * FIX * (1.0 - rel) - V, 0.0),
                     total * FIX * (1.0 + rel) + V)


@_device
def _bounds32(lo, hi):
    """float64 bounds as float32 ones, rounded outward (the search keeps its bounds in
    float32: half the registers)."""
    return (lo * (1.0 - 2.0 ** -22)).to(tl.float32), (hi * (1.0 + 2.0 ** -22)).to(tl.float32)


@_device
def _pick(bins, b, v):
    """v[b] as a scalar (0 when b is out of range)."""
    return tl.sum(tl.where(bins == b, v, 0), 0)


@_device
def _next_shift(lo, hi, BIN_BITS: tl.constexpr):
    """Smallest bin width 2^s that covers keys [lo, hi] with 2^BIN_BITS bins."""
    s = tl.full([], 0, tl.int32)
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
    incl = above + tl.cumsum(cnt, 0, reverse=True).to(tl.int64)     # keys >= each bin
    bk = tl.max(tl.where(incl >= k, bins, -1), 0)
    cnt_bk = _pick(bins, bk, cnt).to(tl.int64)
    return bk, _pick(bins, bk, incl) - cnt_bk, cnt_bk, _bin_lo(span_lo, shift, bk), \
        _bin_hi(span_lo, span_hi, shift, bk)


@_device
def _top_k_mass_bounds(cnt, span_lo, span_hi, shift, bk, n_min, above_lo, above_hi, key_max,
                       m, inv_t, NB: tl.constexpr):
    """Bounds on the mass of the top-k set while its threshold is only known to lie in bin
    bk: everything above the span (between above_lo and above_hi) and above bk, at least
    n_min of bk's tokens, at most all of them."""
    bins = tl.arange(0, NB)
    lo_m, hi_m, one_lo = _edge_bounds(cnt, span_lo, span_hi, shift, key_max, m, inv_t, NB)
    k_lo = above_lo + tl.sum(tl.where(bins > bk, lo_m, 0.0), 0) \
        + n_min.to(tl.float64) * _pick(bins, bk, one_lo)
    k_hi = above_hi + tl.sum(tl.where(bins >= bk, hi_m, 0.0), 0)
    return k_lo, k_hi


@_device
def _top_p_window(cnt, lo_m, hi_m, one_lo, span_lo, span_hi, shift, above_lo, above_hi,
                  cnt_above, pk_lo, pk_hi, floor_key, NB: tl.constexpr):
    """The bins whose tokens top-p may keep or drop, given bounds on each bin's mass.

    A token's top-p test compares the mass strictly above it with p * K.  The mass above
    the span lies in [above_lo, above_hi].  A bin is surely kept when even the upper bound
    of the mass above its lowest token (everything above the bin, plus the bin's mass
    less that token's own, at least ``one_lo``) is below p * K_lo; surely dropped when the
    mass above it is at least p * K_hi, or when top-k or
    min-p (keys below floor_key) drops it whole.  Kept bins are a top prefix, dropped ones
    a bottom suffix; the bins between form the window.  With single-key bins (shift 0)
    and exact masses a token's own bin is a tie group, so the test is exact and the
    window is empty.  Returns (done, threshold key if done, window key range, window
    count, count of keys above the window).
    """
    bins = tl.arange(0, NB)
    ha = above_hi + tl.cumsum(hi_m, 0, reverse=True) - hi_m
    # an empty bin counts as kept and as dropped: the window ends at tokens (empty bins
    # between a boundary hit exactly and the next token kept its span, and the search's
    # shift, from narrowing: docs/reliability.md, 2026-12-01)
    empty = cnt == 0
    kept = empty | (ha + tl.where(shift > 0, hi_m - tl.where(empty, 0.0, one_lo), 0.0) < pk_lo)
    whi = tl.max(tl.where(kept, -1, bins), 0)
    la = above_lo + tl.cumsum(lo_m, 0, reverse=True) - lo_m
    # bins wholly below floor_key: their highest key is below it
    below_floor = bins.to(tl.int64) < ((floor_key - span_lo) >> shift)
    dropped = empty | (la >= pk_hi) | below_floor
    wlo = tl.min(tl.where(dropped, NB, bins), 0)
    in_win = (bins >= wlo) & (bins <= whi)
    n_above = cnt_above + tl.sum(tl.where(bins > whi, cnt, 0), 0).to(tl.int64)
    return wlo > whi, _bin_lo(span_lo, shift, whi + 1), _bin_lo(span_lo, shift, wlo), \
        _bin_hi(span_lo, span_hi, shift, whi), \
        tl.sum(tl.where(in_win, cnt, 0), 0).to(tl.int64), n_above


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


@_device
def _greedy_and_inv_t(t):
    """(greedy, 1/T) of a row's temperature: T <= 0 or NaN is greedy (1/T then 1),
    T = +inf gives 1/T = 0, and a subnormal T acts as 2^-126, whose 1/T is finite
    (reference.greedy_and_inv_t)."""
    greedy = ~(t > 0.0)
    return greedy, tl.math.div_rn(1.0, tl.where(greedy, 1.0, tl.maximum(t, C2_FLOOR)))


@_device
def _min_p_floor(m, inv_t, m_on, log_mp):
    """The lowest key min-p keeps (_min_p_key), or KEY_NEG_INF + 1 where min-p is off."""
    key_mp = tl.full([], KEY_NEG_INF + 1, tl.int64)
    if m_on:
        key_mp = _min_p_key(m, inv_t, log_mp)
    return key_mp


@_device
def _min_p_key(m, inv_t, log_mp):
    """The smallest order key whose logit passes min-p, d = (x - max) * (1/T) >= ln(min_p)
    in float32 as the reference tests it, by bisection (d is monotone in x)."""
    lo = tl.full([], KEY_NEG_INF + 1, tl.int64)
    hi = _key(m).to(tl.int64)                       # d(max) = 0 >= ln(min_p)
    while lo < hi:
        mid = (lo + hi) // 2
        passes = (_unkey(mid) - m) * inv_t >= log_mp
        hi = tl.where(passes, mid, hi)
        lo = tl.where(passes, lo, mid + 1)
    return lo


@_device
def _lane_row(k, k_on, LANE_K: tl.constexpr):
    """Whether a row takes its top-k candidates from pass 1's group maxima (a top-k of at
    most LANE_K; 0: never) instead of a histogram and a search.

    Pass 1 keeps the max of each group of four neighbouring lanes over the tiles (group
    g holds the tokens whose index mod BLOCK lies in [4g, 4g + 4)), for the normaliser.
    The groups hold disjoint tokens, so the k-th largest group max t has at least k
    tokens at or above it: t <= the k-th largest logit, and every token top-k keeps (with
    top-p, min-p, either order: their kept sets lie inside top-k's) has a key >= t.  The
    collect pass then gathers the keys >= t: about k of them on an LLM's row, where the
    top tokens rarely share a group.  A row with more than the scratch holds (ties, flat
    rows) goes the histogram way after its collect (_filtered_row): two reads more, exact
    either way.  The groups are cut by index mod BLOCK, so a split row's chunks (whole
    tiles) combine theirs by a max per group into the same t: the same candidates and
    reads as one program per row."""
    return k_on & (k <= LANE_K)


@_device
def _kth_key(key, k):
    """The k-th largest (1 <= k <= the number of keys) of a vector of uint32 keys, by
    radix selection two bits at a time: sixteen rounds of four counts, in registers (four
    bits a round held 32 values a thread at 1024 keys and spilled the row's state)."""
    digits = tl.arange(0, 4).to(tl.uint32)
    prefix = tl.full([], 0, tl.uint32)
    for level in tl.static_range(16):
        cand = prefix + (digits << (30 - 2 * level))
        cnt = tl.sum((key[None, :] >= cand[:, None]).to(tl.int32), 1)
        # the count falls as the digit grows; digit 0 keeps the prefix, which has >= k
        prefix = prefix + (tl.max(tl.where(cnt >= k, digits, 0), 0) << (30 - 2 * level))
    return prefix


# ----------------------------------------------------------------------------- passes
# Each streaming pass reads the row in BLOCK-wide tiles: the full tiles unmasked, then
# one masked tail tile.  Per-lane state runs through the tiles and is reduced once.

@_device
def _load_tile(row_ptr, start, V, BLOCK: tl.constexpr, MASKED: tl.constexpr):
    """(offsets, sanitised float32 logits) of the BLOCK tokens from ``start``."""
    offs = start + tl.arange(0, BLOCK)
    if MASKED:
        return offs, _sanitize(tl.load(row_ptr + offs, mask=offs < V, other=NEG_INF))
    else:
        return offs, _sanitize(tl.load(row_ptr + offs))


@_device
def _greedy_pass(row_ptr, lo, V, BLOCK: tl.constexpr):
    """(max, first index of it) of the sanitised tokens [lo, V) (lo a multiple of BLOCK;
    the whole row, or one chunk of it): the greedy token."""
    m_v = tl.full([BLOCK], NEG_INF, tl.float32)
    arg_v = tl.zeros([BLOCK], tl.int32)
    for start in range(lo, V, BLOCK):  # stream: greedy
        offs, x = _load_tile(row_ptr, start, V, BLOCK, True)
        arg_v = tl.where(x > m_v, offs, arg_v)
        m_v = tl.maximum(m_v, x)
    m = tl.max(m_v, 0)
    return m, tl.min(tl.where(m_v == m, arg_v, NO_TOKEN), 0)


@_device
def _noise_test(c, w, NOISE_TEST: tl.constexpr):
    """Tests only (NOISE_TEST 0 compiles to nothing): 1 loosens every cheap bound by 0.99
    of the race margin, the worst error the margin allows, so that proofs still hold; 2
    raises a third of the bounds by 100, so that the proof fails and the exact race runs.
    Bounds of dropped tokens stay -inf."""
    if NOISE_TEST == 1:
        c = c - (0.99 * MARGIN_REL * (tl.abs(c) + MARGIN_ABS))
    if NOISE_TEST == 2:
        c = tl.where((w % 3) == 0, c + 100.0, c)
    return c


@_device
def _race_step(x, w, inv_t, bias, c2, ub_v, m_v, z_v, LOGPROBS: tl.constexpr,
               NOISE_TEST: tl.constexpr, BLOCK: tl.constexpr):
    """One tile of the race: each lane's largest cheap bound; with LOGPROBS, per group of
    four neighbouring lanes, the running max and the sum of exp((x - that max) / T),
    rescaled once per group and tile (a per-token online update costs three more
    instructions a token).  The logits are raw (-0 and +0 give the same bound).  A NaN
    bound (a NaN logit; or +-inf at T = inf, where x / T is inf * 0) poisons its lane's
    max (one max.NaN, as cheap as max), so that the caller's proof fails and the row
    takes the exact path: ignored, it would hide a +inf logit (the row's only kept
    tokens) at T = inf."""
    c = _noise_test(_cheap_key(x, w, inv_t, bias), w, NOISE_TEST)
    ub_v = tl.maximum(ub_v, c, propagate_nan=tl.PropagateNan.ALL)
    if LOGPROBS:
        x4 = x.reshape([BLOCK // 4, 4])
        m_new = tl.maximum(m_v, tl.max(x4, 1))
        # (m_v starts at -FLT_MAX, not -inf: the rescale of an empty group is 0, not NaN)
        z_v = z_v * _exp2_fast((m_v - m_new) * c2) + \
            tl.sum(_exp2_fast((x4 - m_new[:, None]) * c2), 1)
        m_v = m_new
    return ub_v, m_v, z_v


@_device
def _race_pass(row_ptr, lo, V, seed, off_lo, off_hi, inv_t, bias, c2, x_lo,
               LOGPROBS: tl.constexpr, NOISE_TEST: tl.constexpr, BLOCK: tl.constexpr,
               KEPT: tl.constexpr):
    """The one-read draw over tokens [lo, V) of a row (lo a multiple of BLOCK): per lane
    the largest cheap bound of the race key (anchored so that bias = 32 ln 2 - anchor /
    T), and with LOGPROBS the lane max and normaliser.  No filter; with KEPT only the
    tokens at or above ``x_lo`` (a float compare, two instructions a token: -0.0 and
    +0.0 compare equal, as their sanitised keys are; NaN fails, as the -inf it stands
    for)."""
    ub_v = tl.full([BLOCK], NEG_INF, tl.float32)
    m_v = tl.full([BLOCK // 4], -FLT_MAX, tl.float32)
    z_v = tl.zeros([BLOCK // 4], tl.float32)
    n_full = V - (V - lo) % BLOCK
    for start in range(lo, n_full, BLOCK):  # stream: race
        x = tl.load(row_ptr + start + tl.arange(0, BLOCK)).to(tl.float32)
        if KEPT:
            x = tl.where(x >= x_lo, x, NEG_INF)
        w = _tile_words(seed, off_lo, off_hi, start, 0, BLOCK)
        ub_v, m_v, z_v = _race_step(x, w, inv_t, bias, c2, ub_v, m_v, z_v, LOGPROBS,
                                    NOISE_TEST, BLOCK)
    if n_full < V:
        offs = n_full + tl.arange(0, BLOCK)
        x = tl.load(row_ptr + offs, mask=offs < V, other=NEG_INF).to(tl.float32)
        if KEPT:
            x = tl.where(x >= x_lo, x, NEG_INF)
        w = _tile_words(seed, off_lo, off_hi, n_full, 0, BLOCK)
        ub_v, m_v, z_v = _race_step(x, w, inv_t, bias, c2, ub_v, m_v, z_v, LOGPROBS,
                                    NOISE_TEST, BLOCK)
    return ub_v, m_v, z_v


@_device
def _kept_race_pass(row_ptr, V, seed, off_lo, off_hi, m, inv_t, bias, kept_lo,
                    NEED_MASS: tl.constexpr, NOISE_TEST: tl.constexpr, BLOCK: tl.constexpr):
    """The race over the tokens with key >= kept_lo (rows keeping more tokens than the
    scratch holds), and with NEED_MASS their exact mass."""
    ub_v = tl.full([BLOCK], NEG_INF, tl.float32)
    mass_v = tl.zeros([BLOCK], tl.int64)
    lo32 = _u32(kept_lo)
    for start in range(0, V, BLOCK):  # stream: kept race
        offs, x = _load_tile(row_ptr, start, V, BLOCK, True)
        kept = _key(x) >= lo32
        w = _tile_words(seed, off_lo, off_hi, start, 0, BLOCK)
        c = _noise_test(_cheap_key(tl.where(kept, x, NEG_INF), w, inv_t, bias), w,
                        NOISE_TEST)
        ub_v = tl.maximum(ub_v, c)
        if NEED_MASS:
            mass_v += tl.where(kept, _term(x, m, inv_t), 0)
    return ub_v, tl.sum(mass_v, 0)


@_device
def _settle(ub_v, anchor, inv_t, row_ptr, scratch_row, lo, n_src, kept_lo, seed, off_lo,
            off_hi, FROM_SCRATCH: tl.constexpr, BLOCK: tl.constexpr):
    """Prove the race's winner from the lanes' cheap bounds ``ub_v``.

    The RACE_LANES lanes with the largest bounds get every token's exact key (a lane holds
    tokens lo + lane + t * BLOCK below n_src: of the row, or of the scratch's entries with
    FROM_SCRATCH);
    the best of those wins if every other lane's bound plus its margin lies below it.
    Only kept tokens count: key >= kept_lo.  Returns (proved, winner's exact key, its
    index, its logit).
    """
    inv_t64 = inv_t.to(tl.float64)
    anchor_scaled = tl.abs(anchor.to(tl.float64) * inv_t64)
    lanes = tl.arange(0, BLOCK)
    r = tl.arange(0, RACE_LANES)
    top = tl.zeros([RACE_LANES], tl.int32)
    rest = ub_v
    for i in tl.static_range(RACE_LANES):
        best = tl.max(rest, 0)
        lane = tl.min(tl.where(rest == best, lanes, NO_TOKEN), 0)
        top = tl.where(r == i, lane, top)
        rest = tl.where(lanes == lane, NEG_INF, rest)
    rest_ub = tl.max(rest, 0)
    n_tiles = tl.cdiv(n_src - lo, BLOCK)
    best_key = tl.full([], NEG_INF, tl.float64)
    best_idx = tl.full([], NO_TOKEN, tl.int32)
    best_x = tl.full([], NEG_INF, tl.float32)
    lo32 = _u32(kept_lo)
    for t0 in range(0, n_tiles, 32):
        t = t0 + tl.arange(0, 32)
        pos = lo + top[:, None] + t[None, :] * BLOCK                 # [lanes, tiles]
        ok = (t[None, :] < n_tiles) & (pos < n_src)
        if FROM_SCRATCH:
            entry = tl.load(scratch_row + pos, mask=ok, other=0)
            key = ((entry >> 32) & 0xFFFFFFFF).to(tl.uint32)
            idx = (entry & 0x7FFFFFFF).to(tl.int32)
            x = _unkey(key)
        else:
            idx = pos
            x = _sanitize(tl.load(row_ptr + pos, mask=ok, other=NEG_INF))
            key = _key(x)
        ok = ok & (key >= lo32)
        g = _gumbel(_token_words(seed, off_lo, off_hi, idx, 0),
                    _token_words(seed, off_lo, off_hi, idx, 1))
        k = tl.where(ok, _exact_key(x, anchor, inv_t64, g), NEG_INF)
        k_best = tl.max(tl.max(k, 1), 0)
        i_best = tl.min(tl.min(tl.where(ok & (k == k_best), idx, NO_TOKEN), 1), 0)
        x_best = tl.max(tl.max(tl.where(ok & (k == k_best) & (idx == i_best), x, NEG_INF),
                               1), 0)
        win = (k_best > best_key) | ((k_best == best_key) & (i_best < best_idx))
        best_key = tl.where(win, k_best, best_key)
        best_idx = tl.where(win, i_best, best_idx)
        best_x = tl.where(win, x_best, best_x)
    # (past ANCHOR_MAX the cheap keys' float32 bias, 32 ln 2 - anchor / T, overflows to
    # -inf: every bound is -inf, a kept token's too, and proves nothing)
    proved = ((rest_ub == NEG_INF) |
              (rest_ub.to(tl.float64) + _margin(rest_ub, anchor_scaled) < best_key)) & \
        (anchor_scaled < ANCHOR_MAX)
    return proved & (best_key > NEG_INF), best_key, best_idx, best_x


@_device
def _exact_race(row_ptr, V, m, inv_t, seed, off_lo, off_hi, kept_lo,
                RARE_BLOCK: tl.constexpr):
    """The race with exact keys for every kept token (key >= kept_lo): the fallback when
    the cheap bounds prove nothing.  Returns (key, index, logit) of the winner."""
    inv_t64 = inv_t.to(tl.float64)
    best_k = tl.full([RARE_BLOCK], NEG_INF, tl.float64)
    best_i = tl.full([RARE_BLOCK], NO_TOKEN, tl.int32)
    best_x = tl.full([RARE_BLOCK], NEG_INF, tl.float32)
    lo32 = _u32(kept_lo)
    for start in range(0, V, RARE_BLOCK):  # stream: exact race (tile RARE_BLOCK)
        offs, x = _load_tile(row_ptr, start, V, RARE_BLOCK, True)
        g = _gumbel(_tile_words(seed, off_lo, off_hi, start, 0, RARE_BLOCK),
                    _tile_words(seed, off_lo, off_hi, start, 1, RARE_BLOCK))
        k = tl.where((_key(x) >= lo32) & (offs < V), _exact_key(x, m, inv_t64, g), NEG_INF)
        win = k > best_k                      # tiles in index order: ties keep the first
        best_k = tl.where(win, k, best_k)
        best_i = tl.where(win, offs, best_i)
        best_x = tl.where(win, x, best_x)
    k = tl.max(best_k, 0)
    i = tl.min(tl.where(best_k == k, best_i, NO_TOKEN), 0)
    return k, i, tl.max(tl.where(best_i == i, best_x, NEG_INF), 0)


@_device
def _first_pass(row_ptr, lo, V, inv_t, hist_row, HIST: tl.constexpr, BIN_BITS: tl.constexpr,
                BLOCK: tl.constexpr, ADD: tl.constexpr = False):
    """Max and normaliser sum exp((x - max) / T) of tokens [lo, V) (lo a multiple of
    BLOCK; float32, per group of four neighbouring lanes: their max, the group's sum
    rescaled once per tile; combined in float64); with HIST, the count histogram of the
    keys' top BIN_BITS bits, stored in the program's three histogram slots (pass 1's,
    bracket A's, bracket B's), or with ADD added to the first by atomics (a chunk's
    share of its row's).  Returns (max, normaliser, the groups' maxima [BLOCK // 4]:
    -FLT_MAX where a group has no finite logit; see _lane_row)."""
    NB: tl.constexpr = 1 << BIN_BITS
    c2 = _c2(inv_t)
    m_v = tl.full([BLOCK // 4], -FLT_MAX, tl.float32)
    z_v = tl.zeros([BLOCK // 4], tl.float32)
    hist = tl.zeros([NB], tl.int32)
    for start in range(lo, V, BLOCK):  # stream: first
        offs, x = _load_tile(row_ptr, start, V, BLOCK, True)
        x4 = x.reshape([BLOCK // 4, 4])
        m_new = tl.maximum(m_v, tl.max(x4, 1))
        # (x - max) * c, not x * c - max * c: exact near the max, so the error is
        # relative to the exponent itself (what _sum_bounds allows for)
        z_v = z_v * _exp2_fast((m_v - m_new) * c2) + \
            tl.sum(_exp2_fast((x4 - m_new[:, None]) * c2), 1)
        m_v = m_new
        if HIST:
            hist += tl.histogram((_key(x) >> (32 - BIN_BITS)).to(tl.int32), NB)
    m = tl.max(m_v, 0)
    z = tl.sum(z_v.to(tl.float64) * tl.exp2((m_v - m) * c2).to(tl.float64), 0)
    # a row with no finite logit: z = 0; an extreme temperature: z not finite, and m then
    # a lower bound of the max (the groups' rescale overflowed): both go the exact way
    m = tl.where((m == -FLT_MAX) & (z == 0.0), NEG_INF, m)
    if HIST:
        bins = tl.arange(0, NB)
        hist = tl.where(bins == 0, hist - (tl.cdiv(V - lo, BLOCK) * BLOCK - (V - lo)), hist)
        if ADD:
            tl.atomic_add(_here(hist_row) + bins, hist, sem="relaxed")
        else:
            tl.store(_here(hist_row) + bins, hist)
            tl.store(_here(hist_row) + NB + bins, hist)
            tl.store(_here(hist_row) + 2 * NB + bins, hist)
    return m, z, m_v


@_device
def _row_max_and_mode(row_ptr, V, RARE_BLOCK: tl.constexpr):
    """The sanitised row max, and its mode: 0 ordinary, 1 the row holds +inf, 2 the row
    has no logit above -inf (docs/design.md, "Odd input")."""
    m_v = tl.full([RARE_BLOCK], NEG_INF, tl.float32)
    for start in range(0, V, RARE_BLOCK):  # stream: row max (tile RARE_BLOCK)
        offs, x = _load_tile(row_ptr, start, V, RARE_BLOCK, True)
        m_v = tl.maximum(m_v, x)
    m = tl.max(m_v, 0)
    return m, tl.where(m == POS_INF, 1, tl.where(m == NEG_INF, 2, 0))


@_device
def _special_row(row_ptr, V, row, mode, seed, off_lo, off_hi, passes, fallbacks, tokens_ptr,
                 logprobs_ptr, probs_row, stats_row, PROBS: tl.constexpr,
                 LOGPROBS: tl.constexpr, STATS: tl.constexpr, RARE_BLOCK: tl.constexpr):
    """A row whose max is +inf (mode 1: its +inf tokens are equals, the rest out) or -inf
    (mode 2: every token an equal), possible with validate=False: the race over the
    equals with keys G alone, or their uniform filtered_probs; and the row's results."""
    best_k = tl.full([RARE_BLOCK], NEG_INF, tl.float64)
    best_i = tl.full([RARE_BLOCK], NO_TOKEN, tl.int32)
    count = tl.zeros([RARE_BLOCK], tl.int32)
    for start in range(0, V, RARE_BLOCK):  # stream: special (tile RARE_BLOCK)
        offs, x = _load_tile(row_ptr, start, V, RARE_BLOCK, True)
        equal = (offs < V) & ((mode == 2) | (x == POS_INF))
        g = _gumbel(_tile_words(seed, off_lo, off_hi, start, 0, RARE_BLOCK),
                    _tile_words(seed, off_lo, off_hi, start, 1, RARE_BLOCK))
        k = tl.where(equal, g.to(tl.float64), NEG_INF)
        win = k > best_k
        best_k = tl.where(win, k, best_k)
        best_i = tl.where(win, offs, best_i)
        count += equal.to(tl.int32)
    k = tl.max(best_k, 0)
    token = tl.min(tl.where(best_k == k, best_i, NO_TOKEN), 0)
    n_equal = tl.sum(count, 0)
    passes += 1
    if PROBS:
        for start in range(0, V, RARE_BLOCK):  # stream: write special (tile RARE_BLOCK)
            offs, x = _load_tile(row_ptr, start, V, RARE_BLOCK, True)
            equal = (mode == 2) | (x == POS_INF)
            prob = tl.where(equal, (1.0 / n_equal.to(tl.float64)).to(tl.float32), 0.0)
            tl.store(probs_row + offs, prob, mask=offs < V)
        passes += 1
    else:
        tl.store(tokens_ptr + row, token.to(tl.int64))
        if LOGPROBS:
            tl.store(logprobs_ptr + row, (-tl.log(n_equal.to(tl.float64))).to(tl.float32))
    if STATS:
        tl.store(stats_row, passes)
        tl.store(stats_row + 1, fallbacks)


@_device
def _refine_tile(x, offs, V, m, c2, inv_t, a_open, a_lo32, a_span32, a_shift, b_lo32,
                 b_span32, b_shift, k_from32, b_from32, binmass_row, hist_a, hist_b, k_v,
                 b_v, k_exact, b_exact, K_SUM: tl.constexpr, EXACT: tl.constexpr,
                 NB: tl.constexpr, BLOCK: tl.constexpr):
    key = _key(x)
    if not EXACT:
        e = _exp2_fast((x - m) * c2)
        if K_SUM:
            k_v += tl.sum(tl.where(key >= k_from32, e, 0.0).reshape([BLOCK // 4, 4]), 1)
        b_v += tl.sum(tl.where(key >= b_from32, e, 0.0).reshape([BLOCK // 4, 4]), 1)
    # Bracket B as one unsigned compare (it never holds the tail's -inf padding: the
    # min-p floor drops those keys).  The histogram is unmasked (a masked one branches
    # per token): the rest count in bin 0, and & (NB - 1) proves the bin in range (else
    # a check and a branch per token).
    b_off = key - b_lo32
    if not EXACT:
        hist_b += tl.histogram(tl.where(b_off <= b_span32, b_off >> b_shift.to(tl.uint32), 0)
                               .to(tl.int32) & (NB - 1), NB)
    else:
        # (a lane a thread at the RARE_BLOCK tile: per-lane sums, no shuffles)
        t = _term(x, m, inv_t)
        tl.atomic_add(_here(binmass_row) + (b_off >> b_shift.to(tl.uint32)).to(tl.int32), t,
                      mask=b_off <= b_span32, sem="relaxed")
        k_exact += tl.where(key >= k_from32, t, 0)         # (k_from = 0: Z, exactly)
        b_exact += tl.where(key >= b_from32, t, 0)
    if a_open:  # rare: a top-k bin holding more tokens than the scratch
        a_off = key - a_lo32
        in_a = (a_off <= a_span32) & (offs < V)
        hist_a += tl.histogram(tl.where(in_a, a_off >> a_shift.to(tl.uint32), 0)
                               .to(tl.int32) & (NB - 1), NB, mask=in_a)
    return hist_a, hist_b, k_v, b_v, k_exact, b_exact


@_device
def _refine_pass(row_ptr, V, m, inv_t, a_open, a_lo, a_hi, a_shift, b_open, b_lo, b_hi,
                 b_shift, n_b, k_from, b_from, binmass_row, hist_row, K_SUM: tl.constexpr,
                 EXACT: tl.constexpr, BIN_BITS: tl.constexpr, BLOCK: tl.constexpr):
    """Finer count histograms of the open brackets (keys [lo, hi] in bins of 2^shift, to
    the histogram slots of A and B; bracket B holds n_b keys), and the mass at or above
    b_from and, with K_SUM, at or above k_from (the top-k set and what may still join
    it), as float32 sums (bounds: _sum_bounds).  With EXACT (when the previous count
    histogram's resolution cannot be bettered) instead each bin of B's exact mass
    (integer atomics; B's counts are that histogram's: _rebase_bins) and both masses
    exactly, a lane a thread: a variant of its own, since its int64 terms and atomic
    operands would otherwise hold registers in every refine.  Returns
    (k mass, b mass, exact k mass, exact b mass), the first two in units of the max
    token's weight (zero with EXACT), the last two zero without EXACT."""
    NB: tl.constexpr = 1 << BIN_BITS
    c2 = _c2(inv_t)
    # a bracket as one unsigned compare, key - lo <= hi - lo; a closed one is empty
    a_lo32 = _u32(tl.where(a_open, a_lo, KEY_TOP))
    a_span32 = _u32(tl.where(a_open, a_hi - a_lo, 0))
    b_lo32 = _u32(tl.where(b_open, b_lo, KEY_TOP))
    b_span32 = _u32(tl.where(b_open, b_hi - b_lo, 0))
    k_from32 = _u32(k_from)
    b_from32 = _u32(b_from)
    hist_a = tl.zeros([NB], tl.int32)
    hist_b = tl.zeros([NB], tl.int32)
    k_v = tl.zeros([BLOCK // 4], tl.float32)
    b_v = tl.zeros([BLOCK // 4], tl.float32)
    k_exact = tl.zeros([BLOCK], tl.int64)
    b_exact = tl.zeros([BLOCK], tl.int64)
    n_full = V - V % BLOCK
    if EXACT:   # (the same loop twice: the SASS report names and sizes each stream)
        for start in range(0, n_full, BLOCK):  # stream: exact refine (tile RARE_BLOCK)
            offs, x = _load_tile(row_ptr, start, V, BLOCK, False)
            hist_a, hist_b, k_v, b_v, k_exact, b_exact = _refine_tile(
                x, offs, V, m, c2, inv_t, a_open, a_lo32, a_span32, a_shift, b_lo32,
                b_span32, b_shift, k_from32, b_from32, binmass_row, hist_a, hist_b, k_v, b_v,
                k_exact, b_exact, K_SUM, EXACT, NB, BLOCK)
    else:
        for start in range(0, n_full, BLOCK):  # stream: refine (tile BLOCK)
            offs, x = _load_tile(row_ptr, start, V, BLOCK, False)
            hist_a, hist_b, k_v, b_v, k_exact, b_exact = _refine_tile(
                x, offs, V, m, c2, inv_t, a_open, a_lo32, a_span32, a_shift, b_lo32,
                b_span32, b_shift, k_from32, b_from32, binmass_row, hist_a, hist_b, k_v, b_v,
                k_exact, b_exact, K_SUM, EXACT, NB, BLOCK)
    if n_full < V:
        offs, x = _load_tile(row_ptr, n_full, V, BLOCK, True)
        hist_a, hist_b, k_v, b_v, k_exact, b_exact = _refine_tile(
            x, offs, V, m, c2, inv_t, a_open, a_lo32, a_span32, a_shift, b_lo32, b_span32,
            b_shift, k_from32, b_from32, binmass_row, hist_a, hist_b, k_v, b_v, k_exact,
            b_exact, K_SUM, EXACT, NB, BLOCK)
    bins = tl.arange(0, NB)
    if a_open:
        tl.store(_here(hist_row) + NB + bins, hist_a)
    if b_open and not EXACT:   # (EXACT: the counts are known, _rebase_bins)
        outside = tl.cdiv(V, BLOCK) * BLOCK - n_b.to(tl.int32)    # counted in bin 0
        tl.store(_here(hist_row) + 2 * NB + bins, tl.where(bins == 0, hist_b - outside, hist_b))
    return tl.sum(k_v.to(tl.float64), 0), tl.sum(b_v.to(tl.float64), 0), \
        tl.sum(k_exact, 0), tl.sum(b_exact, 0)


@_device
def _collect_tile(x, valid, t_bit, m, inv_t, lo1, hi1, lo2, hi2, from_a, from_b, bits, z_v,
                  above_a_v, above_b_v, NEED_Z, MASSES: tl.constexpr, BLOCK: tl.constexpr):
    key = _key(x)
    take = (((key >= lo1) & (key <= hi1)) | ((key >= lo2) & (key <= hi2))) & valid
    bits = tl.where(take, bits | t_bit, bits)
    if MASSES:
        t = _term(x, m, inv_t)
        z_v += tl.sum(t.reshape([BLOCK // 4, 4]), 1)
        above_a_v += tl.sum(tl.where(key >= from_a, t, 0).reshape([BLOCK // 4, 4]), 1)
        above_b_v += tl.sum(tl.where(key >= from_b, t, 0).reshape([BLOCK // 4, 4]), 1)
    elif NEED_Z:
        # summed over each thread's four neighbouring tokens first: one int64 accumulator
        # per four lanes (the same adds, a quarter of the registers)
        z_v += tl.sum(_term(x, m, inv_t).reshape([BLOCK // 4, 4]), 1)
    return bits, z_v, above_a_v, above_b_v


@_device
def _flush(row_ptr, bits, g0, words_row, scratch_row, n, n_ptr, SHARED: tl.constexpr,
           CAP: tl.constexpr, CHUNK: tl.constexpr, BLOCK: tl.constexpr):
    """Move the marked tokens of one group of 32 tiles (bit t of lane l: token
    g0 + t * BLOCK + l) to the scratch as (key << 32 | index) entries.  The words go
    through memory and are read back CHUNK lanes at a time, one round per set bit of the
    chunk's fullest word.  Counts past CAP without storing.  With SHARED the scratch is
    the row's, filled by all its chunks: each round takes its slots from the row's count
    at ``n_ptr`` (an atomic), so entries land in any order (everything that reads the
    scratch is order-free)."""
    tl.store(_here(words_row) + tl.arange(0, BLOCK), bits)
    tl.debug_barrier()
    for c0 in range(0, BLOCK, CHUNK):
        lanes = c0 + tl.arange(0, CHUNK)
        w = tl.load(_here(words_row) + lanes, mask=lanes < BLOCK, other=0).to(tl.uint32,
                                                                              bitcast=True)
        while tl.max(w, 0) != 0:
            low = w & (0 - w)                                        # lowest set bit
            has = w != 0
            t = ((low.to(tl.float32).to(tl.int32, bitcast=True) >> 23) - 127)
            idx = g0 + t * BLOCK + lanes
            x = _sanitize(tl.load(row_ptr + idx, mask=has, other=NEG_INF))
            count = tl.sum(has.to(tl.int32), 0)
            base = n
            if SHARED:
                base = tl.atomic_add(n_ptr, count, sem="relaxed")
            pos = base + tl.cumsum(has.to(tl.int32), 0) - 1
            entry = (_key(x).to(tl.int64) << 32) | idx.to(tl.int64)
            tl.store(scratch_row + pos, entry, mask=has & (pos < CAP))
            n += count
            w = w ^ low
    tl.debug_barrier()
    return n


@_device
def _collect_pass(row_ptr, lo, V, m, inv_t, lo1, hi1, lo2, hi2, NEED_Z, from_a, from_b,
                  scratch_row, n_ptr, words_row, MASSES: tl.constexpr, SHARED: tl.constexpr,
                  CAP: tl.constexpr, CHUNK: tl.constexpr, BLOCK: tl.constexpr):
    """Move every token of [lo, V) (lo a multiple of BLOCK) with a key in [lo1, hi1] or
    [lo2, hi2] to the scratch (at most CAP stored; the count returned is exact, of this
    call's tokens; with SHARED, slots from the count at n_ptr: see _flush); with NEED_Z
    sum their exact mass, with MASSES also the masses at or above from_a and from_b.

    A token is marked by a bit in its lane's word (bit t for the t-th tile of a group of
    32), which costs a compare and a select per token, and the words are moved to the
    scratch after each group (_flush): no per-tile scan."""
    l1 = _u32(lo1)
    h1 = _u32(hi1)
    l2 = _u32(lo2)
    h2 = _u32(hi2)
    fa = _u32(from_a)
    fb = _u32(from_b)
    z = tl.full([], 0, tl.int64)
    above_a = tl.full([], 0, tl.int64)
    above_b = tl.full([], 0, tl.int64)
    n = tl.full([], 0, tl.int32)
    n_full = V - (V - lo) % BLOCK
    for g0 in range(lo, V, 32 * BLOCK):
        bits = tl.zeros([BLOCK], tl.int32)
        z_v = tl.zeros([BLOCK // 4], tl.int64)
        above_a_v = tl.zeros([BLOCK // 4], tl.int64)
        above_b_v = tl.zeros([BLOCK // 4], tl.int64)
        g_end = tl.minimum(g0 + 32 * BLOCK, n_full)
        for start in range(g0, g_end, BLOCK):  # stream: collect (tile BLOCK)
            offs, x = _load_tile(row_ptr, start, V, BLOCK, False)
            bits, z_v, above_a_v, above_b_v = _collect_tile(
                x, True, tl.full([], 1, tl.int32) << ((start - g0) // BLOCK), m, inv_t, l1, h1, l2, h2, fa, fb, bits, z_v,
                above_a_v, above_b_v, NEED_Z, MASSES, BLOCK)
        if (g0 + 32 * BLOCK >= V) & (n_full < V):
            offs, x = _load_tile(row_ptr, n_full, V, BLOCK, True)
            bits, z_v, above_a_v, above_b_v = _collect_tile(
                x, offs < V, tl.full([], 1, tl.int32) << ((n_full - g0) // BLOCK), m, inv_t, l1, h1, l2, h2, fa, fb, bits,
                z_v, above_a_v, above_b_v, NEED_Z, MASSES, BLOCK)
        # the group's sums first: no per-lane accumulator lives through the flush
        z += tl.sum(z_v, 0)
        above_a += tl.sum(above_a_v, 0)
        above_b += tl.sum(above_b_v, 0)
        n = _flush(row_ptr, bits, g0, words_row, scratch_row, n, n_ptr, SHARED, CAP, CHUNK,
                   BLOCK)
    return n, z, above_a, above_b


@_device
def _write_pass(row_ptr, V, m, inv_t, kept_lo, greedy, arg, scale, probs_row,
                BLOCK: tl.constexpr):
    """filtered_probs: exp(d) * scale on the kept tokens (key >= kept_lo), 0 elsewhere;
    one-hot at ``arg`` for a greedy row."""
    lo32 = _u32(kept_lo)
    for start in range(0, V, BLOCK):  # stream: write
        offs, x = _load_tile(row_ptr, start, V, BLOCK, True)
        keep = _key(x) >= lo32
        prob = tl.where(keep, (tl.exp(_scaled(x, m, inv_t)).to(tl.float64) * scale)
                        .to(tl.float32), 0.0)
        prob = tl.where(greedy, tl.where(offs == arg, 1.0, 0.0), prob)
        tl.store(probs_row + offs, prob, mask=offs < V)


# ----------------------------------------------------------------------------- scratch
# The scratch holds int64 entries key << 32 | index.

@_device
def _scratch_held(scratch_row, n, CHUNK: tl.constexpr):
    """The scratch's entries, loaded once, when it has at most CHUNK (the common case: a
    few hundred candidates), else zeros.  The scratch stage's loops read a scratch this
    small from these registers instead of memory: its thresholds, masses and race then
    cost no memory round trip each (docs/design.md, "Small batches")."""
    pos = tl.arange(0, CHUNK)
    return tl.load(scratch_row + pos, mask=pos < tl.where(n <= CHUNK, n, 0), other=0)


@_device
def _scratch_entries(scratch_row, start, n, held, CHUNK: tl.constexpr):
    """CHUNK scratch entries from ``start`` (0 past the n entries): from ``held`` when
    the scratch has at most CHUNK (then start is 0), else from memory."""
    pos = start + tl.arange(0, CHUNK)
    entry = tl.load(scratch_row + pos, mask=pos < tl.where(n > CHUNK, n, 0), other=0)
    return tl.where(n > CHUNK, entry, held)


@_device
def _scratch_chunk(scratch_row, start, n, held, CHUNK: tl.constexpr):
    """CHUNK scratch keys from ``start`` as int64 in [0, 2^32) (-1 past the n entries)."""
    pos = start + tl.arange(0, CHUNK)
    entry = _scratch_entries(scratch_row, start, n, held, CHUNK)
    return tl.where(pos < n, (entry >> 32) & 0xFFFFFFFF, -1)


@_device
def _scratch_mass(scratch_row, n, held, m, inv_t, lo, hi, CHUNK: tl.constexpr):
    """Exact mass (fixed point, float64) of the scratch's tokens with keys in [lo, hi]."""
    total = tl.full([], 0, tl.int64)
    for start in range(0, n, CHUNK):
        key = _scratch_chunk(scratch_row, start, n, held, CHUNK)
        inside = (key >= lo) & (key <= hi)
        total += tl.sum(tl.where(inside, _term(_unkey(tl.maximum(key, 0)), m, inv_t), 0), 0)
    return total.to(tl.float64)


@_device
def _scratch_top_k(scratch_row, n, held, k, a_lo, a_hi, a_above, BIN_BITS: tl.constexpr,
                   CHUNK: tl.constexpr):
    """The exact top-k threshold key from the scratch, which holds every finite key of
    bracket A [a_lo, a_hi] (``a_above`` keys lie above it): finer count histograms of the
    bracket, BIN_BITS bits at a time, until the k-th key's bin is a single key or wholly
    kept.  With fewer than k finite keys the k-th largest is -inf (never a candidate):
    every finite key is kept."""
    NB: tl.constexpr = 1 << BIN_BITS
    bins = tl.arange(0, NB)
    done = tl.full([], False, tl.int1)
    lo = a_lo
    hi = a_hi
    above = a_above.to(tl.int64)
    theta = tl.full([], KEY_NEG_INF + 1, tl.int64)
    while ~done:
        shift = _next_shift(lo, hi, BIN_BITS)
        cnt = tl.zeros([NB], tl.int32)
        for start in range(0, n, CHUNK):
            key = _scratch_chunk(scratch_row, start, n, held, CHUNK)
            inside = (key >= lo) & (key <= hi)
            cnt += tl.histogram(tl.where(inside, (key - lo) >> shift, 0).to(tl.int32) & (NB - 1),
                                NB, mask=inside)
        bk, above_bk, cnt_bk, bk_lo, bk_hi = _top_k_window(cnt, lo, hi, shift, above, k, NB)
        short = bk < 0                              # fewer than k finite keys
        done = short | (shift == 0) | (above_bk + cnt_bk == k)
        theta = tl.where(short, KEY_NEG_INF + 1, bk_lo)
        above = above_bk
        lo = bk_lo
        hi = bk_hi
    return theta


@_device
def _scratch_top_p(scratch_row, binmass_row, n, held, m, inv_t, b_lo, b_hi,
                   mass_above_b, cnt_above_b, pk, floor_key, BIN_BITS: tl.constexpr,
                   CHUNK: tl.constexpr):
    """The exact top-p threshold key from the scratch, which holds every key of bracket B
    [b_lo, b_hi] (``mass_above_b``: the exact mass above it; ``pk``: top_p times the
    exact normaliser): finer histograms with exact bin masses (integer atomics), BIN_BITS
    bits at a time, until the threshold is exact."""
    NB: tl.constexpr = 1 << BIN_BITS
    bins = tl.arange(0, NB)
    done = tl.full([], False, tl.int1)
    theta = b_hi + 1
    lo = b_lo
    hi = b_hi
    mass_above = mass_above_b
    cnt_above = cnt_above_b.to(tl.int64)
    while ~done:
        shift = _next_shift(lo, hi, BIN_BITS)
        tl.debug_barrier()
        tl.store(_here(binmass_row) + bins, tl.zeros([NB], tl.int64))
        tl.debug_barrier()
        cnt = tl.zeros([NB], tl.int32)
        for start in range(0, n, CHUNK):
            key = _scratch_chunk(scratch_row, start, n, held, CHUNK)
            inside = (key >= lo) & (key <= hi)
            b = tl.where(inside, (key - lo) >> shift, 0).to(tl.int32) & (NB - 1)
            cnt += tl.histogram(b, NB, mask=inside)
            tl.atomic_add(_here(binmass_row) + b, _term(_unkey(tl.maximum(key, 0)), m, inv_t),
                          mask=inside, sem="relaxed")
        tl.debug_barrier()
        mass = tl.load(_here(binmass_row) + bins, cache_modifier=".cg").to(tl.float64)
        done, theta, new_lo, new_hi, n_win, new_above = _top_p_window(
            cnt, mass, mass, 0.0, lo, hi, shift, mass_above, mass_above, cnt_above, pk, pk,
            floor_key, NB)
        mass_above = mass_above + tl.sum(tl.where(_bin_lo(lo, shift, bins) > new_hi, mass, 0.0),
                                         0)
        cnt_above = new_above
        lo = new_lo
        hi = new_hi
    return theta


@_device
def _small_top_p(scratch_row, n, m, inv_t, b_lo, b_hi, mass_above_b, pk,
                 SMALL: tl.constexpr):
    """_scratch_top_p's threshold key for a scratch of at most SMALL entries, without its
    levels (each a memory round trip): every entry's exact mass strictly above it, summed
    over all pairs in registers, is compared with ``pk`` as _top_p_window compares a
    single key's (the same fixed-point integers, exact in float64).  The lowest key of
    bracket B kept is the threshold (b_hi + 1 when none is): the scratch holds every key
    of the bracket, so no token lies between it and _scratch_top_p's."""
    pos = tl.arange(0, SMALL)
    entry = tl.load(scratch_row + pos, mask=pos < n, other=0)
    key = (entry >> 32) & 0xFFFFFFFF
    inside = (pos < n) & (key >= b_lo) & (key <= b_hi)
    mass = tl.where(inside, _term(_unkey(tl.maximum(key, 0)), m, inv_t), 0)
    above = tl.sum(tl.where(key[None, :] > key[:, None], mass[None, :], 0), 1)
    kept = inside & (mass_above_b + above.to(tl.float64) < pk)
    return tl.min(tl.where(kept, key, b_hi + 1), 0)


@_device
def _scratch_race(scratch_row, n, held, anchor, inv_t, kept_lo, seed, off_lo, off_hi,
                  NOISE_TEST: tl.constexpr, BLOCK: tl.constexpr):
    """The cheap race over the scratch's kept entries (key >= kept_lo), BLOCK (the
    scratch stage's CHUNK) at a time, then _settle.  Returns (proved, key, index,
    logit)."""
    lanes = tl.arange(0, BLOCK)
    bias = BIAS_2_32 - anchor * inv_t
    lo32 = _u32(kept_lo)
    ub_v = tl.full([BLOCK], NEG_INF, tl.float32)
    for start in range(0, n, BLOCK):
        pos = start + lanes
        entry = _scratch_entries(scratch_row, start, n, held, BLOCK)
        key = ((entry >> 32) & 0xFFFFFFFF).to(tl.uint32)
        idx = (entry & 0x7FFFFFFF).to(tl.int32)
        kept = (pos < n) & (key >= lo32)
        w = _token_words(seed, off_lo, off_hi, idx, 0)
        c = _noise_test(_cheap_key(tl.where(kept, _unkey(key), NEG_INF), w, inv_t, bias),
                        w, NOISE_TEST)
        ub_v = tl.maximum(ub_v, c)
    return _settle(ub_v, anchor, inv_t, scratch_row, scratch_row, 0, n, kept_lo, seed,
                   off_lo, off_hi, True, BLOCK)


# ----------------------------------------------------------------------------- kernel

@triton.jit
def _sample_kernel(
    logits_ptr, stride_row, V, n_rows,
    temp_ptr, temp_val, topk_ptr, topk_val, topp_ptr, topp_val, minp_ptr, minp_val,
    seed_ptr, seed_val, offset_ptr, offset_val,
    tokens_ptr, logprobs_ptr, probs_ptr, scratch_ptr, binmass_ptr, hist_ptr, stats_ptr,
    TEMP_T: tl.constexpr, TOPK_T: tl.constexpr, TOPP_T: tl.constexpr, MINP_T: tl.constexpr,
    SEED_T: tl.constexpr, OFFSET_T: tl.constexpr,
    HAS_TOP_K: tl.constexpr, HAS_TOP_P: tl.constexpr, HAS_MIN_P: tl.constexpr,
    JOINT: tl.constexpr, PROBS: tl.constexpr, LOGPROBS: tl.constexpr, STATS: tl.constexpr,
    BLOCK: tl.constexpr, BIN_BITS: tl.constexpr, CAP: tl.constexpr, CHUNK: tl.constexpr,
    RARE_BLOCK: tl.constexpr, MAX_PASSES: tl.constexpr, NOISE_TEST: tl.constexpr,
    LANE_K: tl.constexpr,
):
    NB: tl.constexpr = 1 << BIN_BITS
    # A fixed grid of programs walks the rows, so the scratch is per program (the grid is
    # a few waves of the GPU), not per row: memory does not grow with the batch.
    program = tl.program_id(0).to(tl.int64)
    scratch_row = scratch_ptr + program * (CAP + 32)
    binmass_row = binmass_ptr + program * NB
    hist_row = hist_ptr + program * (3 * NB + BLOCK)    # 3 histograms, the collect's words
    # No loop-invariant code motion out of the row loop: LLVM would hoist the index
    # arithmetic and constants of every phase to the kernel's entry, live throughout.
    for row32 in tl.range(tl.program_id(0), n_rows, tl.num_programs(0), disable_licm=True):
        row = tl.cast(row32, tl.int64)
        lane_ok = row >= 0
        again = lane_ok
        wasted = tl.full([], 0, tl.int32)
        # a lane row (_lane_row) whose candidates outnumber the scratch runs once more,
        # the histogram way, two reads wasted (a second search inlined here would spill)
        while tl.condition(again, disable_licm=True):
            tl.debug_barrier()     # the previous row's reads of the scratch are done
            again = _sample_row(
                logits_ptr + row * stride_row, V, row,
                temp_ptr, temp_val, topk_ptr, topk_val, topp_ptr, topp_val, minp_ptr,
                minp_val, seed_ptr, seed_val, offset_ptr, offset_val,
                tokens_ptr, logprobs_ptr, probs_ptr + row * V, scratch_row, binmass_row,
                hist_row, stats_ptr + row * 2, lane_ok, wasted,
                TEMP_T, TOPK_T, TOPP_T, MINP_T, SEED_T, OFFSET_T, HAS_TOP_K, HAS_TOP_P,
                HAS_MIN_P, JOINT, PROBS, LOGPROBS, STATS, BLOCK, BIN_BITS, CAP, CHUNK,
                RARE_BLOCK, MAX_PASSES, NOISE_TEST, LANE_K)
            lane_ok = again & ~again
            wasted = tl.full([], 2, tl.int32)


@_device
def _sample_row(
    row_ptr, V, row,
    temp_ptr, temp_val, topk_ptr, topk_val, topp_ptr, topp_val, minp_ptr, minp_val,
    seed_ptr, seed_val, offset_ptr, offset_val,
    tokens_ptr, logprobs_ptr, probs_row, scratch_row, binmass_row, hist_row, stats_row,
    lane_ok, wasted,
    TEMP_T: tl.constexpr, TOPK_T: tl.constexpr, TOPP_T: tl.constexpr, MINP_T: tl.constexpr,
    SEED_T: tl.constexpr, OFFSET_T: tl.constexpr,
    HAS_TOP_K: tl.constexpr, HAS_TOP_P: tl.constexpr, HAS_MIN_P: tl.constexpr,
    JOINT: tl.constexpr, PROBS: tl.constexpr, LOGPROBS: tl.constexpr, STATS: tl.constexpr,
    BLOCK: tl.constexpr, BIN_BITS: tl.constexpr, CAP: tl.constexpr, CHUNK: tl.constexpr,
    RARE_BLOCK: tl.constexpr, MAX_PASSES: tl.constexpr, NOISE_TEST: tl.constexpr,
    LANE_K: tl.constexpr,
):
    """One row, start to finish: the whole algorithm (module docstring).  A lane row
    (_lane_row, while ``lane_ok``) whose candidates outnumber the scratch stops before
    its results and returns True, to run again without the lane (``wasted``: the reads
    of that try, counted in)."""
    LANE: tl.constexpr = HAS_TOP_K and LANE_K > 0
    greedy, inv_t, seed, offset, off_lo, off_hi, k, k_on, p, p_on, m_on, log_mp, plain = \
        _row_params(row, V, temp_ptr, temp_val, topk_ptr, topk_val, topp_ptr, topp_val,
                    minp_ptr, minp_val, seed_ptr, seed_val, offset_ptr, offset_val, TEMP_T,
                    TOPK_T, TOPP_T, MINP_T, SEED_T, OFFSET_T, HAS_TOP_K, HAS_TOP_P, HAS_MIN_P)
    no = greedy & ~greedy                                           # scalar False
    race = plain
    if PROBS:
        race = no                         # filtered_probs: no draw, the normaliser first
    redo = no

    if greedy:
        m, token = _greedy_pass(row_ptr, 0, V, BLOCK)
        _finish(row_ptr, V, row, m, inv_t, token, m, KEY_NEG_INF + 1, FIX, greedy, 1, 0,
                tokens_ptr, logprobs_ptr, probs_row, stats_row, PROBS, LOGPROBS, STATS, BLOCK)
    elif race:
        # ---- the one-read draw, then an exact race if its proof fails
        ub, proved, token, x_tok, m, z = _race_range(row_ptr, 0, V, seed, off_lo, off_hi,
                                                     inv_t, NEG_INF, KEY_NEG_INF + 1,
                                                     LOGPROBS, NOISE_TEST, BLOCK, False)
        kept_mass = tl.full([], FIX, tl.float64)
        if LOGPROBS:
            kept_mass = z * FIX
            # (an extreme temperature can overflow the groups' rescale: the exact path)
            proved = proved & (kept_mass < POS_INF) & (kept_mass >= FIX)
        if proved:
            _finish(row_ptr, V, row, m, inv_t, token, x_tok, KEY_NEG_INF + 1, kept_mass,
                    greedy, 1, 0, tokens_ptr, logprobs_ptr, probs_row, stats_row, PROBS,
                    LOGPROBS, STATS, BLOCK)
        if ~proved:  # rare: the bounds prove no winner, or the row holds +-inf
            _race_fallback(row_ptr, V, row, inv_t, greedy, seed, off_lo, off_hi, hist_row,
                           tokens_ptr, logprobs_ptr, probs_row, stats_row, PROBS, LOGPROBS,
                           STATS, BIN_BITS, BLOCK, RARE_BLOCK)
    else:
        # ---- filtered rows, and every non-greedy row of filtered_probs
        lane = no
        if LANE:
            lane = lane_ok & _lane_row(k, k_on, LANE_K)
        m, z, m_v = _pass_one(row_ptr, 0, V, inv_t, hist_row, lane, HAS_TOP_K or HAS_TOP_P,
                              LANE, BIN_BITS, BLOCK, False)
        t = tl.full([], 0, tl.uint32)
        if LANE:
            if lane:
                t = _kth_key(_key(m_v), k)
        redo = _after_first_pass(
            row_ptr, V, row, m, z, V, inv_t, greedy, plain, k, k_on, p, p_on, m_on, log_mp,
            seed, offset, off_lo, off_hi, scratch_row, binmass_row, hist_row, lane, t, wasted,
            tokens_ptr, logprobs_ptr, probs_row, stats_row, HAS_TOP_K, HAS_TOP_P, JOINT, PROBS,
            LOGPROBS, STATS, BLOCK, BIN_BITS, CAP, CHUNK, RARE_BLOCK, MAX_PASSES, NOISE_TEST,
            LANE_K)
    return redo


@_device
def _pass_one(row_ptr, lo, V, inv_t, hist_row, lane, HIST: tl.constexpr, LANE: tl.constexpr,
              BIN_BITS: tl.constexpr, BLOCK: tl.constexpr, ADD: tl.constexpr):
    """Pass 1 (_first_pass) of tokens [lo, V): with the histogram (HIST) unless the row is
    a lane row (_lane_row), which needs none."""
    if LANE:
        if lane:
            m, z, m_v = _first_pass(row_ptr, lo, V, inv_t, hist_row, False, BIN_BITS, BLOCK, ADD)
        else:
            m, z, m_v = _first_pass(row_ptr, lo, V, inv_t, hist_row, HIST, BIN_BITS, BLOCK, ADD)
    else:
        m, z, m_v = _first_pass(row_ptr, lo, V, inv_t, hist_row, HIST, BIN_BITS, BLOCK, ADD)
    return m, z, m_v


@_device
def _race_range(row_ptr, lo, V, seed, off_lo, off_hi, inv_t, x_lo, kept_lo,
                LOGPROBS: tl.constexpr, NOISE_TEST: tl.constexpr, BLOCK: tl.constexpr,
                KEPT: tl.constexpr):
    """The one-read draw over tokens [lo, V) (a row, or a chunk of one): cheap bounds per
    lane, anchored at the first tile's max so that they stay small numbers, then the
    proof.  KEPT: over the tokens at or above ``x_lo`` alone, whose key bound is
    ``kept_lo`` (the same set: _race_pass).  Returns (the largest bound, proved, the
    winner and its logit, and with LOGPROBS the max and the normaliser relative to it
    (float64; else 0 and 0))."""
    offs0, x0 = _load_tile(row_ptr, lo, V, BLOCK, True)
    anchor = tl.max(x0, 0)
    anchor = tl.where(tl.abs(anchor) < FLT_MAX, anchor, 0.0)
    c2 = _c2(inv_t)
    bias = BIAS_2_32 - anchor * inv_t
    ub_v, m_v, z_v = _race_pass(row_ptr, lo, V, seed, off_lo, off_hi, inv_t, bias, c2, x_lo,
                                LOGPROBS, NOISE_TEST, BLOCK, KEPT)
    # a lane poisoned by a NaN bound (_race_step) proves nothing: max reductions skip NaN;
    # nor do bounds under a bias overflowed to -inf (|anchor / T| past float32: every bound
    # -inf, which would read as "no finite token" to the callers)
    ub = tl.where((tl.max((ub_v != ub_v).to(tl.int32), 0) != 0) | (bias == NEG_INF),
                  POS_INF, tl.max(ub_v, 0))
    token = tl.full([], 0, tl.int32)
    x_tok = tl.full([], NEG_INF, tl.float32)
    proved = tl.full([], False, tl.int1)
    if tl.abs(ub) < POS_INF:
        proved, key_won, token, x_tok = _settle(ub_v, anchor, inv_t, row_ptr, row_ptr, lo, V,
                                                kept_lo, seed, off_lo, off_hi, False, BLOCK)
    m = tl.full([], 0.0, tl.float32)
    z = tl.full([], 0.0, tl.float64)
    if LOGPROBS:
        m = tl.max(m_v, 0)
        z = tl.sum(z_v.to(tl.float64) * tl.exp2((m_v - m) * c2).to(tl.float64), 0)
    return ub, proved, token, x_tok, m, z


@_device
def _row_params(row, V, temp_ptr, temp_val, topk_ptr, topk_val, topp_ptr, topp_val, minp_ptr,
                minp_val, seed_ptr, seed_val, offset_ptr, offset_val, TEMP_T: tl.constexpr,
                TOPK_T: tl.constexpr, TOPP_T: tl.constexpr, MINP_T: tl.constexpr,
                SEED_T: tl.constexpr, OFFSET_T: tl.constexpr, HAS_TOP_K: tl.constexpr,
                HAS_TOP_P: tl.constexpr, HAS_MIN_P: tl.constexpr):
    """A row's parameters: a tensor entry, or the scalar shared by every row.  Returns
    (greedy, 1/T, seed, offset and its halves, k, k_on, p, p_on, m_on, log min_p, plain).

    Out-of-range values can only arrive in tensors with validate=False; each has a
    defined meaning (docs/design.md, "Odd input"): T <= 0 or NaN is greedy, a NaN
    top_p / min_p is off, top_p <= 0 keeps the most probable tokens, min_p > 1 acts as 1."""
    t = _param(temp_ptr, temp_val, row, TEMP_T, tl.float32)
    seed = _param(seed_ptr, seed_val, row, SEED_T, tl.int64)
    offset = _param(offset_ptr, offset_val, row, OFFSET_T, tl.int64)
    off_lo, off_hi = _offset_halves(offset)
    greedy, inv_t = _greedy_and_inv_t(t)
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
    log_mp = tl.log(tl.where(m_on, mp, 1.0))
    plain = ~greedy & ~k_on & ~p_on & ~m_on
    return greedy, inv_t, seed, offset, off_lo, off_hi, k, k_on, p, p_on, m_on, log_mp, plain


@_device
def _race_fallback(row_ptr, V, row, inv_t, greedy, seed, off_lo, off_hi, hist_row, tokens_ptr,
                   logprobs_ptr, probs_row, stats_row, PROBS: tl.constexpr,
                   LOGPROBS: tl.constexpr, STATS: tl.constexpr, BIN_BITS: tl.constexpr,
                   BLOCK: tl.constexpr, RARE_BLOCK: tl.constexpr):
    """A row with no filter whose race proved nothing (about never), or that holds +-inf:
    the row's max, then the exact race and the normaliser, or the special rows' draw."""
    m, mode = _row_max_and_mode(row_ptr, V, RARE_BLOCK)
    if mode == 0:
        key_exact, token, x_tok = _exact_race(row_ptr, V, m, inv_t, seed, off_lo, off_hi,
                                              KEY_NEG_INF + 1, RARE_BLOCK)
        passes = 3
        kept_mass = tl.full([], FIX, tl.float64)
        if LOGPROBS:
            m_again, z, unused = _first_pass(row_ptr, 0, V, inv_t, hist_row, False,
                                             BIN_BITS, BLOCK)
            kept_mass = z * FIX
            passes = 4
        _finish(row_ptr, V, row, m, inv_t, token, x_tok, KEY_NEG_INF + 1, kept_mass, greedy,
                passes, 1, tokens_ptr, logprobs_ptr, probs_row, stats_row, PROBS, LOGPROBS,
                STATS, BLOCK)
    else:
        _special_row(row_ptr, V, row, mode, seed, off_lo, off_hi, 2, 1, tokens_ptr,
                     logprobs_ptr, probs_row, stats_row, PROBS, LOGPROBS, STATS, RARE_BLOCK)


@_device
def _after_first_pass(row_ptr, V, row, m, z, V_Z, inv_t, greedy, plain, k, k_on, p, p_on,
                      m_on, log_mp, seed, offset, off_lo, off_hi, scratch_row, binmass_row,
                      hist_row, lane, t, wasted, tokens_ptr, logprobs_ptr, probs_row,
                      stats_row,
                      HAS_TOP_K: tl.constexpr, HAS_TOP_P: tl.constexpr, JOINT: tl.constexpr,
                      PROBS: tl.constexpr, LOGPROBS: tl.constexpr, STATS: tl.constexpr,
                      BLOCK: tl.constexpr, BIN_BITS: tl.constexpr, CAP: tl.constexpr,
                      CHUNK: tl.constexpr, RARE_BLOCK: tl.constexpr, MAX_PASSES: tl.constexpr,
                      NOISE_TEST: tl.constexpr, LANE_K: tl.constexpr):
    """A filtered row (or a non-greedy row of filtered_probs) once pass 1 has its max m,
    its normaliser z (float32 sums, bounded as sums over V_Z tokens: see _sum_bounds) and
    its histogram, or for a lane row (_lane_row) the k-th largest group max's key t: the
    rest of the row, to its results (``wasted`` reads counted in).  Returns whether a
    lane row must run again (_sample_row)."""
    NB: tl.constexpr = 1 << BIN_BITS
    redo = greedy & ~greedy
    if (m == POS_INF) | (z == 0.0):  # rare: the row's max is +-inf (validate=False)
        _special_row(row_ptr, V, row, tl.where(m == POS_INF, 1, 2), seed, off_lo, off_hi,
                     1, 0, tokens_ptr, logprobs_ptr, probs_row, stats_row, PROBS,
                     LOGPROBS, STATS, RARE_BLOCK)
    elif plain:
        # filtered_probs of a row with no filter: every finite token, pass 1's sum
        _finish(row_ptr, V, row, m, inv_t, 0, m, KEY_NEG_INF + 1, z * FIX, greedy, 1, 0,
                tokens_ptr, logprobs_ptr, probs_row, stats_row, PROBS, LOGPROBS, STATS,
                BLOCK)
    else:
        token, kept_lo, kept_mass, passes, fallbacks, redo = _filtered_row(
            row_ptr, V, m, z, V_Z, inv_t, k, k_on, p, p_on, m_on, log_mp, seed, offset,
            scratch_row, binmass_row, hist_row, hist_row + 3 * NB, lane, t,
            tl.full([], 0, tl.int32), tl.full([], 0, tl.int64), greedy & ~greedy, 1 + wasted,
            greedy & ~greedy, HAS_TOP_K, HAS_TOP_P, JOINT, PROBS, LOGPROBS, LANE_K, False,
            BLOCK, BIN_BITS, CAP, CHUNK, RARE_BLOCK, MAX_PASSES, NOISE_TEST)
        if ~redo:
            _finish_filtered(row_ptr, V, row, m, inv_t, token, kept_lo, kept_mass, greedy,
                             passes, fallbacks, tokens_ptr, logprobs_ptr, probs_row, stats_row,
                             PROBS, LOGPROBS, STATS, BLOCK)
    return redo


@_device
def _finish_filtered(row_ptr, V, row, m, inv_t, token, kept_lo, kept_mass, greedy, passes,
                     fallbacks, tokens_ptr, logprobs_ptr, probs_row, stats_row,
                     PROBS: tl.constexpr, LOGPROBS: tl.constexpr, STATS: tl.constexpr,
                     BLOCK: tl.constexpr):
    """_finish for a filtered row: the token's logit read back for its log-prob."""
    x_tok = m
    if LOGPROBS:
        x_tok = _sanitize(tl.load(row_ptr + tl.minimum(tl.maximum(token, 0), V - 1)))
    _finish(row_ptr, V, row, m, inv_t, token, x_tok, kept_lo, kept_mass, greedy, passes,
            fallbacks, tokens_ptr, logprobs_ptr, probs_row, stats_row, PROBS, LOGPROBS, STATS,
            BLOCK)


@_device
def _finish(row_ptr, V, row, m, inv_t, token, x_tok, kept_lo, kept_mass, greedy, passes,
            fallbacks, tokens_ptr, logprobs_ptr, probs_row, stats_row, PROBS: tl.constexpr,
            LOGPROBS: tl.constexpr, STATS: tl.constexpr, BLOCK: tl.constexpr):
    """A row's results: its token and log-prob (the kept set's exact mass kept_mass, fixed
    point), or with PROBS its filtered_probs (one more pass: the kept set is key >=
    kept_lo); and its pass and fallback counts."""
    # [0, V) whatever happened (the contract); every path above yields such a token
    token = tl.minimum(tl.maximum(tl.cast(token, tl.int64), 0), V - 1)
    passes = tl.cast(passes, tl.int32)
    if PROBS:
        _write_pass(row_ptr, V, m, inv_t, kept_lo, greedy, token, FIX / kept_mass, probs_row,
                    BLOCK)
        passes += 1
    else:
        tl.store(tokens_ptr + row, token)
        if LOGPROBS:
            logp = _scaled(x_tok, m, inv_t).to(tl.float64) - tl.log(kept_mass / FIX)
            tl.store(logprobs_ptr + row, tl.where(greedy, 0.0, logp).to(tl.float32))
    if STATS:
        tl.store(stats_row, passes)
        tl.store(stats_row + 1, tl.cast(fallbacks, tl.int32))


@_device
def _bin_mass_pass(row_ptr, lo, V, m, inv_t, binmass_row, BIN_BITS: tl.constexpr,
                   BLOCK: tl.constexpr):
    """The exact mass of each of pass 1's bins (keys' top BIN_BITS bits) over tokens
    [lo, V) (lo a multiple of BLOCK): the sum of _term over its tokens, added by integer
    atomics (order-free: a row's chunks add into the same bins).  A token of no mass
    (below 2^-40 of the max's weight: much of a long tail) skips its atomic."""
    SHIFT: tl.constexpr = 32 - BIN_BITS
    n_full = V - (V - lo) % BLOCK
    for start in range(lo, n_full, BLOCK):  # stream: bin masses (tile RARE_BLOCK)
        offs, x = _load_tile(row_ptr, start, V, BLOCK, False)
        t = _term(x, m, inv_t)
        tl.atomic_add(_here(binmass_row) + (_key(x) >> SHIFT).to(tl.int32), t, mask=t != 0,
                      sem="relaxed")
    if n_full < V:
        offs, x = _load_tile(row_ptr, n_full, V, BLOCK, True)
        t = _term(x, m, inv_t)
        tl.atomic_add(_here(binmass_row) + (_key(x) >> SHIFT).to(tl.int32), t, mask=t != 0,
                      sem="relaxed")


@_device
def _bin_masses_of_bracket(binmass_row, lo, hi, BIN_BITS: tl.constexpr):
    """From pass 1's bins' exact masses: (the row's mass, the mass above bracket B), and
    B's bins' masses (B = [lo, hi], on pass 1's bin edges) in their place."""
    NB: tl.constexpr = 1 << BIN_BITS
    bins = tl.arange(0, NB)
    tl.debug_barrier()
    mass = tl.load(_here(binmass_row) + bins, cache_modifier=".cg")
    z = tl.sum(mass, 0)
    above = tl.sum(tl.where(bins > (hi >> (32 - BIN_BITS)).to(tl.int32), mass, 0), 0)
    _rebase_bins(_here(binmass_row), 0, lo, hi, 32 - BIN_BITS, BIN_BITS)
    return z, above


@_device
def _rebase_bins(slot, old_lo, lo, hi, shift, BIN_BITS: tl.constexpr):
    """A histogram slot of bins 2^shift keys wide from ``old_lo`` on, made the histogram of
    [lo, hi] (lo on one of its bin edges, the same width): its bins from lo's on, in place.
    Bracket B's counts and masses for an exact-bins refine, without streaming them again."""
    NB: tl.constexpr = 1 << BIN_BITS
    bins = tl.arange(0, NB)
    first = ((lo - old_lo) >> shift).to(tl.int32)
    last = ((hi - lo) >> shift).to(tl.int32)
    tl.debug_barrier()
    kept = tl.load(slot + first + bins, mask=(bins <= last) & (first + bins < NB), other=0,
                   cache_modifier=".cg")
    tl.debug_barrier()
    tl.store(slot + bins, kept)


@_device
def _classify_b(hist_row, binmass_row, b_lo, b_hi, b_shift, b_above, b_mass_lo, b_mass_hi,
                exact_bins, pk_lo, pk_hi, floor_key, key_max, m, inv_t,
                BIN_BITS: tl.constexpr):
    """Bracket B (top-p) from its last histogram: each bin's mass bounded from its count
    and edges (exact after an exact-bins refine); the bins top-p may still keep or drop
    become the new bracket.  Returns (done, threshold, lo, hi, shift, keys above, keys
    inside)."""
    NB: tl.constexpr = 1 << BIN_BITS
    bins = tl.arange(0, NB)
    hist_b = tl.load(_here(hist_row) + 2 * NB + bins)
    lo_m, hi_m, one_lo = _edge_bounds(hist_b, b_lo, b_hi, b_shift, key_max, m, inv_t, NB)
    if exact_bins:
        lo_m = tl.load(_here(binmass_row) + bins, cache_modifier=".cg").to(tl.float64)
        hi_m = lo_m
    done, theta, new_lo, new_hi, n_win, above_win = _top_p_window(
        hist_b, lo_m, hi_m, one_lo, b_lo, b_hi, b_shift, b_mass_lo, b_mass_hi, b_above, pk_lo,
        pk_hi, floor_key, NB)
    return done, theta, new_lo, new_hi, _next_shift(new_lo, new_hi, BIN_BITS), \
        above_win.to(tl.int32), tl.where(done, 0, n_win).to(tl.int32)


@_device
def _put(st, i, v):
    """Slot i of the program's state area := v (an int, a bool or a float)."""
    if v.dtype == tl.float64:
        tl.store(st + i, v.to(tl.int64, bitcast=True))
    elif v.dtype == tl.float32:
        tl.store(st + i, v.to(tl.float64).to(tl.int64, bitcast=True))
    else:
        tl.store(st + i, v.to(tl.int64))


@_device
def _get_i(st, i):
    return tl.load(st + i, volatile=True)


@_device
def _get_f(st, i):
    return tl.load(st + i, volatile=True).to(tl.float64, bitcast=True)


@_device
def _get_f32(st, i):
    return _get_f(st, i).to(tl.float32)


@_device
def _get_i32(st, i):
    return tl.load(st + i, volatile=True).to(tl.int32)


@_device
def _get_b(st, i):
    return tl.load(st + i, volatile=True) != 0


@_device
def _stash(st, a_done, a_lo, a_hi, a_shift, a_above, a_mass_lo, a_mass_hi, theta_k, b_done,
           b_lo, b_hi, b_shift, b_above, b_mass_lo, b_mass_hi, theta_p, k_set_lo, k_set_hi,
           k_set_known, exact_bins, refine_shift, z_lo, z_hi, key_mp, k, k_on, p, p_on,
           seed, offset):
    """The search's state to the program's state area for the length of a streaming pass:
    kept in registers, the thirty-odd values would be live through the pass's loop."""
    _put(st, 0, a_done)
    _put(st, 1, a_lo)
    _put(st, 2, a_hi)
    _put(st, 3, a_shift)
    _put(st, 4, a_above)
    _put(st, 5, a_mass_lo)
    _put(st, 6, a_mass_hi)
    _put(st, 7, theta_k)
    _put(st, 8, b_done)
    _put(st, 9, b_lo)
    _put(st, 10, b_hi)
    _put(st, 11, b_shift)
    _put(st, 12, b_above)
    _put(st, 13, b_mass_lo)
    _put(st, 14, b_mass_hi)
    _put(st, 15, theta_p)
    _put(st, 16, k_set_lo)
    _put(st, 17, k_set_hi)
    _put(st, 18, k_set_known)
    _put(st, 19, exact_bins)
    _put(st, 20, refine_shift)
    _put(st, 21, z_lo)
    _put(st, 22, z_hi)
    _put(st, 23, key_mp)
    _put(st, 24, k)
    _put(st, 25, k_on)
    _put(st, 26, p)
    _put(st, 27, p_on)
    _put(st, 28, seed)
    _put(st, 29, offset)
    tl.debug_barrier()


@_device
def _unstash(st):
    """The search's state back from the program's state area (after a barrier, so that
    the compiler reads it rather than keeping the values)."""
    tl.debug_barrier()
    return _get_b(st, 0), _get_i(st, 1), _get_i(st, 2), _get_i32(st, 3), _get_i32(st, 4), \
        _get_f32(st, 5), _get_f32(st, 6), _get_i(st, 7), _get_b(st, 8), _get_i(st, 9), \
        _get_i(st, 10), _get_i32(st, 11), _get_i32(st, 12), _get_f32(st, 13), \
        _get_f32(st, 14), _get_i(st, 15), _get_f32(st, 16), _get_f32(st, 17), _get_b(st, 18), \
        _get_b(st, 19), _get_i32(st, 20), _get_f32(st, 21), _get_f32(st, 22), _get_i(st, 23), \
        _get_i(st, 24), _get_b(st, 25), _get_f(st, 26), _get_b(st, 27), _get_i(st, 28), \
        _get_i(st, 29)


@_device
def _lane_bracket(st, t, m, k, k_on, p, p_on, key_mp, seed, offset):
    """A lane row's search state (_lane_row), stashed for the collect pass and
    _after_collect, in place of a search: both thresholds lie in [t, the max's key] with
    nothing above, bracket A for top-k and bracket B for top-p (whose floor, top-k's
    threshold, drops what lies below the top-k set).  Returns the candidates' lowest key."""
    no = k_on & ~k_on
    lo = tl.maximum(t.to(tl.int64), KEY_NEG_INF + 1)
    key_max = _key(m).to(tl.int64)
    i0 = tl.full([], 0, tl.int32)
    f0 = tl.full([], 0.0, tl.float32)
    _stash(st, no, lo, key_max, i0, i0, f0, f0, lo, ~p_on, lo, key_max, i0, i0, f0, f0, lo, f0,
           f0, no, no, i0, f0, f0, key_mp, k, k_on, p, p_on, seed, offset)
    return lo


@_device
def _search_and_collect(row_ptr, V, m, z, V_Z, inv_t, k, k_on, p, p_on, key_mp, seed, offset,
                        scratch_row, binmass_row, hist_row, lane, t, passes,
                        HAS_TOP_K: tl.constexpr, HAS_TOP_P: tl.constexpr, JOINT: tl.constexpr,
                        LANE: tl.constexpr, BLOCK: tl.constexpr, BIN_BITS: tl.constexpr,
                        CAP: tl.constexpr, CHUNK: tl.constexpr, RARE_BLOCK: tl.constexpr,
                        MAX_PASSES: tl.constexpr):
    """After pass 1 (``passes`` reads so far): the brackets, by the search (with its
    refine passes) or for a lane row from t, then the collect pass unless the candidates
    outnumber the scratch.  Returns (candidates, exact Z when top-p needs it, dense, reads
    so far)."""
    NB: tl.constexpr = 1 << BIN_BITS
    dense = k_on & ~k_on
    cand_lo = tl.full([], 0, tl.int64)
    if LANE:
        if lane:
            cand_lo = _lane_bracket(scratch_row + CAP, t, m, k, k_on, p, p_on, key_mp, seed,
                                    offset)
    if ~lane:
        searched, dense, cand_lo = _search(
            row_ptr, V, m, z, V_Z, inv_t, k, k_on, p, p_on, key_mp, seed, offset,
            scratch_row, binmass_row, hist_row, k_on & ~k_on, HAS_TOP_K, HAS_TOP_P, JOINT,
            BLOCK, BIN_BITS, CAP, RARE_BLOCK, MAX_PASSES)
        passes += searched - 1
    n = tl.full([], 0, tl.int32)
    zc = tl.full([], 0, tl.int64)
    if ~dense:
        n, zc, unused_a, unused_b = _collect_pass(
            row_ptr, 0, V, m, inv_t, cand_lo, KEY_NONE, KEY_NONE, 0,
            _need_z(scratch_row + CAP, HAS_TOP_P, HAS_TOP_K and not JOINT), 0, 0, scratch_row,
            scratch_row, hist_row + 3 * NB, False, False, CAP, CHUNK, BLOCK)
        passes += 1
    return n, zc, dense, passes


@_device
def _stashed_params(st):
    """The row's parameters from the stashed search state (_stash's slots): (k, k_on, p,
    p_on, min-p's lowest key, seed, offset)."""
    return _get_i(st, 24), _get_b(st, 25), _get_f(st, 26), _get_b(st, 27), _get_i(st, 23), \
        _get_i(st, 28), _get_i(st, 29)


@_device
def _filtered_row(row_ptr, V, m, z, V_Z, inv_t, k, k_on, p, p_on, m_on, log_mp, seed, offset,
                  scratch_row, binmass_row, hist_row, words_row, lane, t, n, zc, dense, passes,
                  collected, HAS_TOP_K: tl.constexpr, HAS_TOP_P: tl.constexpr,
                  JOINT: tl.constexpr, PROBS: tl.constexpr, LOGPROBS: tl.constexpr,
                  LANE_K: tl.constexpr, INLINE: tl.constexpr, BLOCK: tl.constexpr,
                  BIN_BITS: tl.constexpr, CAP: tl.constexpr, CHUNK: tl.constexpr,
                  RARE_BLOCK: tl.constexpr, MAX_PASSES: tl.constexpr,
                  NOISE_TEST: tl.constexpr):
    """The search, the collect pass and the race of a row with filters (or of a filtered
    row of filtered_probs), after pass 1 (``passes`` reads so far), or with ``collected``
    after the collect pass too (a split row's last launch: ``n`` candidates, exact Z
    ``zc``, ``dense``).  A lane row (_lane_row: its candidates are the keys >= t) whose
    candidates outnumber the scratch goes the histogram way: with INLINE here (pass 1
    again, the search), else it stops for its caller to run it again.  Returns (token,
    kept_lo, exact kept mass, passes, fallbacks, stopped)."""
    LANE: tl.constexpr = HAS_TOP_K and LANE_K > 0
    no = k_on & ~k_on
    if ~collected:
        n, zc, dense, passes = _search_and_collect(
            row_ptr, V, m, z, V_Z, inv_t, k, k_on, p, p_on,
            _min_p_floor(m, inv_t, m_on, log_mp), seed, offset, scratch_row, binmass_row,
            hist_row, lane, t, passes, HAS_TOP_K,
            HAS_TOP_P, JOINT, LANE, BLOCK, BIN_BITS, CAP, CHUNK, RARE_BLOCK, MAX_PASSES)
    stop = no
    if LANE:
        if lane & (n > CAP):  # rare: more candidates than the scratch: the histogram way
            if INLINE:
                # (straight code, not a loop back to the search, and the parameters
                # from the lane's stash: either way they would be live through the
                # search, which spills)
                k, k_on, p, p_on, key_mp, seed, offset = _stashed_params(scratch_row + CAP)
                m, z, unused = _first_pass(row_ptr, 0, V, inv_t, hist_row, True, BIN_BITS,
                                           BLOCK)
                n, zc, dense, passes = _search_and_collect(
                    row_ptr, V, m, z, V, inv_t, k, k_on, p, p_on, key_mp, seed, offset,
                    scratch_row, binmass_row, hist_row, no, t, passes + 1, HAS_TOP_K,
                    HAS_TOP_P, JOINT, LANE, BLOCK, BIN_BITS, CAP, CHUNK, RARE_BLOCK,
                    MAX_PASSES)
            else:
                stop = ~no
    token = tl.full([], 0, tl.int32)
    kept_lo = tl.full([], 0, tl.int64)
    kept_mass = tl.full([], FIX, tl.float64)
    fallbacks = tl.full([], 0, tl.int32)
    if ~stop:
        token, kept_lo, kept_mass, passes, fallbacks = _after_collect(
            row_ptr, V, m, inv_t, n, zc, dense, passes, scratch_row, binmass_row, words_row,
            HAS_TOP_K, HAS_TOP_P, JOINT, PROBS, LOGPROBS, BLOCK, BIN_BITS, CAP, CHUNK,
            RARE_BLOCK, NOISE_TEST)
    return token, kept_lo, kept_mass, passes, fallbacks, stop


@_device
def _search(row_ptr, V, m, z, V_Z, inv_t, k, k_on, p, p_on, key_mp, seed, offset,
            scratch_row, binmass_row, hist_row, bins_ready, HAS_TOP_K: tl.constexpr,
            HAS_TOP_P: tl.constexpr, JOINT: tl.constexpr, BLOCK: tl.constexpr,
            BIN_BITS: tl.constexpr, CAP: tl.constexpr, RARE_BLOCK: tl.constexpr,
            MAX_PASSES: tl.constexpr):
    """The search of a filtered row, from pass 1's max m, normaliser z (bounded as a sum
    over V_Z tokens) and histogram, with its refine passes: the brackets of the
    thresholds, narrow enough for the scratch.  With ``bins_ready`` the bin masses of
    top-p alone are already summed (by a split launch): not streamed again, and counted
    as a read whether the search uses them or not.  Returns (passes so far, dense: more
    candidates than the scratch holds, the candidates' lowest key); the state waits in
    the state area (_stash) for the collect pass and _after_collect."""
    NB: tl.constexpr = 1 << BIN_BITS
    TOP_K_FIRST: tl.constexpr = HAS_TOP_K and not JOINT
    bins = tl.arange(0, NB)
    st = scratch_row + CAP                          # the program's state area
    passes = tl.full([], 1, tl.int32)               # pass 1 is read
    no = k_on & ~k_on
    key_max = _key(m).to(tl.int64)
    # The top-p normaliser K is Z (joint order, or no top-k) or the top-k set's mass.
    # Until the collect pass every mass is a bound: pass 1's float32 sum bounds Z.
    z_lo, z_hi = _sum_bounds(z, V_Z, BLOCK)

    # Bracket A holds the top-k threshold key, bracket B the top-p one: keys [lo, hi] in
    # 2^BIN_BITS bins of width 2^shift (the span of the bracket's last histogram); "done"
    # once the threshold is exact.
    a_done = ~k_on
    a_lo = tl.full([], 0, tl.int64)
    a_hi = tl.full([], 0xFFFFFFFF, tl.int64)
    a_shift = tl.full([], 32 - BIN_BITS, tl.int32)
    a_above = tl.full([], 0, tl.int32)              # keys above bracket A's span
    a_mass_lo = tl.full([], 0.0, tl.float32)        # their mass, bounded
    a_mass_hi = tl.full([], 0.0, tl.float32)
    theta_k = tl.full([], 0, tl.int64)
    b_done = ~p_on
    b_lo = tl.full([], 0, tl.int64)
    b_hi = tl.full([], 0xFFFFFFFF, tl.int64)
    b_shift = tl.full([], 32 - BIN_BITS, tl.int32)
    b_above = tl.full([], 0, tl.int32)              # keys above bracket B's span
    b_mass_lo = tl.full([], 0.0, tl.float32)        # their mass, bounded
    b_mass_hi = tl.full([], 0.0, tl.float32)
    theta_p = tl.full([], 0, tl.int64)
    k_set_lo = tl.full([], 0.0, tl.float32)         # the top-k set's mass, once a refine
    k_set_hi = tl.full([], 0.0, tl.float32)         # summed it from theta_k
    k_set_known = no
    exact_bins = no                                 # B's last histogram has exact masses
    # B's bin width at the last count histogram (pass 1's to start): a count refine at
    # no finer width would repeat it, so that refine sums exact bin masses instead
    refine_shift = tl.full([], 32 - BIN_BITS, tl.int32)
    n_a = tl.full([], 0, tl.int32)
    n_b = tl.full([], 0, tl.int32)
    searching = ~no

    if HAS_TOP_K or HAS_TOP_P:   # min-p alone has no search (Triton 3.6 crashed on its dead code)
        while tl.condition(searching & (passes < MAX_PASSES), disable_licm=True):
            # -- K: bounds on the top-p normaliser
            k_lo = z_lo.to(tl.float64)
            k_hi = z_hi.to(tl.float64)
            if TOP_K_FIRST:
                if k_on & k_set_known:
                    k_lo = k_set_lo.to(tl.float64)
                    k_hi = k_set_hi.to(tl.float64)
            # -- bracket A (top-k): the bin of the k-th largest key, from exact counts.
            n_a = tl.full([], 0, tl.int32)
            tl.debug_barrier()
            if ~a_done:
                hist_a = tl.load(_here(hist_row) + NB + bins)
                bk, above_bk, cnt_bk, bk_lo, bk_hi = _top_k_window(
                    hist_a, a_lo, a_hi, a_shift, a_above, k, NB)
                if TOP_K_FIRST and HAS_TOP_P:
                    k_lo, k_hi = _top_k_mass_bounds(hist_a, a_lo, a_hi, a_shift, bk,
                                                    k - above_bk, a_mass_lo, a_mass_hi, key_max,
                                                    m, inv_t, NB)
                # exact when bk is a single key, or when all of bk is kept
                a_done = (a_shift == 0) | (above_bk + cnt_bk == k)
                theta_k = bk_lo
                a_above = above_bk.to(tl.int32)
                a_lo = bk_lo
                a_hi = bk_hi
                n_a = tl.where(a_done, 0, cnt_bk).to(tl.int32)
            # -- bracket B (top-p): each bin's mass bounded from its count and edges (exact
            # after an exact-bins refine)
            n_b = tl.full([], 0, tl.int32)
            if ~b_done:
                floor_key = tl.maximum(key_mp, tl.where(k_on, tl.where(a_done, theta_k, a_lo), 0))
                pk_lo = p * k_lo
                pk_hi = p * k_hi
                # (the rest of the search's state waits in memory: the bins' float64 scans
                # need the registers)
                _stash(st, a_done, a_lo, a_hi, a_shift, a_above, a_mass_lo, a_mass_hi, theta_k,
                       b_done, b_lo, b_hi, b_shift, b_above, b_mass_lo, b_mass_hi, theta_p,
                       k_set_lo, k_set_hi, k_set_known, exact_bins, refine_shift, z_lo, z_hi,
                       key_mp, k, k_on, p, p_on, seed, offset)
                b_done, theta_p, b_lo, b_hi, b_shift, b_above, n_b = _classify_b(
                    hist_row, binmass_row, b_lo, b_hi, b_shift, b_above, b_mass_lo, b_mass_hi,
                    exact_bins, pk_lo, pk_hi, floor_key, key_max, m, inv_t, BIN_BITS)
                a_done, a_lo, a_hi, a_shift, a_above, a_mass_lo, a_mass_hi, theta_k, b_done_, \
                    b_lo_, b_hi_, b_shift_, b_above_, b_mass_lo, b_mass_hi, theta_p_, k_set_lo, \
                    k_set_hi, k_set_known, exact_bins, refine_shift, z_lo, z_hi, key_mp, k, k_on, \
                    p, p_on, seed, offset = _unstash(st)

            searching = n_a + n_b > CAP
            if searching:
                # ---- refine: finer histograms of the brackets, and bounds on the masses
                # above them; exact bin masses when the last refine gained no resolution
                exact_bins = ~b_done & (b_shift >= refine_shift)
                bins_now = exact_bins & ~k_on & (b_shift == 32 - BIN_BITS)
                if exact_bins:
                    if ~(bins_now & bins_ready):
                        tl.store(_here(binmass_row) + bins, tl.zeros([NB], tl.int64))
                    # B's counts: the histogram just classified, from B's first bin on
                    _rebase_bins(_here(hist_row) + 2 * NB, _get_i(st, 9), b_lo, b_hi,
                                 b_shift, BIN_BITS)
                refine_shift = b_shift
                a_shift = tl.where(a_done, a_shift, _next_shift(a_lo, a_hi, BIN_BITS)).to(tl.int32)
                k_from = tl.full([], 0, tl.int64)               # K = Z ...
                if TOP_K_FIRST:
                    k_from = tl.where(k_on, tl.where(a_done, theta_k, a_hi + 1), 0)   # ... or not
                _put(st, 30, k_from)
                _stash(st, a_done, a_lo, a_hi, a_shift, a_above, a_mass_lo, a_mass_hi, theta_k,
                       b_done, b_lo, b_hi, b_shift, b_above, b_mass_lo, b_mass_hi, theta_p,
                       k_set_lo, k_set_hi, k_set_known, exact_bins, refine_shift, z_lo, z_hi,
                       key_mp, k, k_on, p, p_on, seed, offset)
                if bins_now:
                    # the second pass of top-p alone: pass 1's count bounds are too loose to
                    # bracket its boundary (docs/design.md, "Top-p alone"), so the exact mass
                    # of each of pass 1's bins; K = Z (k_from = 0: top-k is off)
                    if ~bins_ready:
                        _bin_mass_pass(row_ptr, 0, V, m, inv_t, binmass_row, BIN_BITS,
                                       RARE_BLOCK)
                    k_exact, b_exact = _bin_masses_of_bracket(binmass_row, b_lo, b_hi, BIN_BITS)
                    k_sum = tl.full([], 0.0, tl.float64)
                    b_sum = tl.full([], 0.0, tl.float64)
                elif exact_bins:  # rare: a count refine that gained no resolution
                    k_sum, b_sum, k_exact, b_exact = _refine_pass(
                        row_ptr, V, m, inv_t, ~a_done, a_lo, a_hi, a_shift, ~b_done, b_lo, b_hi,
                        b_shift, n_b, k_from, b_hi + 1, binmass_row, hist_row, TOP_K_FIRST, True,
                        BIN_BITS, RARE_BLOCK)
                else:
                    k_sum, b_sum, k_exact, b_exact = _refine_pass(
                        row_ptr, V, m, inv_t, ~a_done, a_lo, a_hi, a_shift, ~b_done, b_lo, b_hi,
                        b_shift, n_b, k_from, b_hi + 1, binmass_row, hist_row, TOP_K_FIRST, False,
                        BIN_BITS, BLOCK)
                passes += 1
                bins_ready = bins_ready & ~bins_now
                a_done, a_lo, a_hi, a_shift, a_above, a_mass_lo, a_mass_hi, theta_k, b_done, \
                    b_lo, b_hi, b_shift, b_above, b_mass_lo, b_mass_hi, theta_p, k_set_lo, \
                    k_set_hi, k_set_known, exact_bins, refine_shift, z_lo, z_hi, key_mp, k, \
                    k_on, p, p_on, seed, offset = _unstash(st)
                k_from = _get_i(st, 30)
                sum_lo, sum_hi = _sum_bounds(k_sum, V, BLOCK)
                ex_lo, ex_hi = _bounds32(k_exact.to(tl.float64), k_exact.to(tl.float64))
                sum_lo = tl.where(exact_bins, ex_lo, sum_lo)
                sum_hi = tl.where(exact_bins, ex_hi, sum_hi)
                if k_from == 0:
                    if exact_bins:                   # (a count refine keeps pass 1's bounds)
                        z_lo = sum_lo
                        z_hi = sum_hi
                elif a_done:
                    k_set_lo = sum_lo
                    k_set_hi = sum_hi
                    k_set_known = ~no
                else:
                    a_mass_lo = sum_lo
                    a_mass_hi = sum_hi
                b_mass_lo, b_mass_hi = _sum_bounds(b_sum, V, BLOCK)
                ex_lo, ex_hi = _bounds32(b_exact.to(tl.float64), b_exact.to(tl.float64))
                b_mass_lo = tl.where(exact_bins, ex_lo, b_mass_lo)
                b_mass_hi = tl.where(exact_bins, ex_hi, b_mass_hi)

    # ---- collect: every token whose status or mass still matters goes to the scratch:
    # the brackets and every key above the lower one.  With more of them than the
    # scratch holds, only the brackets, and the masses above them streamed.
    need_k_mass = no
    if TOP_K_FIRST:
        need_k_mass = ~b_done & k_on
    theta_k_lo = tl.where(a_done, theta_k, a_lo)
    kept_lo = tl.maximum(tl.maximum(tl.where(k_on, theta_k_lo, 0),
                                    tl.where(p_on, tl.where(b_done, theta_p, b_lo), 0)), key_mp)
    cand_lo = kept_lo
    cand_lo = tl.where(~a_done, tl.minimum(cand_lo, a_lo), cand_lo)
    cand_lo = tl.where(need_k_mass, tl.minimum(cand_lo, theta_k_lo), cand_lo)
    cand_lo = tl.where(~b_done, tl.minimum(cand_lo, b_lo), cand_lo)
    # -inf logits have no mass and are never kept: never candidates (nor the tail's
    # padding, whose logits read as -inf)
    cand_lo = tl.maximum(cand_lo, KEY_NEG_INF + 1)
    # keys >= cand_lo: exact where a bracket sets it, else pass 1's bins
    n_cand = tl.full([], 0, tl.int64)     # min-p alone has no histogram
    if HAS_TOP_K or HAS_TOP_P:
        n_cand = tl.sum(tl.where(bins.to(tl.int64) >= (cand_lo >> (32 - BIN_BITS)),
                                 tl.load(_here(hist_row) + bins), 0), 0).to(tl.int64)
    n_cand = tl.where(~a_done & (cand_lo == a_lo), a_above + n_a, n_cand)
    n_cand = tl.where(~b_done & (cand_lo == b_lo), b_above + n_b, n_cand)
    # top-p settled by the search: b_above counts the keys >= theta_p exactly
    n_cand = tl.where(p_on & b_done & (cand_lo == theta_p), b_above, n_cand)
    dense = n_cand > CAP
    passes += bins_ready.to(tl.int32)            # bin masses summed ahead, not needed
    _stash(st, a_done, a_lo, a_hi, a_shift, a_above, a_mass_lo, a_mass_hi, theta_k, b_done,
           b_lo, b_hi, b_shift, b_above, b_mass_lo, b_mass_hi, theta_p, k_set_lo, k_set_hi,
           k_set_known, exact_bins, refine_shift, z_lo, z_hi, key_mp, k, k_on, p, p_on, seed,
           offset)
    return passes, dense, cand_lo


@_device
def _need_z(st, HAS_TOP_P: tl.constexpr, TOP_K_FIRST: tl.constexpr):
    """Whether the collect pass sums the exact normaliser Z (top-p still open, and its K
    is Z), from the stashed search state; without top-p, never (known at compile time:
    the collect loop then carries no sum)."""
    if HAS_TOP_P:
        need = ~_get_b(st, 8)                          # ~b_done
        if TOP_K_FIRST:
            need = need & ~_get_b(st, 25)              # K is the top-k set's mass
        return need
    else:
        return False


@_device
def _after_collect(row_ptr, V, m, inv_t, n, zc, dense, passes, scratch_row, binmass_row,
                   words_row, HAS_TOP_K: tl.constexpr, HAS_TOP_P: tl.constexpr,
                   JOINT: tl.constexpr, PROBS: tl.constexpr, LOGPROBS: tl.constexpr,
                   BLOCK: tl.constexpr, BIN_BITS: tl.constexpr, CAP: tl.constexpr,
                   CHUNK: tl.constexpr, RARE_BLOCK: tl.constexpr, NOISE_TEST: tl.constexpr):
    """A filtered row after its collect pass (``n`` candidates in the scratch, exact Z
    ``zc`` when top-p needs it), or with ``dense`` when its candidates outnumber the
    scratch: the exact thresholds, the race over the kept tokens and their mass.  Returns
    (token, kept_lo, exact kept mass, passes, fallbacks)."""
    TOP_K_FIRST: tl.constexpr = HAS_TOP_K and not JOINT
    # top-p over at most this many entries by pairs (_small_top_p): 8 pairs a thread;
    # filtered_probs keeps the levels (by pairs its write pass spilled 56 B, Triton 3.9)
    SMALL_P: tl.constexpr = 1 if PROBS else \
        (SMALL_TOP_P if BLOCK >= 4096 else SMALL_TOP_P // 4)
    st = scratch_row + CAP
    no = dense & ~dense
    s_a = tl.full([], 0.0, tl.float64)          # exact mass at or above from_a
    s_b = tl.full([], 0.0, tl.float64)          # exact mass above bracket B
    z_exact = zc.to(tl.float64)                 # exact Z, when top-p needs it
    dense = dense | (n > CAP)
    if dense:  # rare: more tokens may be kept than the scratch holds
        a_done = _get_b(st, 0)
        a_lo = _get_i(st, 1)
        a_hi = _get_i(st, 2)
        b_done = _get_b(st, 8)
        b_lo = _get_i(st, 9)
        b_hi = _get_i(st, 10)
        n, zc, above_a, above_b = _collect_pass(
            row_ptr, 0, V, m, inv_t, tl.where(a_done, KEY_NONE, a_lo), tl.where(a_done, 0, a_hi),
            tl.where(b_done, KEY_NONE, b_lo), tl.where(b_done, 0, b_hi),
            _need_z(st, HAS_TOP_P, TOP_K_FIRST),
            tl.where(a_done, _get_i(st, 7), a_hi + 1), b_hi + 1, scratch_row, scratch_row,
            words_row, True, False, CAP, CHUNK, RARE_BLOCK)
        passes += 1
        z_exact = zc.to(tl.float64)
        s_a = above_a.to(tl.float64)
        s_b = above_b.to(tl.float64)
    a_done, a_lo, a_hi, a_shift, a_above, a_mass_lo, a_mass_hi, theta_k, b_done, b_lo, b_hi, \
        b_shift, b_above, b_mass_lo, b_mass_hi, theta_p, k_set_lo, k_set_hi, k_set_known, \
        exact_bins, refine_shift, z_lo, z_hi, key_mp, k, k_on, p, p_on, seed, \
        offset = _unstash(st)
    from_a = tl.where(a_done, theta_k, a_hi + 1)
    held = _scratch_held(scratch_row, n, CHUNK)
    if ~dense:
        s_a = _scratch_mass(scratch_row, n, held, m, inv_t, from_a, KEY_NONE, CHUNK)
        s_b = _scratch_mass(scratch_row, n, held, m, inv_t, b_hi + 1, KEY_NONE, CHUNK)
    # ---- the exact thresholds, from the scratch
    if ~a_done:
        theta_k = _scratch_top_k(scratch_row, n, held, k, a_lo, a_hi, a_above, BIN_BITS,
                                 CHUNK)
        # the top-k set's mass: above bracket A (s_a) and bracket A's kept keys
        s_a += _scratch_mass(scratch_row, n, held, m, inv_t, theta_k, a_hi, CHUNK)
    if ~b_done:
        k_norm = z_exact
        if TOP_K_FIRST:
            k_norm = tl.where(k_on, s_a, z_exact)
        if n <= SMALL_P:
            theta_p = _small_top_p(scratch_row, n, m, inv_t, b_lo, b_hi, s_b, p * k_norm,
                                   SMALL_P)
        else:
            theta_p = _scratch_top_p(scratch_row, binmass_row, n, held, m, inv_t, b_lo,
                                     b_hi, s_b, b_above, p * k_norm,
                                     tl.maximum(key_mp, tl.where(k_on, theta_k, 0)),
                                     BIN_BITS, CHUNK)
    kept_lo = tl.maximum(tl.maximum(tl.where(k_on, theta_k, 0), tl.where(p_on, theta_p, 0)),
                         key_mp)
    off_lo, off_hi = _offset_halves(offset)
    # ---- the race over the kept tokens, and their exact mass
    token = tl.full([], 0, tl.int32)
    kept_mass = tl.full([], FIX, tl.float64)
    proved = ~no
    if dense:  # rare: more tokens may be kept than the scratch holds
        ub_v, kept_fix = _kept_race_pass(row_ptr, V, seed, off_lo, off_hi, m, inv_t,
                                         BIAS_2_32 - m * inv_t, kept_lo, LOGPROBS or PROBS,
                                         NOISE_TEST, BLOCK)
        passes += 1
        kept_mass = kept_fix.to(tl.float64)
        if not PROBS:
            proved, key_won, token, x_won = _settle(ub_v, m, inv_t, row_ptr, scratch_row, 0, V,
                                                    kept_lo, seed, off_lo, off_hi, False,
                                                    BLOCK)
    else:
        kept_mass = _scratch_mass(scratch_row, n, held, m, inv_t, kept_lo, KEY_NONE, CHUNK)
        if not PROBS:
            proved, key_won, token, x_won = _scratch_race(scratch_row, n, held, m, inv_t,
                                                          kept_lo, seed, off_lo, off_hi,
                                                          NOISE_TEST, CHUNK)
    fallbacks = tl.full([], 0, tl.int32)
    if ~proved:  # rare: the bounds prove no winner
        fallbacks += 1
        key_exact, token, x_exact = _exact_race(row_ptr, V, m, inv_t, seed, off_lo, off_hi,
                                                kept_lo, RARE_BLOCK)
        passes += 1
    return token, kept_lo, kept_mass, passes, fallbacks


# ----------------------------------------------------------------------------- split rows
# Small batches: each row is cut into chunks of whole tiles, one program per (chunk, row),
# so that a batch of one still fills the GPU.  Each program streams its chunk once and
# leaves a summary (PART int64 slots); the chunks of a row count themselves in with an
# atomic, and the last to arrive combines the summaries and finishes the row.  No program
# waits for another (the interpreter runs them one after another), and every combination
# is exact: maxima, race winners (ties to the lowest index), integer histograms.

PART = tl.constexpr(4)          # a chunk's summary: token or flag, logit, max, normaliser
PARTS_AT_ONCE = tl.constexpr(64)
PART_NONE = tl.constexpr(2 ** 31 - 1)   # the chunk has no finite logit (NO_TOKEN)
PART_UNSURE = tl.constexpr(-1)          # the chunk's race proved nothing: the exact way


@_device
def _fence():
    """fence.acq_rel.gpu in every thread: a program's stores are visible device-wide
    before its arrival is counted, and the last program sees every chunk's stores after
    it (the CUDA "threadfence reduction" pattern).  Nothing in the interpreter."""
    if not IN_INTERPRETER:
        tl.inline_asm_elementwise("fence.acq_rel.gpu; mov.b32 $0, $1;", "=r,r",
                                  [tl.full([], 0, tl.int32)], dtype=tl.int32, is_pure=False,
                                  pack=1)


@_device
def _part(parts_row, c, ok, slot):
    """Slot ``slot`` of the summaries of chunks ``c`` (int64; 0 where not ok)."""
    return tl.load(parts_row + c * PART + slot, mask=ok, other=0, cache_modifier=".cg")


@_device
def _part_f(parts_row, c, ok, slot, other):
    return tl.where(ok, _part(parts_row, c, ok, slot).to(tl.float64, bitcast=True), other)


@_device
def _combine_greedy(parts_row, n_chunks):
    """(max, first index of it) over the chunks' (max, first index)."""
    best_x = tl.full([], NEG_INF, tl.float64)
    best_i = tl.full([], NO_TOKEN, tl.int64)
    for c0 in range(0, n_chunks, PARTS_AT_ONCE):
        c = c0 + tl.arange(0, PARTS_AT_ONCE)
        ok = c < n_chunks
        x = _part_f(parts_row, c, ok, 1, NEG_INF)
        xm = tl.max(x, 0)
        im = tl.min(tl.where(ok & (x == xm), _part(parts_row, c, ok, 0), NO_TOKEN), 0)
        win = (xm > best_x) | ((xm == best_x) & (im < best_i))
        best_x = tl.where(win, xm, best_x)
        best_i = tl.where(win, im, best_i)
    return best_x.to(tl.float32), best_i


@_device
def _combine_race(parts_row, n_chunks, inv_t, seed, off_lo, off_hi):
    """The race's winner over the chunks' winners.

    Each chunk proved its winner against its own tokens; the row's winner is the best of
    theirs, keys recomputed exactly under one anchor (the best winners' logit: any anchor
    gives the same argmax), ties to the lowest index.  Returns (sure, token, its logit):
    not sure when a chunk proved nothing, or no chunk has a finite logit."""
    inv_t64 = inv_t.to(tl.float64)
    anchor = tl.full([], NEG_INF, tl.float64)
    unsure = tl.full([], 0, tl.int32)
    for c0 in range(0, n_chunks, PARTS_AT_ONCE):
        c = c0 + tl.arange(0, PARTS_AT_ONCE)
        ok = c < n_chunks
        idx = _part(parts_row, c, ok, 0)
        won = ok & (idx >= 0) & (idx < PART_NONE)
        anchor = tl.maximum(anchor, tl.max(_part_f(parts_row, c, won, 1, NEG_INF), 0))
        unsure += tl.sum((ok & (idx == PART_UNSURE)).to(tl.int32), 0)
    anchor = tl.where(anchor > NEG_INF, anchor, 0.0)
    best_key = tl.full([], NEG_INF, tl.float64)
    best_i = tl.full([], NO_TOKEN, tl.int32)
    best_x = tl.full([], NEG_INF, tl.float32)
    for c0 in range(0, n_chunks, PARTS_AT_ONCE):
        c = c0 + tl.arange(0, PARTS_AT_ONCE)
        ok = c < n_chunks
        idx64 = _part(parts_row, c, ok, 0)
        won = ok & (idx64 >= 0) & (idx64 < PART_NONE)
        idx = tl.where(won, idx64, 0).to(tl.int32)
        x = _part_f(parts_row, c, won, 1, NEG_INF).to(tl.float32)
        g = _gumbel(_token_words(seed, off_lo, off_hi, idx, 0),
                    _token_words(seed, off_lo, off_hi, idx, 1))
        key = tl.where(won, _exact_key(x, anchor, inv_t64, g), NEG_INF)
        k_best = tl.max(key, 0)
        i_best = tl.min(tl.where(won & (key == k_best), idx, NO_TOKEN), 0)
        x_best = tl.max(tl.where(won & (key == k_best) & (idx == i_best), x, NEG_INF), 0)
        win = (k_best > best_key) | ((k_best == best_key) & (i_best < best_i))
        best_key = tl.where(win, k_best, best_key)
        best_i = tl.where(win, i_best, best_i)
        best_x = tl.where(win, x_best, best_x)
    return (unsure == 0) & (best_key > NEG_INF), best_i, best_x


@_device
def _max_part(parts_row, n_chunks, slot):
    """The largest of the chunks' int64 summaries in ``slot`` (non-negative)."""
    best = tl.full([], 0, tl.int64)
    for c0 in range(0, n_chunks, PARTS_AT_ONCE):
        c = c0 + tl.arange(0, PARTS_AT_ONCE)
        best = tl.maximum(best, tl.max(_part(parts_row, c, c < n_chunks, slot), 0))
    return best


@_device
def _one_launch_row(lane, k, p_on, n_chunks, JOINT_TOP_P: tl.constexpr, CHUNK: tl.constexpr,
                    CAP: tl.constexpr):
    """Whether a split lane row (_lane_row) finishes in its first launch, no collect
    launch: each chunk gathers its own top-k candidates right after its pass 1, the keys
    >= t_c, the k-th largest of the chunk's group maxima (at least k tokens of the row lie
    at or above it, so the row's k-th largest logit, and every kept key, is >= the
    largest t_c: the last program settles on the scratch with bracket [max t_c, the
    max's key], as _lane_bracket).  At least k candidates a chunk, a few more where top
    tokens share a group: only while S x k fit twice the scratch stage's registers
    (CHUNK), which _top_k_of_scratch then narrows to the top-k set, and half the scratch
    (more would send the row the histogram way, two reads more).  Not for top-p in the
    joint order, whose normaliser Z is the whole row's exact mass, which needs the row's
    max before the read (top-k first normalises over the top-k set, in the scratch)."""
    one = lane & (k * n_chunks <= min(2 * CHUNK, CAP // 2))
    if JOINT_TOP_P:
        one = one & ~p_on
    return one


@_device
def _top_k_of_scratch(scratch_row, n, k, lo, hi, BIN_BITS: tl.constexpr,
                      CHUNK: tl.constexpr):
    """Narrows a scratch of n <= 2 x CHUNK entries, which holds every key in [lo, hi]
    (at least k of them, none above), to its top-k set: the entries whose key is at least
    the k-th largest (_scratch_top_k's histogram levels, on the entries in registers),
    moved to its front, so that the scratch stage holds them in registers.  Returns
    (that key, their count)."""
    pos = tl.arange(0, 2 * CHUNK)
    entry = tl.load(scratch_row + pos, mask=pos < n, other=0, cache_modifier=".cg")
    t = _scratch_top_k(scratch_row, n, entry, k, lo, hi, tl.full([], 0, tl.int32), BIN_BITS,
                       2 * CHUNK)
    keep = (pos < n) & (((entry >> 32) & 0xFFFFFFFF) >= t)
    tl.debug_barrier()          # every entry is read before any moves
    tl.store(scratch_row + tl.cumsum(keep.to(tl.int32), 0) - 1, entry, mask=keep)
    tl.debug_barrier()
    return t, tl.sum(keep.to(tl.int32), 0)


@_device
def _combine_max_and_z(parts_row, n_chunks, c2):
    """The row's max and normaliser (float64, in units of the max's weight) from the
    chunks' (max, normaliser relative to it): of pass 1, or of the race's log-probs."""
    m = tl.full([], NEG_INF, tl.float64)
    for c0 in range(0, n_chunks, PARTS_AT_ONCE):
        c = c0 + tl.arange(0, PARTS_AT_ONCE)
        m = tl.maximum(m, tl.max(_part_f(parts_row, c, c < n_chunks, 2, NEG_INF), 0))
    m32 = m.to(tl.float32)
    z = tl.full([], 0.0, tl.float64)
    for c0 in range(0, n_chunks, PARTS_AT_ONCE):
        c = c0 + tl.arange(0, PARTS_AT_ONCE)
        ok = c < n_chunks
        z_c = _part_f(parts_row, c, ok, 3, 0.0)
        m_c = _part_f(parts_row, c, ok, 2, NEG_INF).to(tl.float32)
        z += tl.sum(tl.where(z_c != 0.0, z_c * tl.exp2((m_c - m32) * c2).to(tl.float64), 0.0),
                    0)
    return m32, z


@_device
def _search_row(row_ptr, V, row, m, z, V_Z, inv_t, k, k_on, p, p_on, m_on, log_mp, seed,
                offset, scratch_row, binmass_row, hist_row, tail, bins_ready, greedy,
                tokens_ptr, logprobs_ptr, stats_row, HAS_TOP_K: tl.constexpr,
                HAS_TOP_P: tl.constexpr, JOINT: tl.constexpr, LOGPROBS: tl.constexpr,
                STATS: tl.constexpr, BLOCK: tl.constexpr, BIN_BITS: tl.constexpr,
                CAP: tl.constexpr, CHUNK: tl.constexpr, RARE_BLOCK: tl.constexpr,
                MAX_PASSES: tl.constexpr, NOISE_TEST: tl.constexpr):
    """A split filtered row's search, by the last program of its chunks: then either its
    collect pass waits for the PHASE 3 launch (max and lowest candidate key stashed,
    verdict = reads so far + 1), or, with more candidates than the scratch holds, this
    program finishes the row alone."""
    NB: tl.constexpr = 1 << BIN_BITS
    passes, dense, cand_lo = _search(
        row_ptr, V, m, z, V_Z, inv_t, k, k_on, p, p_on, _min_p_floor(m, inv_t, m_on, log_mp),
        seed, offset, scratch_row, binmass_row, hist_row, bins_ready, HAS_TOP_K, HAS_TOP_P,
        JOINT, BLOCK, BIN_BITS, CAP, RARE_BLOCK, MAX_PASSES)
    if dense:  # rare: the candidates outnumber the scratch; alone
        token, kept_lo, kept_mass, passes, fallbacks = _after_collect(
            row_ptr, V, m, inv_t, tl.full([], 0, tl.int32), tl.full([], 0, tl.int64), dense,
            passes, scratch_row, binmass_row, hist_row + 3 * NB, HAS_TOP_K, HAS_TOP_P, JOINT,
            False,
            LOGPROBS, BLOCK, BIN_BITS, CAP, CHUNK, RARE_BLOCK, NOISE_TEST)
        _finish_filtered(row_ptr, V, row, m, inv_t, token, kept_lo, kept_mass, greedy, passes,
                         fallbacks, tokens_ptr, logprobs_ptr, logprobs_ptr, stats_row, False,
                         LOGPROBS, STATS, BLOCK)
    else:        # the collect pass waits for the next launch
        st = scratch_row + CAP
        _put(st, 30, m)
        _put(st, 31, cand_lo)
        tl.store(tail + 3, passes + 1)


@triton.jit
def _split_kernel(
    logits_ptr, stride_row, V, chunk_len,
    temp_ptr, temp_val, topk_ptr, topk_val, topp_ptr, topp_val, minp_ptr, minp_val,
    seed_ptr, seed_val, offset_ptr, offset_val,
    tokens_ptr, logprobs_ptr, scratch_ptr, hist_ptr, hist64_ptr, hist_stride, hist_at,
    parts_ptr, words_ptr, stats_ptr,
    TEMP_T: tl.constexpr, TOPK_T: tl.constexpr, TOPP_T: tl.constexpr, MINP_T: tl.constexpr,
    SEED_T: tl.constexpr, OFFSET_T: tl.constexpr,
    HAS_TOP_K: tl.constexpr, HAS_TOP_P: tl.constexpr, HAS_MIN_P: tl.constexpr,
    JOINT: tl.constexpr, LOGPROBS: tl.constexpr, STATS: tl.constexpr, PHASE: tl.constexpr,
    BINS_LAUNCH: tl.constexpr, BLOCK: tl.constexpr, BIN_BITS: tl.constexpr, CAP: tl.constexpr,
    CHUNK: tl.constexpr,
    RARE_BLOCK: tl.constexpr, MAX_PASSES: tl.constexpr, NOISE_TEST: tl.constexpr,
    LANE_K: tl.constexpr,
):
    """Rows split into chunks of ``chunk_len`` tokens (whole tiles): program (c, r) reads
    chunk c of row r, once per launch.

    PHASE 1: greedy, the chunk's max; plain, the chunk's race, proved on the chunk, with
    its max and normaliser; filtered, the chunk's pass 1 (max, normaliser, histogram by
    atomics; a lane row's group maxima by an atomic max per group instead, _lane_row).
    The last chunk of a row to arrive combines them and finishes a greedy or plain row.
    A filtered row it searches (any count refine runs there, alone: rare), or for a lane
    row takes the k-th largest group max, and leaves for PHASE 3, unless its candidates
    outnumber the scratch (then it finishes the row alone, as _sample_row would); a
    top-p-alone row, when BINS_LAUNCH, it leaves for PHASE 2 before searching.  A lane
    row with a small top-k (_one_launch_row) ends here: each chunk collects its own
    candidates after its pass 1, and the last settles the row on them.
    PHASE 2 (calls where rows may have top-p alone): those rows' chunks sum the exact
    masses of pass 1's bins (integer atomics), which top-p alone's search takes next
    (docs/design.md, "Top-p alone"); the last to arrive searches, as in PHASE 1.
    PHASE 3 (filtered calls but those collect_launch spares): the chunks of the rows
    left waiting collect their candidates into the row's scratch (slots by an atomic
    count) and sum the exact normaliser (integer atomics); the last to arrive settles the
    thresholds and races in the scratch, as _sample_row does (a lane row whose
    candidates outnumber the scratch goes the histogram way there, alone:
    _filtered_row).

    Per row, zero at launch from hist_at on: B's bin masses (when HAS_TOP_P), three
    histograms, the collect's words (a lane row's group maxima in PHASE 1), then 8 int32:
    the arrival counts of PHASE 1 and 3,
    the scratch's count, the collect's verdict (0: none, else the reads so far + 1), the
    exact normaliser (int64, through hist64_ptr: the same memory as int64), PHASE 2's
    arrival count and verdict.  Per row also the scratch and its state area; per program
    a tile of collect words (words_ptr)."""
    NB: tl.constexpr = 1 << BIN_BITS
    TOP_K_FIRST: tl.constexpr = HAS_TOP_K and not JOINT
    FILTERS: tl.constexpr = HAS_TOP_K or HAS_TOP_P or HAS_MIN_P
    LANE: tl.constexpr = HAS_TOP_K and LANE_K > 0
    chunk = tl.program_id(0)
    n_chunks = tl.num_programs(0)
    row = tl.program_id(1).to(tl.int64)
    row_ptr = logits_ptr + row * stride_row
    lo = tl.minimum(chunk * chunk_len, V)
    hi = tl.minimum(lo + chunk_len, V)
    scratch_row = scratch_ptr + row * (CAP + 32)
    st = scratch_row + CAP
    binmass_row = hist64_ptr + row * (hist_stride // 2)
    hist_row = hist_ptr + row * hist_stride + hist_at
    tail = hist_ptr + row * hist_stride + hist_stride - 8
    z_sum = hist64_ptr + row * (hist_stride // 2) + (hist_stride - 4) // 2     # tail + 4
    parts_row = parts_ptr + row * n_chunks * PART
    part = parts_row + chunk * PART
    stats_row = stats_ptr + row * 2
    greedy, inv_t, seed, offset, off_lo, off_hi, k, k_on, p, p_on, m_on, log_mp, plain = \
        _row_params(row, V, temp_ptr, temp_val, topk_ptr, topk_val, topp_ptr, topp_val,
                    minp_ptr, minp_val, seed_ptr, seed_val, offset_ptr, offset_val, TEMP_T,
                    TOPK_T, TOPP_T, MINP_T, SEED_T, OFFSET_T, HAS_TOP_K, HAS_TOP_P, HAS_MIN_P)
    c2 = _c2(inv_t)
    lane = greedy & ~greedy
    one = lane
    if LANE:
        lane = _lane_row(k, k_on, LANE_K)
        one = _one_launch_row(lane, k, p_on, n_chunks, JOINT and HAS_TOP_P, CHUNK, CAP)
    # a lane row's group maxima (keys), combined over the chunks in the collect's words
    group_keys = (hist_row + 3 * NB).to(tl.pointer_type(tl.uint32)) + \
        tl.arange(0, BLOCK // 4)
    words = words_ptr + (row * n_chunks + chunk) * BLOCK   # this program's collect words

    if PHASE == 1:
        # ---- this chunk's read (a small top-k's chunk then collects from it too)
        if greedy:
            m_c, i_c = _greedy_pass(row_ptr, lo, hi, BLOCK)
            _put(part, 0, i_c)
            _put(part, 1, m_c)
        elif plain:
            ub, proved, token, x_c, m_c, z_c = _race_range(row_ptr, lo, hi, seed, off_lo,
                                                           off_hi, inv_t, NEG_INF,
                                                           KEY_NEG_INF + 1, LOGPROBS,
                                                           NOISE_TEST, BLOCK, False)
            # no finite bound: no finite logit (-inf), or +inf / NaN bounds (the exact way)
            i_c = tl.where(proved, token,
                           tl.where(ub == NEG_INF, PART_NONE, PART_UNSURE).to(tl.int32))
            _put(part, 0, i_c)
            _put(part, 1, x_c)
            _put(part, 2, m_c)
            _put(part, 3, z_c)
        elif FILTERS:
            m_c, z_c, m_v = _pass_one(row_ptr, lo, hi, inv_t, hist_row, lane,
                                      HAS_TOP_K or HAS_TOP_P, LANE, BIN_BITS, BLOCK, True)
            if LANE:
                if one:     # this chunk's own top-k candidates, now (_one_launch_row)
                    t_c = _kth_key(_key(m_v), k).to(tl.int64)
                    _collect_pass(row_ptr, lo, hi, m_c, inv_t,
                                  tl.maximum(t_c, KEY_NEG_INF + 1), KEY_NONE, KEY_NONE, 0,
                                  False, 0, 0, scratch_row, tail + 2, words, False, True, CAP,
                                  CHUNK, BLOCK)
                    _put(part, 0, t_c)
                elif lane:
                    tl.atomic_max(group_keys, _key(m_v), sem="relaxed")
            _put(part, 2, m_c)
            _put(part, 3, z_c)

        # ---- count in; the last chunk of the row goes on with it
        _fence()
        tl.debug_barrier()
        arrived = tl.atomic_add(tail, 1, sem="acq_rel")
        if arrived == n_chunks - 1:
            _fence()
            if greedy:
                m, token = _combine_greedy(parts_row, n_chunks)
                _finish(row_ptr, V, row, m, inv_t, token, m, KEY_NEG_INF + 1, FIX, greedy, 1,
                        0, tokens_ptr, logprobs_ptr, logprobs_ptr, stats_row, False, LOGPROBS,
                        STATS, BLOCK)
            elif plain:
                proved, token, x_tok = _combine_race(parts_row, n_chunks, inv_t, seed, off_lo,
                                                     off_hi)
                m = tl.full([], 0.0, tl.float32)
                kept_mass = tl.full([], FIX, tl.float64)
                if LOGPROBS:
                    m, z = _combine_max_and_z(parts_row, n_chunks, c2)
                    kept_mass = z * FIX
                    proved = proved & (kept_mass < POS_INF) & (kept_mass >= FIX)
                if proved:
                    _finish(row_ptr, V, row, m, inv_t, token, x_tok, KEY_NEG_INF + 1,
                            kept_mass, greedy, 1, 0, tokens_ptr, logprobs_ptr, logprobs_ptr,
                            stats_row, False, LOGPROBS, STATS, BLOCK)
                if ~proved:  # rare: a chunk proved nothing, or the row holds +-inf
                    _race_fallback(row_ptr, V, row, inv_t, greedy, seed, off_lo, off_hi,
                                   hist_row, tokens_ptr, logprobs_ptr, logprobs_ptr, stats_row,
                                   False, LOGPROBS, STATS, BIN_BITS, BLOCK, RARE_BLOCK)
            elif FILTERS:
                m, z = _combine_max_and_z(parts_row, n_chunks, c2)
                if HAS_TOP_K or HAS_TOP_P:
                    bins = tl.arange(0, NB)
                    hist = tl.load(_here(hist_row) + bins, cache_modifier=".cg")
                    tl.store(_here(hist_row) + bins, hist)
                    tl.store(_here(hist_row) + NB + bins, hist)
                    tl.store(_here(hist_row) + 2 * NB + bins, hist)
                if (m == POS_INF) | (z == 0.0):  # rare: the row's max is +-inf
                    _special_row(row_ptr, V, row, tl.where(m == POS_INF, 1, 2), seed, off_lo,
                                 off_hi, 1, 0, tokens_ptr, logprobs_ptr, logprobs_ptr,
                                 stats_row, False, LOGPROBS, STATS, RARE_BLOCK)
                else:
                    wait_bins = greedy & ~greedy
                    if BINS_LAUNCH:
                        wait_bins = p_on & ~k_on
                    if wait_bins:    # top-p alone: its bin masses first, split (PHASE 2)
                        _put(st, 30, m)
                        _put(st, 31, z)
                        tl.store(tail + 7, 1)
                    elif one:        # the chunks gathered the candidates: settle now
                        n = tl.load(tail + 2, cache_modifier=".cg")
                        t = tl.maximum(_max_part(parts_row, n_chunks, 0), KEY_NEG_INF + 1)
                        # narrowed: to fit the scratch stage's registers, or for top-p
                        # by pairs (_small_top_p)
                        small = p_on & (k <= SMALL_TOP_P) & (n > SMALL_TOP_P)
                        if ((n > CHUNK) | small) & (n <= min(2 * CHUNK, CAP)):
                            t, n = _top_k_of_scratch(scratch_row, n, k, t,
                                                     _key(m).to(tl.int64), BIN_BITS, CHUNK)
                        cand_lo = _lane_bracket(st, t, m, k, k_on, p, p_on,
                                                _min_p_floor(m, inv_t, m_on, log_mp), seed,
                                                offset)
                        token, kept_lo, kept_mass, passes, fallbacks, unused = _filtered_row(
                            row_ptr, V, m, tl.full([], 0.0, tl.float64), V, inv_t, k, k_on,
                            p, p_on, m_on, log_mp, seed, offset, scratch_row, binmass_row,
                            hist_row, words, lane, cand_lo.to(tl.uint32), n,
                            tl.full([], 0, tl.int64), ~lane, tl.full([], 2, tl.int32), lane,
                            HAS_TOP_K, HAS_TOP_P, JOINT, False, LOGPROBS, LANE_K, True, BLOCK,
                            BIN_BITS, CAP, CHUNK, RARE_BLOCK, MAX_PASSES, NOISE_TEST)
                        _finish_filtered(row_ptr, V, row, m, inv_t, token, kept_lo, kept_mass,
                                         greedy, passes, fallbacks, tokens_ptr, logprobs_ptr,
                                         logprobs_ptr, stats_row, False, LOGPROBS, STATS,
                                         BLOCK)
                    elif lane:       # the candidates are the keys >= t: no search
                        t = _kth_key(tl.load(group_keys, cache_modifier=".cg"), k)
                        _put(st, 30, m)
                        _put(st, 31, _lane_bracket(st, t, m, k, k_on, p, p_on,
                                                   _min_p_floor(m, inv_t, m_on, log_mp), seed,
                                                   offset))
                        tl.store(tail + 3, 2)         # the collect's verdict: 1 read, + 1
                    else:
                        _search_row(row_ptr, V, row, m, z, V + n_chunks * BLOCK, inv_t, k,
                                    k_on, p, p_on, m_on, log_mp, seed, offset, scratch_row,
                                    binmass_row, hist_row, tail, greedy & ~greedy, greedy,
                                    tokens_ptr, logprobs_ptr, stats_row, HAS_TOP_K, HAS_TOP_P,
                                    JOINT, LOGPROBS, STATS, BLOCK, BIN_BITS, CAP, CHUNK,
                                    RARE_BLOCK, MAX_PASSES, NOISE_TEST)
    elif PHASE == 2:
        if tl.load(tail + 7) != 0:
            # ---- this chunk's share of top-p alone's bin masses
            m = _get_f32(st, 30)
            _bin_mass_pass(row_ptr, lo, hi, m, inv_t, binmass_row, BIN_BITS, RARE_BLOCK)
            _fence()
            tl.debug_barrier()
            arrived = tl.atomic_add(tail + 6, 1, sem="acq_rel")
            if arrived == n_chunks - 1:
                _fence()
                _search_row(row_ptr, V, row, m, _get_f(st, 31), V + n_chunks * BLOCK, inv_t, k,
                            k_on, p, p_on, m_on, log_mp, seed, offset, scratch_row,
                            binmass_row, hist_row, tail, ~greedy, greedy, tokens_ptr,
                            logprobs_ptr, stats_row, HAS_TOP_K, HAS_TOP_P, JOINT, LOGPROBS,
                            STATS, BLOCK, BIN_BITS, CAP, CHUNK, RARE_BLOCK, MAX_PASSES,
                            NOISE_TEST)
    elif FILTERS:          # PHASE 3
        verdict = tl.load(tail + 3)
        if verdict > 0:
            # ---- this chunk's share of the collect pass
            m = _get_f32(st, 30)
            n_c, z_c, unused_a, unused_b = _collect_pass(
                row_ptr, lo, hi, m, inv_t, _get_i(st, 31), KEY_NONE, KEY_NONE, 0,
                _need_z(st, HAS_TOP_P, TOP_K_FIRST), 0, 0, scratch_row, tail + 2, words, False,
                True, CAP,
                CHUNK, BLOCK)
            tl.atomic_add(z_sum, z_c, sem="relaxed")
            _fence()
            tl.debug_barrier()
            arrived = tl.atomic_add(tail + 1, 1, sem="acq_rel")
            if arrived == n_chunks - 1:
                _fence()
                n = tl.load(tail + 2, cache_modifier=".cg")
                zc = tl.load(z_sum, cache_modifier=".cg")
                if LANE:
                    token, kept_lo, kept_mass, passes, fallbacks, unused = _filtered_row(
                        row_ptr, V, m, tl.full([], 0.0, tl.float64), V, inv_t, k, k_on, p,
                        p_on, m_on, log_mp, seed, offset, scratch_row, binmass_row, hist_row,
                        words, lane, _get_i(st, 31).to(tl.uint32), n, zc, verdict < 0, verdict,
                        ~lane | lane, HAS_TOP_K, HAS_TOP_P, JOINT, False, LOGPROBS, LANE_K,
                        True, BLOCK, BIN_BITS, CAP, CHUNK, RARE_BLOCK, MAX_PASSES, NOISE_TEST)
                else:
                    token, kept_lo, kept_mass, passes, fallbacks = _after_collect(
                        row_ptr, V, m, inv_t, n, zc, verdict < 0, verdict, scratch_row,
                        binmass_row, words, HAS_TOP_K, HAS_TOP_P, JOINT, False, LOGPROBS, BLOCK,
                        BIN_BITS, CAP, CHUNK, RARE_BLOCK, NOISE_TEST)
                _finish_filtered(row_ptr, V, row, m, inv_t, token, kept_lo, kept_mass, greedy,
                                 passes, fallbacks, tokens_ptr, logprobs_ptr, logprobs_ptr,
                                 stats_row, False, LOGPROBS, STATS, BLOCK)


@_device
def _radix_choose(prev_ptr, B, row, st, st_out, write, pk_ptr, p_ptr, pre_k, pre_p,
                  HAS_K: tl.constexpr, HAS_P: tl.constexpr, FIRST: tl.constexpr,
                  RADIX_BITS: tl.constexpr):
    """Row r's choice of a bin from the previous level's all-reduced histograms (``prev``,
    [H, B, 2^RADIX_BITS]), the arithmetic of fused_sampler.distributed._radix_levels:
    top-k's bin is the lowest whose count strictly above is below the tokens still needed
    (``st`` + 1), top-p's the lowest whose mass strictly above (the bracket's, ``st`` + 3,
    plus the bins above) is below pK (FIRST: the previous level was the first, whose
    total is K).  Returns the new prefixes (pre_k, pre_p); where ``write``, stores the
    row's new state (prefixes, need, mass above) at ``st_out`` and pK.  Every chunk of a
    row makes the same choice; one writes it, to a state the others do not read."""
    NB: tl.constexpr = 1 << RADIX_BITS
    bins = tl.arange(0, NB)
    at = prev_ptr + row * NB + bins
    if HAS_K:
        cnt = tl.load(at)
        before = tl.cumsum(cnt, 0, reverse=True) - cnt            # strictly above each bin
        need = tl.load(st + 1)
        b = tl.minimum(tl.min(tl.where(before < need, bins, NB), 0), NB - 1)
        tl.store(st_out + 1, need - _pick(bins, b, before), mask=write)
        pre_k = (pre_k << RADIX_BITS) | b
        tl.store(st_out, pre_k, mask=write)
        at += B * NB
    if HAS_P:
        mass = tl.load(at)
        pk = tl.load(pk_ptr + row)
        if FIRST:                                                  # K: the first level's
            pk = tl.load(p_ptr + row) * tl.sum(mass, 0).to(tl.float64)
            tl.store(pk_ptr + row, pk, mask=write)
        strictly = tl.load(st + 3) + tl.cumsum(mass, 0, reverse=True) - mass
        b = tl.minimum(tl.min(tl.where(strictly.to(tl.float64) < pk, bins, NB), 0), NB - 1)
        tl.store(st_out + 3, _pick(bins, b, strictly), mask=write)
        pre_p = (pre_p << RADIX_BITS) | b
        tl.store(st_out + 2, pre_p, mask=write)
    return pre_k, pre_p


@triton.jit
def _radix_level_kernel(logits_ptr, stride_row, n, chunk_len, m_ptr, inv_t_ptr, state_ptr,
                        state_out_ptr, pk_ptr, p_ptr, kept_lo_ptr, prev_ptr, hist_ptr, B,
                        shift, HAS_K: tl.constexpr, HAS_P: tl.constexpr,
                        CHOOSE: tl.constexpr, FIRST: tl.constexpr, STREAM: tl.constexpr,
                        RADIX_BITS: tl.constexpr, BLOCK: tl.constexpr):
    """One radix level of a vocabulary shard (fused_sampler.distributed._radix_levels),
    program (c, r) for chunk c (``chunk_len`` tokens, whole tiles) of row r.  CHOOSE:
    first the previous level's choice of a bin (_radix_choose), which extends the row's
    prefixes in ``state`` (int64 [B, 4]: top-k's prefix, the tokens it still needs,
    top-p's prefix, the mass above its bracket; chunk 0 writes the new state to
    ``state_out``, another buffer where there are several chunks).  STREAM: then, over
    the chunk's tokens whose key lies under the prefixes (its bits above ``shift +
    RADIX_BITS``), the count (HAS_K) and the exact mass (HAS_P, tokens at or above
    ``kept_lo``: top-k's set under "top_k_first") of each digit (the next RADIX_BITS
    bits).  The tokens as the reference resolves them (NaN -inf, -0.0 +0.0;
    under a row max ``m_ptr`` of +inf only the +inf tokens, as logit 0; under -inf every
    token as 0); a mass is _term's under the finite max.  Out: int64 [HAS_K + HAS_P, B,
    2^RADIX_BITS], zeroed by the caller (the chunks' counts and masses add by integer
    atomics, as _bin_mass_pass's).  One read of the shard: the PyTorch level it replaces
    read and wrote it some thirteen times."""
    NB: tl.constexpr = 1 << RADIX_BITS
    chunk = tl.program_id(0)
    row = tl.program_id(1).to(tl.int64)
    st = state_ptr + row * 4
    pre_k = tl.full([], 0, tl.int64)
    pre_p = tl.full([], 0, tl.int64)
    if HAS_K:
        pre_k = tl.load(st)
    if HAS_P:
        pre_p = tl.load(st + 2)
    if CHOOSE:
        pre_k, pre_p = _radix_choose(prev_ptr, B, row, st, state_out_ptr + row * 4,
                                     chunk == 0, pk_ptr, p_ptr, pre_k, pre_p, HAS_K, HAS_P,
                                     FIRST, RADIX_BITS)
    if STREAM:
        row_ptr = logits_ptr + row * stride_row
        m_raw = tl.load(m_ptr + row)
        inv_t = tl.load(inv_t_ptr + row)
        odd = (m_raw == POS_INF) | (m_raw == NEG_INF)
        m = tl.where(odd, 0.0, m_raw)
        inf_row = tl.where(m_raw == POS_INF, 1.0, 0.0)  # (a scalar float: "Interpreter notes")
        kept_lo = tl.full([], 0, tl.uint32)
        mass_row = hist_ptr + row * NB
        if HAS_K:
            mass_row += B * NB
        if HAS_P:
            kept_lo = _u32(tl.load(kept_lo_ptr + row))
        want_k = pre_k.to(tl.uint32)
        want_p = pre_p.to(tl.uint32)
        lanes = tl.arange(0, BLOCK)
        cnt = tl.zeros([NB], tl.int32)
        lo = chunk * chunk_len
        hi = tl.minimum(lo + chunk_len, n)
        for start in range(lo, hi, BLOCK):  # stream: radix level
            offs = start + lanes
            valid = offs < hi
            x = _sanitize(tl.load(row_ptr + offs, mask=valid, other=NEG_INF))
            if odd:  # rare: a row holding +inf (its +inf tokens as 0), or no finite logit (0)
                x = tl.where(inf_row > 0.0, tl.where(x == POS_INF, 0.0, NEG_INF), 0.0)
            key = _key(x)
            high = key >> shift                   # (uint32: two shifts, never one of 32)
            digit = (high & (NB - 1)).to(tl.int32)
            prefix = high >> RADIX_BITS
            if HAS_K:
                cnt += tl.histogram(digit, NB, mask=valid & (prefix == want_k))
            if HAS_P:
                t = _term(x, m, inv_t)
                on = valid & (prefix == want_p) & (key >= kept_lo) & (t != 0)
                tl.atomic_add(_here(mass_row) + digit, t, mask=on, sem="relaxed")
        if HAS_K:
            tl.atomic_add(_here(hist_ptr + row * NB) + tl.arange(0, NB), cnt.to(tl.int64),
                          sem="relaxed")


# Vocabulary shards (fused_sampler.distributed): rank r holds tokens [start, start + n)
# of every row.  A shard is cut into chunks exactly as a split row is, and each chunk
# leaves a summary, as _split_kernel's PHASE 1 does; the summaries of every chunk of every
# rank are gathered (one all-gather) and combined on each rank.  A chunk proves its race
# on its own tokens, so its summary never sends the combine back to the logits: where
# the proof fails, or the chunk holds +-inf or NaN, it runs the exact way over itself.

SHARD_COLS = tl.constexpr(14)   # a shard chunk's summary (fused_sampler.distributed)
SHARED_COLS = tl.constexpr(9)   # the odd rows' columns at the front of every summary
NO_INDEX_F = tl.constexpr(float(2 ** 62))   # "no token" in a summary's index columns


@_device
def _keep_best(on, g, offs, best_g, best_i):
    """Each lane's running best noise among the tokens ``on`` and its index, after one
    tile (tiles in index order: ties keep the first)."""
    win = on & (g > best_g)
    return tl.where(win, g, best_g), tl.where(win, offs, best_i)


@_device
def _best_lane(best_g, best_i):
    """The best of the lanes' running noises (_keep_best) and its lowest index."""
    g = tl.max(best_g, 0)
    return g, tl.min(tl.where(best_g == g, best_i, NO_TOKEN), 0)


@_device
def _exact_range(row_ptr, lo, hi, inv_t, x_lo, seed, off_lo, off_hi,
                 RARE_BLOCK: tl.constexpr, KEPT: tl.constexpr):
    """Tokens [lo, hi) of a row (any alignment: each token's own Philox words) the exact
    way, twice read: (the largest finite logit m_f, the race's winner over the finite
    tokens at or above ``x_lo`` with exact keys under m_f: index, logit and noise, sum
    exp((x - m_f) / T) over them (float64), the sanitised max, the number of +inf
    tokens, the best noise among them and its index, the best noise among all tokens and
    its index).  No winner: index NO_TOKEN (and m_f = -inf where no token is finite)."""
    ones = tl.full([RARE_BLOCK], 1, tl.int32)
    fin_v = tl.full([RARE_BLOCK], NEG_INF, tl.float32)
    raw_v = tl.full([RARE_BLOCK], NEG_INF, tl.float32)
    n_inf = tl.zeros([RARE_BLOCK], tl.int32)
    inf_g = tl.full([RARE_BLOCK], NEG_INF, tl.float32)
    inf_i = ones * NO_TOKEN
    all_g = tl.full([RARE_BLOCK], NEG_INF, tl.float32)
    all_i = ones * NO_TOKEN
    for start in range(lo, hi, RARE_BLOCK):  # stream: shard exact maxima (tile RARE_BLOCK)
        offs, x = _load_tile(row_ptr, start, hi, RARE_BLOCK, True)
        ok = offs < hi
        g = _gumbel(_token_words(seed, off_lo, off_hi, offs, 0),
                    _token_words(seed, off_lo, off_hi, offs, 1))
        raw_v = tl.maximum(raw_v, x)
        fin_v = tl.maximum(fin_v, tl.where(x < POS_INF, x, NEG_INF))
        is_inf = ok & (x == POS_INF)
        n_inf += is_inf.to(tl.int32)
        inf_g, inf_i = _keep_best(is_inf, g, offs, inf_g, inf_i)
        all_g, all_i = _keep_best(ok, g, offs, all_g, all_i)
    m_f = tl.max(fin_v, 0)
    inv_t64 = inv_t.to(tl.float64)
    c2 = _c2(inv_t)
    best_k = tl.full([RARE_BLOCK], NEG_INF, tl.float64)
    best_i = ones * NO_TOKEN
    best_x = tl.full([RARE_BLOCK], NEG_INF, tl.float32)
    best_g = tl.zeros([RARE_BLOCK], tl.float32)
    z_v = tl.zeros([RARE_BLOCK], tl.float64)
    if m_f > NEG_INF:
        for start in range(lo, hi, RARE_BLOCK):  # stream: shard exact race (tile RARE_BLOCK)
            offs, x = _load_tile(row_ptr, start, hi, RARE_BLOCK, True)
            fin = (offs < hi) & (x > NEG_INF) & (x < POS_INF)
            if KEPT:
                fin = fin & (x >= x_lo)
            g = _gumbel(_token_words(seed, off_lo, off_hi, offs, 0),
                        _token_words(seed, off_lo, off_hi, offs, 1))
            k = tl.where(fin, _exact_key(x, m_f, inv_t64, g), NEG_INF)
            win = k > best_k
            best_k = tl.where(win, k, best_k)
            best_i = tl.where(win, offs, best_i)
            best_x = tl.where(win, x, best_x)
            best_g = tl.where(win, g, best_g)
            z_v += tl.where(fin, tl.exp2((x - m_f) * c2), 0.0).to(tl.float64)
    k = tl.max(best_k, 0)
    i = tl.min(tl.where(best_k == k, best_i, NO_TOKEN), 0)
    at = best_i == i
    g_inf, i_inf = _best_lane(inf_g, inf_i)
    g_all, i_all = _best_lane(all_g, all_i)
    return (m_f, i, tl.max(tl.where(at, best_x, NEG_INF), 0),
            tl.max(tl.where(at, best_g, NEG_INF), 0), tl.sum(z_v, 0), tl.max(raw_v, 0),
            tl.sum(n_inf, 0), g_inf, i_inf, g_all, i_all)


@_device
def _store_odd_columns(out, m, i_max, g_inf, i_inf, g_all, i_all, n_inf, n):
    """A shard summary's SHARED_COLS (what _odd_rows_of reads): its sanitised max, a NaN
    flag (0: the caller sets it), the lowest index of the max, the best noise among its
    +inf tokens and that token's index, the best noise among all its tokens and its
    index (read only for rows with no finite logit: a summary may leave it -inf where
    its shard holds a token above -inf), its +inf count and its token count (indices
    NO_TOKEN: none, sent as 2^62)."""
    tl.store(out, m.to(tl.float64))
    tl.store(out + 1, 0.0)
    tl.store(out + 2, tl.where(i_max != NO_TOKEN, i_max.to(tl.float64), NO_INDEX_F))
    tl.store(out + 3, g_inf.to(tl.float64))
    tl.store(out + 4, tl.where(i_inf != NO_TOKEN, i_inf.to(tl.float64), NO_INDEX_F))
    tl.store(out + 5, g_all.to(tl.float64))
    tl.store(out + 6, tl.where(i_all != NO_TOKEN, i_all.to(tl.float64), NO_INDEX_F))
    tl.store(out + 7, n_inf.to(tl.float64))
    tl.store(out + 8, tl.cast(n, tl.float64))           # (n = 1: a constexpr)


@triton.jit
def _shard_kernel(
    logits_ptr, stride_row, start, n, body_lo, chunk_len, B,
    temp_ptr, temp_val, seed_ptr, seed_val, offset_ptr, offset_val, kept_ptr, m_ptr,
    log_mp_ptr, parts_ptr,
    TEMP_T: tl.constexpr, SEED_T: tl.constexpr, OFFSET_T: tl.constexpr,
    LOGPROBS: tl.constexpr, KEPT: tl.constexpr, MIN_P: tl.constexpr, BLOCK: tl.constexpr,
    RARE_BLOCK: tl.constexpr, NOISE_TEST: tl.constexpr,
):
    """The summaries of a vocabulary shard's chunks: the shard holds tokens [start,
    start + n) of each row (``logits_ptr`` points at token ``start``).  Program (c, r),
    c < chunks: chunk c of the shard's body, whole tiles from ``body_lo`` (the first
    multiple of 4 at or past ``start``, where the kernel's noise tiles start); program
    (chunks, r): the head [start, body_lo), at most 3 tokens.

    Rows with no filter race over every token; KEPT (the filtered calls, after their
    thresholds: fused_sampler.distributed) over the tokens whose sanitised key is at or
    above the row's bound ``kept_ptr`` (int64; 0: none), raised with MIN_P to min-p's
    lowest key under the whole row's max ``m_ptr`` and ln(min_p) ``log_mp_ptr`` (float32;
    -inf: off).  A row whose max is +-inf races unfiltered: the contract draws it
    uniformly whatever the filters.  A chunk of a filtered row with no kept token needs
    no proof: its summary holds no winner and no mass.

    Each writes SHARD_COLS float64 to parts[c, r] (fused_sampler.distributed._race
    combines them): first the columns of the contract's odd rows, as _exchange lays them
    out: the sanitised max (for a row that is not greedy, a finite stand-in below it
    where the race proved: the winner's logit), a NaN flag (0: the caller sets it), the
    lowest index of the max (greedy rows), the best noise among its +inf tokens and its
    index, the best noise among all its tokens and its index, its
    +inf count and its token count; then the race's: the anchor of its normaliser (its
    finite max with LOGPROBS, else its winner's logit), its winner's global index (2^62:
    none), logit and noise, and the normaliser relative to the anchor (LOGPROBS).  The
    body's chunks stream once (the race, or a
    greedy row's max); the exact way (_exact_range) reads a chunk twice more, only where
    its race proves nothing or it holds +-inf or NaN."""
    chunk = tl.program_id(0)
    n_chunks = tl.num_programs(0) - 1
    row = tl.program_id(1).to(tl.int64)
    row_ptr = logits_ptr + row * stride_row - start        # indexed by global token index
    end = start + n
    head = chunk == n_chunks
    lo = tl.where(head, start, tl.minimum(body_lo + chunk * chunk_len, end))
    hi = tl.where(head, body_lo, tl.minimum(lo + chunk_len, end))
    t = _param(temp_ptr, temp_val, row, TEMP_T, tl.float32)
    seed = _param(seed_ptr, seed_val, row, SEED_T, tl.int64)
    offset = _param(offset_ptr, offset_val, row, OFFSET_T, tl.int64)
    off_lo, off_hi = _offset_halves(offset)
    greedy, inv_t = _greedy_and_inv_t(t)
    x_lo = NEG_INF                  # the kept tokens' lowest logit, and their lowest key
    kept_lo = KEY_NEG_INF + 1       # (constants without KEPT, as the plain race's)
    if KEPT:
        m_row = tl.load(m_ptr + row)
        finite = tl.abs(m_row) < POS_INF
        lo_key = tl.load(kept_ptr + row)
        if MIN_P:
            lo_key = tl.maximum(lo_key, _min_p_key(tl.where(finite, m_row, 0.0), inv_t,
                                                   tl.load(log_mp_ptr + row)))
        on = finite & (lo_key > KEY_NEG_INF)
        kept_lo = tl.where(on, lo_key, KEY_NEG_INF + 1)
        x_lo = tl.where(on, _unkey(lo_key), NEG_INF)
    none = tl.full([], NO_TOKEN, tl.int32)
    m_c = tl.full([], NEG_INF, tl.float32)
    i_c = none
    x_c = m_c
    g_c = tl.full([], 0.0, tl.float32)
    z_c = tl.full([], 0.0, tl.float64)
    m_r = m_c
    i_r = none
    n_inf = tl.full([], 0, tl.int32)
    g_inf = m_c
    i_inf = none
    g_all = m_c
    i_all = none
    if greedy:
        m_r, i_r = _greedy_pass(row_ptr, lo, hi, BLOCK)
    else:
        proved = head & ~head
        if chunk < n_chunks:                  # (not the head)
            ub, proved, i_c, x_c, m_c, z_c = _race_range(row_ptr, lo, hi, seed, off_lo,
                                                         off_hi, inv_t, x_lo, kept_lo,
                                                         LOGPROBS, NOISE_TEST, BLOCK, KEPT)
            # (a NaN or +inf logit in the chunk has already failed the proof: _race_step)
            if KEPT:
                # no bound above -inf under a filter (so a finite max): no kept token here
                empty = (ub == NEG_INF) & (x_lo > NEG_INF)
                proved = proved | empty
                i_c = tl.where(empty, NO_TOKEN, i_c)
                x_c = tl.where(empty, NEG_INF, x_c)
            if not LOGPROBS:
                m_c = x_c
            m_r = x_c
            g_c = _gumbel(_token_words(seed, off_lo, off_hi, i_c, 0),
                          _token_words(seed, off_lo, off_hi, i_c, 1))
        if ~proved:  # rare: the head (3 tokens at most), or a chunk whose race proved nothing
            m_c, i_c, x_c, g_c, z_c, m_r, n_inf, g_inf, i_inf, g_all, i_all = \
                _exact_range(row_ptr, lo, hi, inv_t, x_lo, seed, off_lo, off_hi, RARE_BLOCK,
                             KEPT)
    some = i_c != NO_TOKEN
    out = parts_ptr + (chunk * B + row) * SHARD_COLS
    _store_odd_columns(out, m_r, i_r, g_inf, i_inf, g_all, i_all, n_inf, hi - lo)
    tl.store(out + 9, m_c.to(tl.float64))
    tl.store(out + 10, tl.where(some, i_c.to(tl.float64), NO_INDEX_F))
    tl.store(out + 11, x_c.to(tl.float64))
    tl.store(out + 12, tl.where(some, g_c.to(tl.float64), 0.0))
    tl.store(out + 13, z_c)


@_device
def _col(at, j, ok):
    """Column j of the summaries at ``at`` (0 where not ok)."""
    return tl.load(at + j, mask=ok, other=0.0)


@_device
def _best_of(best_k, best_i, k, i, ok):
    """The running (key, index) winner after one block of candidates: the largest key,
    ties to the lowest index (float64 indices; 2^62: none)."""
    k = tl.where(ok, k, NEG_INF)
    k_blk = tl.max(k, 0)
    i_blk = tl.min(tl.where(ok & (k == k_blk), i, NO_INDEX_F), 0)
    win = (k_blk > best_k) | ((k_blk == best_k) & (i_blk < best_i))
    return tl.where(win, k_blk, best_k), tl.where(win, i_blk, best_i)


@triton.jit
def _combine_shards_kernel(parts_ptr, P, B, temp_ptr, temp_val, tokens_ptr, logprobs_ptr,
                           TEMP_T: tl.constexpr, BLOCK_P: tl.constexpr):
    """Row r's token and log-prob from the P gathered summaries of a plain call's shard
    chunks (parts [P, B, SHARD_COLS], all ranks' in rank order): one program a row, the
    summaries read twice (the maxima, then the winners and sums).  The same arithmetic as
    fused_sampler.distributed._plain_result and _finish_rows, which the reference
    backend runs as PyTorch operations: the winners' float64 keys under the largest
    anchor, ties to the lowest index; the normalisers rescaled to it; a row holding +inf
    draws among its +inf tokens and one with no finite logit among all, by the best
    noise; a greedy row takes the lowest index of its max."""
    row = tl.program_id(0).to(tl.int64)
    t = _param(temp_ptr, temp_val, row, TEMP_T, tl.float32)
    greedy, inv_t = _greedy_and_inv_t(t)
    m_raw, token_inf, n_inf, token_all, n_all, arg = _odd_rows_of(parts_ptr, P, B, row,
                                                                  SHARD_COLS, BLOCK_P)
    m = tl.full([], NEG_INF, tl.float64)
    for p0 in range(0, P, BLOCK_P):
        p = p0 + tl.arange(0, BLOCK_P)
        at = parts_ptr + (p * B + row) * SHARD_COLS
        m = tl.maximum(m, tl.max(tl.load(at + 9, mask=p < P, other=NEG_INF), 0))
    inv_t64 = inv_t.to(tl.float64)
    m32 = m.to(tl.float32)
    race_k = tl.full([], NEG_INF, tl.float64)
    race_i = tl.full([], NO_INDEX_F, tl.float64)
    x_tok = tl.full([], NEG_INF, tl.float64)
    total = tl.full([], 0.0, tl.float64)
    for p0 in range(0, P, BLOCK_P):
        p = p0 + tl.arange(0, BLOCK_P)
        ok = p < P
        at = parts_ptr + (p * B + row) * SHARD_COLS
        idx = _col(at, 10, ok)
        key = tl.where(idx < NO_INDEX_F, (_col(at, 11, ok) - m) * inv_t64 + _col(at, 12, ok),
                       NEG_INF)
        race_k, race_i = _best_of(race_k, race_i, key, idx, ok)
        scale = tl.exp((_col(at, 9, ok).to(tl.float32) - m32) * inv_t).to(tl.float64)
        z = _col(at, 13, ok)
        total += tl.sum(tl.where(ok & (z > 0.0), z * scale, 0.0), 0)
    for p0 in range(0, P, BLOCK_P):      # the winner's logit (its summary's, a few reads)
        p = p0 + tl.arange(0, BLOCK_P)
        ok = p < P
        at = parts_ptr + (p * B + row) * SHARD_COLS
        hit = ok & (_col(at, 10, ok) == race_i)
        x_tok = tl.maximum(x_tok, tl.max(tl.where(hit, _col(at, 11, ok), NEG_INF), 0))
    logp = ((x_tok.to(tl.float32) - m32) * inv_t).to(tl.float64) - tl.log(total)
    _finish_odd_row(tokens_ptr, logprobs_ptr, row, race_i, logp, greedy, m_raw, token_inf,
                    n_inf, token_all, n_all, arg)


@_device
def _odd_rows_of(parts_ptr, P, B, row, cols, BLOCK_P: tl.constexpr):
    """From the odd rows' columns of row ``row``'s P summaries (parts [P, B, cols]): the
    row's max, the winner among its +inf tokens and their count, the winner among all
    its tokens and their count (the best noise, ties to the lowest index), and the lowest
    index of its max (fused_sampler.distributed._finish_rows)."""
    m_raw = tl.full([], NEG_INF, tl.float64)
    for p0 in range(0, P, BLOCK_P):
        p = p0 + tl.arange(0, BLOCK_P)
        m_raw = tl.maximum(m_raw, tl.max(tl.load(parts_ptr + (p * B + row) * cols,
                                                 mask=p < P, other=NEG_INF), 0))
    none_k = tl.full([], NEG_INF, tl.float64)
    none_i = tl.full([], NO_INDEX_F, tl.float64)
    inf_k, inf_i, all_k, all_i = none_k, none_i, none_k, none_i
    arg = none_i
    n_inf = tl.full([], 0.0, tl.float64)
    n_all = tl.full([], 0.0, tl.float64)
    for p0 in range(0, P, BLOCK_P):
        p = p0 + tl.arange(0, BLOCK_P)
        ok = p < P
        at = parts_ptr + (p * B + row) * cols
        inf_k, inf_i = _best_of(inf_k, inf_i, _col(at, 3, ok), _col(at, 4, ok), ok)
        all_k, all_i = _best_of(all_k, all_i, _col(at, 5, ok), _col(at, 6, ok), ok)
        arg = tl.minimum(arg, tl.min(tl.where(ok & (_col(at, 0, ok) == m_raw), _col(at, 2, ok),
                                              NO_INDEX_F), 0))
        n_inf += tl.sum(_col(at, 7, ok), 0)
        n_all += tl.sum(_col(at, 8, ok), 0)
    return m_raw, inf_i, n_inf, all_i, n_all, arg


@_device
def _finish_odd_row(tokens_ptr, logprobs_ptr, row, token, logp, greedy, m_raw, token_inf,
                    n_inf, token_all, n_all, arg):
    """Store row ``row``'s token and log-prob: a row holding +inf draws among its +inf
    tokens and one with no finite logit among all (uniform whatever the filters), a
    greedy row takes the lowest index of its max (_odd_rows_of's columns)."""
    token = tl.where(m_raw == POS_INF, token_inf, token)
    logp = tl.where(m_raw == POS_INF, -tl.log(n_inf), logp)
    token = tl.where(m_raw == NEG_INF, token_all, token)
    logp = tl.where(m_raw == NEG_INF, -tl.log(n_all), logp)
    token = tl.where(greedy, arg, token)
    tl.store(tokens_ptr + row, token.to(tl.int64))
    tl.store(logprobs_ptr + row, tl.where(greedy, 0.0, logp).to(tl.float32))


@triton.jit
def _candidates_kernel(
    logits_ptr, stride_row, start, n, top_x_ptr, top_i_ptr, kk, k, full,
    seed_ptr, seed_val, offset_ptr, offset_val, out_ptr, out_cols,
    SEED_T: tl.constexpr, OFFSET_T: tl.constexpr, BLOCK: tl.constexpr, KB: tl.constexpr,
    RARE_BLOCK: tl.constexpr,
):
    """A vocabulary shard's summary for a call with a scalar top-k (candidates; the
    layout of fused_sampler.distributed._candidate_columns, which the reference backend
    builds from PyTorch operations): program r writes row r's out_cols float64.

    From the shard's ``kk`` largest (``top_x``, ``top_i``: torch.topk of the logits with
    NaN as -inf) and ``c``, its k-th largest (-inf where ``full`` is 0, the shard narrower
    than k): the candidates (those strictly above c: logit, global index, noise; padded
    to k), the odd rows' SHARED_COLS (max, lowest index of it, the +inf tokens' count
    and best noise, the best noise of all where the shard has nothing above -inf, the
    token count; the NaN flag left 0 for the caller) and the group tied at c (c, its
    size, its best noise and that token's index).  One read of the shard, which counts
    the group; its noise is the kk largest's, unless the group reaches past them, or the
    shard holds +inf or nothing above -inf: then a second read draws the noise of the
    tiles holding such tokens (one Philox call a token and stream)."""
    row = tl.program_id(0).to(tl.int64)
    row_ptr = logits_ptr + row * stride_row - start        # indexed by global token index
    end = start + n
    seed = _param(seed_ptr, seed_val, row, SEED_T, tl.int64)
    offset = _param(offset_ptr, offset_val, row, OFFSET_T, tl.int64)
    off_lo, off_hi = _offset_halves(offset)
    out = out_ptr + row * out_cols
    c = tl.where(full != 0, _sanitize(tl.load(top_x_ptr + row * kk + kk - 1)), NEG_INF)
    # the candidates, with their noise; the group's tokens among the kk largest
    j = tl.arange(0, KB)
    has = j < kk
    cx = _sanitize(tl.load(top_x_ptr + row * kk + j, mask=has, other=NEG_INF))  # -0 -> +0
    ci = tl.load(top_i_ptr + row * kk + j, mask=has, other=0).to(tl.int32) + start
    above = has & (cx > c)
    cg = _gumbel(_token_words(seed, off_lo, off_hi, ci, 0),
                 _token_words(seed, off_lo, off_hi, ci, 1))
    cand = out + SHARED_COLS + j
    tl.store(cand, tl.where(above, cx, NEG_INF).to(tl.float64), mask=j < k)
    tl.store(cand + k, tl.where(above, ci.to(tl.float64), NO_INDEX_F), mask=j < k)
    tl.store(cand + 2 * k, tl.where(above, cg, 0.0).to(tl.float64), mask=j < k)
    in_top = has & (cx == c)
    n_top = tl.sum(in_top.to(tl.int32), 0)
    best_tie = tl.max(tl.where(in_top & (cx > NEG_INF), cg, NEG_INF), 0)  # -inf: no race
    i_tie = tl.min(tl.where(in_top & (cg == best_tie), ci, NO_TOKEN), 0)
    # the shard, once: its max and first index, its +inf tokens, the group's size.  No
    # lane mask: the last tile's padding is -inf, which beats no max (each lane's index
    # starts at its first token), is not +inf, and is c only where c = -inf; there the
    # group is every token but those above c, all of which are among the kk largest
    m_v = tl.full([BLOCK], NEG_INF, tl.float32)
    i_v = start + tl.arange(0, BLOCK)
    n_inf_v = tl.zeros([BLOCK], tl.int32)
    n_tie_v = tl.zeros([BLOCK], tl.int32)
    for lo in range(start, end, BLOCK):  # stream: candidates' shard
        offs, x = _load_tile(row_ptr, lo, end, BLOCK, True)
        first = x > m_v                                   # tiles in index order
        m_v = tl.where(first, x, m_v)
        i_v = tl.where(first, offs, i_v)
        n_inf_v += (x == POS_INF).to(tl.int32)
        n_tie_v += (x == c).to(tl.int32)
    m_r = tl.max(m_v, 0)
    i_r = tl.where(n > 0, tl.min(tl.where(m_v == m_r, i_v, NO_TOKEN), 0), NO_TOKEN)
    n_inf = tl.sum(n_inf_v, 0)
    n_tie = tl.where(c > NEG_INF, tl.sum(n_tie_v, 0), n - tl.sum(above.to(tl.int32), 0))
    best_inf = tl.full([], NEG_INF, tl.float32)
    i_inf = tl.full([], NO_TOKEN, tl.int32)
    best_all = best_inf
    i_all = i_inf
    if (n_inf > 0) | (m_r == NEG_INF) | ((n_tie > n_top) & (c > NEG_INF)):  # rare: odd
        # tokens, or a group reaching past the kk largest: the noise of their tiles
        every = tl.where(m_r == NEG_INF, POS_INF, NEG_INF)  # a bound, not a boolean:
        # "Interpreter notes" in docs/design.md
        none = tl.full([RARE_BLOCK], NO_TOKEN, tl.int32)
        g_tie_v = tl.full([RARE_BLOCK], NEG_INF, tl.float32)
        i_tie_v = none
        g_inf_v = g_tie_v
        i_inf_v = none
        g_all_v = g_tie_v
        i_all_v = none
        for lo in range(start, end, RARE_BLOCK):  # stream: candidates' odd tokens (tile RARE_BLOCK)
            offs, x = _load_tile(row_ptr, lo, end, RARE_BLOCK, True)
            ok = offs < end
            racing = ok & (x == c) & (x > NEG_INF)            # a group of -inf never races
            is_inf = ok & (x == POS_INF)
            anyone = ok & (x < every)                         # no token above -inf
            if tl.max((racing | is_inf | anyone).to(tl.int32), 0) > 0:
                g = _gumbel(_token_words(seed, off_lo, off_hi, offs, 0),
                            _token_words(seed, off_lo, off_hi, offs, 1))
                g_tie_v, i_tie_v = _keep_best(racing, g, offs, g_tie_v, i_tie_v)
                g_inf_v, i_inf_v = _keep_best(is_inf, g, offs, g_inf_v, i_inf_v)
                g_all_v, i_all_v = _keep_best(anyone, g, offs, g_all_v, i_all_v)
        best_tie, i_tie = _best_lane(g_tie_v, i_tie_v)
        best_inf, i_inf = _best_lane(g_inf_v, i_inf_v)
        best_all, i_all = _best_lane(g_all_v, i_all_v)
    _store_odd_columns(out, m_r, i_r, best_inf, i_inf, best_all, i_all, n_inf, n)
    group = out + SHARED_COLS + 3 * k
    tl.store(group, c.to(tl.float64))
    tl.store(group + 1, n_tie.to(tl.float64))
    tl.store(group + 2, best_tie.to(tl.float64))
    tl.store(group + 3, tl.where(i_tie != NO_TOKEN, i_tie.to(tl.float64), NO_INDEX_F))


@_device
def _largest_reaching(key_a, w_a, key_b, w_b, target, STRICT: tl.constexpr):
    """The largest uint32 T whose weight at or above it (strictly above with STRICT),
    summed over both vectors of uint32 keys and int64 weights, reaches ``target``
    (float64); 0 where none does.  By radix selection two bits at a time, as _kth_key."""
    digits = tl.arange(0, 4).to(tl.uint32)
    prefix = tl.full([], 0, tl.uint32)
    for level in tl.static_range(16):
        cand = prefix + (digits << (30 - 2 * level))
        if STRICT:
            at_a = key_a[None, :] > cand[:, None]
            at_b = key_b[None, :] > cand[:, None]
        else:
            at_a = key_a[None, :] >= cand[:, None]
            at_b = key_b[None, :] >= cand[:, None]
        reach = tl.sum(tl.where(at_a, w_a[None, :], 0), 1) + \
            tl.sum(tl.where(at_b, w_b[None, :], 0), 1)
        # the weight falls as the digit grows; digit 0 keeps the prefix
        prefix = prefix + (tl.max(tl.where(reach.to(tl.float64) >= target, digits, 0), 0)
                           << (30 - 2 * level))
    return prefix


@triton.jit
def _combine_candidates_kernel(
    parts_ptr, W, B, k, cols, temp_ptr, temp_val, topp_ptr, topp_val, minp_ptr, minp_val,
    tokens_ptr, logprobs_ptr,
    TEMP_T: tl.constexpr, TOPP_T: tl.constexpr, MINP_T: tl.constexpr,
    HAS_TOP_P: tl.constexpr, HAS_MIN_P: tl.constexpr, NB: tl.constexpr,
    WB: tl.constexpr,
):
    """Row r's token and log-prob from the W gathered candidate summaries of a call with
    a scalar top-k (parts [W, B, cols], all ranks' in rank order, as _candidates_kernel
    lays them out): one program a row, every candidate and group in registers.  The
    arithmetic of fused_sampler.distributed._candidates_result, which the reference
    backend runs as PyTorch operations: the row's k-th largest counting each group's
    size, top-p's threshold over exact fixed-point masses (the kernel's _term), min-p,
    the race over the kept candidates and groups (float64 keys under the row max, ties
    to the lowest index) and the normaliser; then the odd rows and greedy rows."""
    row = tl.program_id(0).to(tl.int64)
    t = _param(temp_ptr, temp_val, row, TEMP_T, tl.float32)
    greedy, inv_t = _greedy_and_inv_t(t)
    m_raw, token_inf, n_inf, token_all, n_all, arg = _odd_rows_of(parts_ptr, W, B, row,
                                                                  cols, WB)
    m = tl.where((m_raw > NEG_INF) & (m_raw < POS_INF), m_raw, 0.0).to(tl.float32)
    # the candidates [NB] and the groups [WB]
    e = tl.arange(0, NB)
    has = e < W * k
    at = parts_ptr + ((e // k) * B + row) * cols + SHARED_COLS + e % k
    x = tl.load(at, mask=has, other=NEG_INF).to(tl.float32)
    idx = tl.load(at + k, mask=has, other=NO_INDEX_F)
    g = tl.load(at + 2 * k, mask=has, other=0.0)
    real = idx < NO_INDEX_F
    w = tl.arange(0, WB)
    at_w = parts_ptr + (w * B + row) * cols + SHARED_COLS + 3 * k
    c = tl.load(at_w, mask=w < W, other=NEG_INF).to(tl.float32)
    size = tl.load(at_w + 1, mask=w < W, other=0.0).to(tl.int64)
    # top-k: the row's k-th largest, a group weighing its size
    key = _key(x)
    key_c = _key(c)
    theta = _unkey(_largest_reaching(key, real.to(tl.int64), key_c, size,
                                     tl.cast(k, tl.float64), False))  # (k = 1: a constexpr)
    keep = real & (x >= theta)
    group_on = (size > 0) & (c == theta)    # (the groups kept are at theta: c stands for it)
    d = tl.where(x == NEG_INF, NEG_INF, (x - m) * inv_t)
    d_c = tl.where(c == NEG_INF, NEG_INF, (c - m) * inv_t)
    # (the filters' off states are bounds that pass everything: the interpreter takes no
    # vector-and-scalar-boolean predicates, "Interpreter notes" in docs/design.md)
    if HAS_TOP_P:
        p = _param(topp_ptr, topp_val, row, TOPP_T, tl.float64)
        p = tl.where(p < 1.0, tl.maximum(p, 1e-30), 2.0)   # off (or NaN): above the mass
        q = tl.where(keep, _term(x, m, inv_t), 0)
        q_c = tl.where(group_on, size * _term(c, m, inv_t), 0)
        pk = p * (tl.sum(q, 0) + tl.sum(q_c, 0)).to(tl.float64)
        # the kept mass strictly above a key falls as the key grows: the lowest passing
        # key is one past the largest key whose mass strictly above reaches pK
        low = _largest_reaching(key, q, key_c, tl.zeros([WB], tl.int64), pk, True)
        low = tl.where(tl.sum(q, 0).to(tl.float64) >= pk, low.to(tl.int64) + 1, 0)
        keep = keep & (key.to(tl.int64) >= low)
        group_on = group_on & (key_c.to(tl.int64) >= low)
    if HAS_MIN_P:
        mp = _param(minp_ptr, minp_val, row, MINP_T, tl.float32)
        m_on = mp > 0.0
        floor = tl.where(m_on, tl.log(tl.where(m_on, tl.minimum(mp, 1.0), 1.0)), NEG_INF)
        keep = keep & (d >= floor)
        group_on = group_on & (d_c >= floor)
    # the race over the kept candidates and each kept group's best token
    inv_t64 = inv_t.to(tl.float64)
    m64 = m.to(tl.float64)
    race = tl.where(keep, (x.to(tl.float64) - m64) * inv_t64 + g, NEG_INF)   # (x > c_r)
    g_w = tl.load(at_w + 2, mask=w < W, other=NEG_INF)
    i_w = tl.load(at_w + 3, mask=w < W, other=NO_INDEX_F)
    race_w = tl.where(group_on & (c > NEG_INF), (c.to(tl.float64) - m64) * inv_t64 + g_w,
                      NEG_INF)
    best = tl.maximum(tl.max(race, 0), tl.max(race_w, 0))
    token = tl.minimum(tl.min(tl.where(race == best, idx, NO_INDEX_F), 0),
                       tl.min(tl.where(race_w == best, i_w, NO_INDEX_F), 0))
    d_tok = tl.maximum(tl.max(tl.where(idx == token, d, NEG_INF), 0),
                       tl.max(tl.where(i_w == token, d_c, NEG_INF), 0))
    total = tl.sum(tl.where(keep, tl.exp(d).to(tl.float64), 0.0), 0) + \
        tl.sum(tl.where(group_on, size.to(tl.float64) * tl.exp(d_c).to(tl.float64), 0.0),
               0)
    logp = d_tok.to(tl.float64) - tl.log(total)
    _finish_odd_row(tokens_ptr, logprobs_ptr, row, token, logp, greedy, m_raw, token_inf,
                    n_inf, token_all, n_all, arg)


# ----------------------------------------------------------------------------- launcher

DEFAULT_BIN_BITS = 10
DEFAULT_CAP = 4096
RARE_TILE = 512
CHUNK_TILE = 1024
CANDIDATE_TILE = 1024


@functools.lru_cache(maxsize=256)
def _sizes_for(vocab: int):
    """(tile width, histogram bits, scratch capacity) for a vocabulary of V tokens.

    The tile is the whole row for small V, else 4096 lanes (16 KB of float32).  Small
    vocabularies get a histogram and a scratch no larger than the row: with CAP >= V every
    bracket fits, so no refine pass runs.  The tokens never depend on these sizes.
    """
    v2 = max(16, 1 << (vocab - 1).bit_length())    # next power of 2, without Triton's
    # constexpr-function wrapper (Triton 3.9: ~10 us a call on the host)
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
    """The kernel's cap on full-row reads of one row, 6 + 2 * ceil(32 / bin_bits): far
    above anything measured (docs/design.md, "Worst case"); the tests assert no row
    reaches it."""
    return 6 + 2 * -(-32 // bin_bits)


@functools.lru_cache(maxsize=None)
def _programs_for(device: torch.device) -> int:
    """How many programs walk the rows: two per SM on a GPU (a 16-warp program at up to
    128 registers fills an SM's register file, so one runs while the other waits: rows
    balance across SMs as programs finish), 32 in the interpreter (so tests run the row
    loop)."""
    if device.type == "cuda":
        return 2 * torch.cuda.get_device_properties(device).multi_processor_count
    return 32


def program_memory(vocab: int, bin_bits: int = None, cap: int = None, block: int = None):
    """Bytes of scratch memory one program owns for a vocabulary of V tokens (with top-k or
    top-p; min-p alone needs no bin masses): the scratch entries and the search's state
    slots (int64), B's bin masses (int64), three histograms and the collect's words
    (int32).  A launch allocates this for each of its min(B, programs) programs."""
    sizes = _sizes_for(vocab)
    block, bin_bits, cap = block or sizes[0], bin_bits or sizes[1], cap or sizes[2]
    return (cap + 32) * 8 + (1 << bin_bits) * 8 + ((3 << bin_bits) + block) * 4


def _param_args(a, dummy):
    """The per-row parameters as kernel arguments (pointer, value pairs) and the
    constexprs that say which are tensors and which filters are on."""
    has_k, has_p, has_m = a.top_k is not None, a.top_p is not None, a.min_p is not None
    temp_ptr, temp_val, temp_t = _scalar_or_tensor(a.temperature, torch.float32, dummy)
    k_ptr, k_val, k_t = _scalar_or_tensor(a.top_k if has_k else 0, torch.int64, dummy)
    p_ptr, p_val, p_t = _scalar_or_tensor(a.top_p if has_p else 1.0, torch.float64, dummy)
    mp_ptr, mp_val, mp_t = _scalar_or_tensor(a.min_p if has_m else 0.0, torch.float32, dummy)
    seed_ptr, seed_val, seed_t = _scalar_or_tensor(a.seed, torch.int64, dummy)
    off_ptr, off_val, off_t = _scalar_or_tensor(a.offset, torch.int64, dummy)
    args = (temp_ptr, temp_val, k_ptr, k_val, p_ptr, p_val, mp_ptr, mp_val,
            seed_ptr, seed_val, off_ptr, off_val)
    consts = dict(TEMP_T=temp_t, TOPK_T=k_t, TOPP_T=p_t, MINP_T=mp_t, SEED_T=seed_t,
                  OFFSET_T=off_t, HAS_TOP_K=has_k, HAS_TOP_P=has_p, HAS_MIN_P=has_m,
                  JOINT=a.order == "joint")
    return args, consts


def _launch_common(a, return_logprobs, block, bin_bits, cap):
    """What both kernels' launches start from: (tile width, histogram bits, scratch
    capacity) for the call's V unless given, a 1-element dummy, the per-row parameters
    as kernel arguments and their constexprs, and the tokens and log-probs outputs."""
    x = a.logits
    B, V = x.shape
    sizes = _sizes_for(V)
    dummy = torch.empty(1, dtype=torch.int64, device=x.device)
    param_args, consts = _param_args(a, dummy)
    tokens = torch.empty(B, dtype=torch.int64, device=x.device)
    logprobs = torch.empty(B, dtype=torch.float32, device=x.device) if return_logprobs \
        else dummy
    return (block or sizes[0], bin_bits or sizes[1], cap or sizes[2]), dummy, param_args, \
        consts, tokens, logprobs


def _sizes_consts(block, bin_bits, cap, noise_test, lane_k=None):
    """The constexprs of the sizes; ``lane_k``: the largest top-k a row takes from pass 1's
    group maxima (_lane_row; at most the BLOCK // 4 groups, 0 never; by default half the
    groups, so that the k-th largest group max stays close to the k-th largest logit)."""
    groups = block // 4
    lane_k = groups // 2 if lane_k is None else lane_k
    if not 0 <= lane_k <= groups:
        raise ValueError(f"lane_k: {lane_k} is not in [0, {groups}] (block {block})")
    return dict(BLOCK=block, BIN_BITS=bin_bits, CAP=cap, CHUNK=min(CHUNK_TILE, cap, block),
                LANE_K=lane_k,
                RARE_BLOCK=min(RARE_TILE, block), MAX_PASSES=max_passes(bin_bits),
                NOISE_TEST=noise_test,
                # No FMA contraction: the kernel's float32 / float64 arithmetic must round
                # as the reference's separate operations do (Triton 3.9 still fuses by
                # default); the race's bounds use explicit fma where they want one.
                num_warps=max(4, min(16, block // 256)), enable_fp_fusion=False)


def kernel_args(a, probs_mode: bool, *, return_logprobs: bool = True, block: int = None,
                bin_bits: int = None, cap: int = None, programs: int = None,
                stats: bool = False, noise_test: int = 0, lane_k: int = None):
    """The launch of a checked call (see fused_sampler._args.Call) by _sample_kernel (a
    program per row), without launching it.

    Returns (grid, args, constexprs and launch options, outputs) where outputs are
    (tokens int64 [B], logprobs float32 [B], probs float32 [B, V], stats int32 [B, 2]),
    the unrequested ones a 1-element dummy.  ``block``, ``bin_bits`` and ``cap`` override
    the tile width, the histogram resolution and the scratch capacity (tests shrink them
    so that every multi-tile, refine and collect path runs on small inputs); ``programs``
    the number of programs sharing the rows (each owns one scratch); ``stats`` records
    each row's full-row reads and exact fallbacks; ``noise_test`` (tests only) loosens
    (1) or spoils (2) the race's cheap bounds; ``lane_k`` the largest top-k taken from
    pass 1's group maxima (see _sizes_consts).
    """
    x = a.logits
    B, V = x.shape
    dev = x.device
    (block, bin_bits, cap), dummy, param_args, consts, tokens, logprobs = _launch_common(
        a, return_logprobs, block, bin_bits, cap)
    has_k, has_p, has_m = consts["HAS_TOP_K"], consts["HAS_TOP_P"], consts["HAS_MIN_P"]
    probs = torch.empty(B, V, dtype=torch.float32, device=dev) if probs_mode else dummy
    grid = min(B, programs or _programs_for(dev))
    # per program: the scratch (cap entries) and the search's state area (32 slots)
    scratch = torch.empty(grid, cap + 32, dtype=torch.int64, device=dev) \
        if has_k or has_p or has_m else dummy
    binmass = torch.empty(grid, 1 << bin_bits, dtype=torch.int64, device=dev) if has_p \
        else dummy
    hists = torch.empty(grid, (3 << bin_bits) + block if has_k or has_p or has_m else 1,
                        dtype=torch.int32, device=dev)
    stats_out = torch.empty(B, 2, dtype=torch.int32, device=dev) if stats else dummy
    args = (x, x.stride(0), V, B, *param_args,
            tokens, logprobs, probs, scratch, binmass, hists, stats_out)
    # filtered_probs keeps the histogram way: with the lane its write pass spilled (Triton
    # 3.9, 76 B), and it is not a decode step's call
    consts.update(PROBS=probs_mode, LOGPROBS=return_logprobs and not probs_mode, STATS=stats,
                  **_sizes_consts(block, bin_bits, cap, noise_test,
                                  0 if probs_mode else lane_k))
    return (grid,), args, consts, (tokens, logprobs, probs, stats_out)


CHUNKS_ENV = "FUSED_SAMPLER_CHUNKS"
SPLIT_BLOCK_MIN = 1024


def split_plan(B: int, V: int, device: torch.device, filtered: bool, chunks: int = None,
               block: int = None, programs: int = None):
    """(chunks per row, tile width) when the rows of a [B, V] sampling call are split over
    programs (_split_kernel), or None for one program per row (_sample_kernel).

    ``chunks`` forces the split (so does the environment variable FUSED_SAMPLER_CHUNKS: the
    test suite runs whole with it), or with 0 forbids it; chunks past a row's end are
    empty.  Otherwise only a GPU splits, while the batch has at most one row per SM
    (``programs``, the programs of one wave: the SM count by default;
    scripts/sass_report.py models GPUs it does not have): a row gets as many chunks as
    make one wave (at least 2), each of whole tiles.  Rows with no filter may take tiles
    half as wide (down to SPLIT_BLOCK_MIN) while the row has at most half as many tiles as
    the wave wants chunks; filtered rows keep the full tile, because the last program of a
    row runs any refine pass over the whole row alone.  One wave, not the two programs per
    SM that one program per row takes: on an H200 (docs/design.md, "Small batches") B = 8
    ran 17.6 us in 16 chunks of 4096 tokens against 22.9 in 32, and at B = 64 the time
    grew with the chunks from 4 up.
    """
    if chunks is None and os.environ.get(CHUNKS_ENV):
        chunks = int(os.environ[CHUNKS_ENV])
    block = block or _sizes_for(V)[0]
    if B == 0 or V == 0 or chunks == 0:
        return None
    if chunks is None:
        if device.type != "cuda":
            return None
        programs = programs or _programs_for(device) // 2
        if B > programs:
            return None
        chunks = max(programs // B, 2)
        while not filtered and block > SPLIT_BLOCK_MIN and 2 * -(-V // block) <= chunks:
            block //= 2
        chunks = min(chunks, -(-V // block))
        if chunks < 2:
            return None
    return int(chunks), block


def split_kernel_args(a, chunks: int, *, return_logprobs: bool = True, block: int = None,
                      bin_bits: int = None, cap: int = None, stats: bool = False,
                      noise_test: int = 0, phase: int = 1, lane_k: int = None):
    """The launch of a checked sampling call by _split_kernel, rows cut into ``chunks``
    chunks of whole tiles (grid chunks x B), for its first launch (``phase`` 1; then,
    with the same arguments, PHASE=2 where the constexprs say BINS_LAUNCH, and PHASE=3
    for a call with filters); the rest as :func:`kernel_args`.  Scratch memory is per
    row (bounded: rows split only while the batch is small), and the histograms with
    each row's counters start at zero (one memset)."""
    x = a.logits
    B, V = x.shape
    dev = x.device
    (block, bin_bits, cap), dummy, param_args, consts, tokens, logprobs = _launch_common(
        a, return_logprobs, block, bin_bits, cap)
    has_k, has_p, has_m = consts["HAS_TOP_K"], consts["HAS_TOP_P"], consts["HAS_MIN_P"]
    filtered = has_k or has_p or has_m
    scratch = torch.empty(B, cap + 32, dtype=torch.int64, device=dev) if filtered else dummy
    # per row (int32): B's bin masses (int64), three histograms and the collect's words,
    # then 8 counters and sums
    hist_at = (2 << bin_bits) if has_p else 0
    hists = torch.zeros(B, hist_at + ((3 << bin_bits) + block if filtered else 0) + 8,
                        dtype=torch.int32, device=dev)
    parts = torch.empty(B, chunks, 4, dtype=torch.int64, device=dev)
    words = torch.empty(B, chunks, block, dtype=torch.int32, device=dev) if filtered \
        else dummy
    stats_out = torch.empty(B, 2, dtype=torch.int32, device=dev) if stats else dummy
    tiles = -(-V // block)
    chunk_len = -(-tiles // chunks) * block
    args = (x, x.stride(0), V, chunk_len, *param_args, tokens, logprobs, scratch,
            hists, hists.view(torch.int64), hists.stride(0), hist_at, parts, words, stats_out)
    # rows may have top-p alone (not when a scalar top-k is on for every row).  Only with
    # top-k given: Triton 3.6 (the GPU image's) crashes in TritonGPUCoalesce compiling
    # PHASE 1 of a call with top-p and no top-k that defers its search (found on an H200),
    # so there top-p alone's bin masses stay in the last program, unsplit.
    k_everywhere = has_k and not isinstance(a.top_k, torch.Tensor) and 0 < a.top_k < V
    consts.update(LOGPROBS=return_logprobs, STATS=stats, PHASE=phase,
                  BINS_LAUNCH=has_p and has_k and not k_everywhere,
                  **_sizes_consts(block, bin_bits, cap, noise_test, lane_k))
    return (chunks, B), args, consts, (tokens, logprobs, dummy, stats_out)


def collect_launch(a, chunks: int, consts: dict) -> bool:
    """Whether a split call needs its collect launch (PHASE 3): every filtered call but
    one whose scalar top-k every row settles in launch 1 (_one_launch_row)."""
    if not (consts["HAS_TOP_K"] or consts["HAS_TOP_P"] or consts["HAS_MIN_P"]):
        return False
    k = a.top_k
    if not consts["HAS_TOP_K"] or isinstance(k, torch.Tensor) or \
            not 0 < k < a.logits.shape[1] or (consts["JOINT"] and consts["HAS_TOP_P"]):
        return True
    return not (k <= consts["LANE_K"] and
                k * chunks <= min(2 * consts["CHUNK"], consts["CAP"] // 2))


def launch(a, probs_mode: bool, *, return_logprobs: bool = True, stats: bool = False,
           chunks: int = None, **sizes):
    """Run the kernel on a checked call (arguments as in :func:`kernel_args`; ``chunks``
    as in :func:`split_plan`: filtered_probs never splits).

    Returns (tokens int64 [B], logprobs float32 [B] or None, probs float32 [B, V] or None,
    passes int32 [B] or None, exact fallbacks int32 [B] or None).
    """
    B, V = a.logits.shape
    plan = None
    if not probs_mode:
        plan = split_plan(B, V, a.logits.device,
                          a.top_k is not None or a.top_p is not None or a.min_p is not None,
                          chunks, sizes.get("block"))
    if plan is None:
        grid, args, kwargs, (tokens, logprobs, probs, stats_out) = kernel_args(
            a, probs_mode, return_logprobs=return_logprobs, stats=stats, **sizes)
        _sample_kernel[grid](*args, **kwargs)
    else:
        sizes = {k: v for k, v in sizes.items() if k != "programs"}
        sizes["block"] = plan[1]
        grid, args, kwargs, (tokens, logprobs, probs, stats_out) = split_kernel_args(
            a, plan[0], return_logprobs=return_logprobs, stats=stats, **sizes)
        _split_kernel[grid](*args, **kwargs)
        if kwargs["BINS_LAUNCH"]:
            _split_kernel[grid](*args, **dict(kwargs, PHASE=2))  # top-p alone's bin masses
        if collect_launch(a, plan[0], kwargs):
            _split_kernel[grid](*args, **dict(kwargs, PHASE=3))  # the collect pass
    return (tokens, logprobs if return_logprobs else None, probs if probs_mode else None,
            stats_out[:, 0] if stats else None, stats_out[:, 1] if stats else None)


def sample(a, return_logprobs: bool = True, chunks: int = None):
    """(tokens, logprobs or None) for a checked call (``chunks``: see split_plan)."""
    tokens, logprobs, *_ = launch(a, probs_mode=False, return_logprobs=return_logprobs,
                                  chunks=chunks)
    return tokens, logprobs


def filtered_probs(a):
    """float32 [B, V] filtered probabilities for a checked call."""
    return launch(a, probs_mode=True, return_logprobs=False)[2]


LEVEL_BLOCK = 1024


def level_plan(B: int, n: int, device: torch.device, programs: int = None):
    """Chunks per row for a radix level of a shard ``n`` tokens wide: on a GPU, as many
    whole LEVEL_BLOCK tiles as fill one wave of ``programs`` (the SM count by default)
    with B rows; one elsewhere (the interpreter runs programs one after another), unless
    FUSED_SAMPLER_CHUNKS forces them (as split_plan)."""
    if os.environ.get(CHUNKS_ENV):
        return max(1, int(os.environ[CHUNKS_ENV]))
    if device.type != "cuda" and programs is None:
        return 1
    programs = programs or _programs_for(device) // 2
    return max(1, min(programs // max(B, 1), -(-n // LEVEL_BLOCK)))


def radix_level_args(logits: torch.Tensor, n: int, m_raw: torch.Tensor,
                     inv_t: torch.Tensor, shift: int, radix_bits: int, state: torch.Tensor,
                     *, has_k: bool, has_p: bool, kept_lo: torch.Tensor = None,
                     prev: torch.Tensor = None, pk: torch.Tensor = None,
                     p: torch.Tensor = None, first: bool = False, stream: bool = True,
                     out: torch.Tensor = None, state_out: torch.Tensor = None,
                     chunks: int = 1, block: int = None):
    """The launch of _radix_level_kernel (radix_level): (grid, args, constexprs and
    options, the zeroed int64 [H, B, 2^radix_bits] output (``out``, else a new one), or
    None without ``stream``)."""
    B = logits.shape[0]
    if state_out is None:
        if chunks > 1 and prev is not None:
            raise ValueError("chunks > 1 make their choice into a state_out of their own")
        state_out = state
    block = block or min(LEVEL_BLOCK, max(triton.next_power_of_2(n), 16))
    chunk_len = max(-(-n // (chunks * block)), 1) * block
    dummy = state                          # stands in for the pointers a launch never reads
    hist = None
    if stream:
        hist = out if out is not None else torch.zeros(
            int(has_k) + int(has_p), B, 1 << radix_bits, dtype=torch.int64,
            device=logits.device)
    return (chunks if stream else 1, B), \
        (logits, logits.stride(0), n, chunk_len, m_raw, inv_t, state, state_out,
         pk if pk is not None else dummy, p if p is not None else dummy,
         kept_lo if kept_lo is not None else dummy, prev if prev is not None else dummy,
         hist if stream else dummy, B, shift), \
        dict(HAS_K=has_k, HAS_P=has_p, CHOOSE=prev is not None, FIRST=first, STREAM=stream,
             RADIX_BITS=radix_bits, BLOCK=block, num_warps=4), hist


def radix_level(logits: torch.Tensor, n: int, m_raw: torch.Tensor, inv_t: torch.Tensor,
                shift: int, radix_bits: int, state: torch.Tensor, *, has_k: bool,
                has_p: bool, kept_lo: torch.Tensor = None, prev: torch.Tensor = None,
                pk: torch.Tensor = None, p: torch.Tensor = None, first: bool = False,
                stream: bool = True, out: torch.Tensor = None,
                state_out: torch.Tensor = None, chunks: int = 1, block: int = None):
    """One launch of _radix_level_kernel over a vocabulary shard of ``n`` tokens
    (``logits`` [B, >= n], any float dtype and row stride; the row max ``m_raw``, float32
    [B] contiguous, the whole row's, +-inf for the contract's odd rows; 1/T ``inv_t``,
    float32 [B] contiguous), each row cut into ``chunks`` programs of whole ``block``-wide
    tiles (level_plan; LEVEL_BLOCK, or less for a narrow shard).  With ``prev`` (the
    previous level's all-reduced histograms) it first extends the rows' prefixes of
    ``state`` (int64 [B, 4]: top-k's prefix, the tokens it still needs, top-p's prefix,
    the mass above its bracket) into ``state_out`` (by default ``state`` itself, which
    several chunks may not share); ``pk`` float64 [B], p x K, set from ``p`` when
    ``first``.  Returns this level's int64 [H, B, 2^radix_bits] digit counts
    (``has_k``) and exact masses at or above ``kept_lo`` (``has_p``) under the prefixes
    (added into ``out``, zeroed, where given), or None without ``stream`` (the last
    level's choice alone)."""
    grid, args, kwargs, hist = radix_level_args(
        logits, n, m_raw, inv_t, shift, radix_bits, state, has_k=has_k, has_p=has_p,
        kept_lo=kept_lo, prev=prev, pk=pk, p=p, first=first, stream=stream, out=out,
        state_out=state_out, chunks=chunks, block=block)
    if logits.shape[0]:
        _radix_level_kernel[grid](*args, **kwargs)
    return hist


def shard_kernel_args(a, start: int, n: int, chunks: int, *, return_logprobs: bool = True,
                      block: int = None, noise_test: int = 0, kept: tuple = None):
    """The launch of _shard_kernel for a checked call on a vocabulary shard of ``n``
    tokens from global index ``start`` (``a.logits``: [B, n], or a stand-in column when
    n = 0, never read): (grid, args, constexprs and options, the float64 [chunks + 1, B,
    SHARD_COLS] summaries).  The shard's body is cut into ``chunks`` chunks of whole
    tiles (the same number on every rank, so that the summaries gather: shard_plan).
    ``kept``: None (no filter), or the filtered rows' (lowest kept key, int64 [B], 0:
    none; the whole rows' max, float32 [B]; ln(min_p), float32 [B], -inf where off, or
    None without min-p)."""
    x = a.logits
    B = x.shape[0]
    body_lo = min(start + (-start) % 4, start + n)
    block = block or _sizes_for(max(n, 1))[0]
    tiles = -(-(start + n - body_lo) // block)
    chunk_len = max(-(-tiles // chunks), 1) * block
    dummy = torch.empty(1, dtype=torch.int64, device=x.device)
    temp_ptr, temp_val, temp_t = _scalar_or_tensor(a.temperature, torch.float32, dummy)
    seed_ptr, seed_val, seed_t = _scalar_or_tensor(a.seed, torch.int64, dummy)
    off_ptr, off_val, off_t = _scalar_or_tensor(a.offset, torch.int64, dummy)
    parts = torch.empty(chunks + 1, B, SHARD_COLS.value, dtype=torch.float64,
                        device=x.device)
    kept_lo, m_raw, log_mp = kept if kept is not None else (dummy, dummy, None)
    args = (x, x.stride(0), start, n, body_lo, chunk_len, B, temp_ptr, temp_val, seed_ptr,
            seed_val, off_ptr, off_val, kept_lo.contiguous(), m_raw.contiguous(),
            log_mp.contiguous() if log_mp is not None else dummy, parts)
    consts = dict(TEMP_T=temp_t, SEED_T=seed_t, OFFSET_T=off_t, LOGPROBS=return_logprobs,
                  KEPT=kept is not None, MIN_P=log_mp is not None, BLOCK=block,
                  RARE_BLOCK=min(RARE_TILE, block), NOISE_TEST=noise_test,
                  num_warps=max(4, min(16, block // 256)), enable_fp_fusion=False)
    return (chunks + 1, B), args, consts, parts


def shard_plan(B: int, width: int, device: torch.device, programs: int = None):
    """(chunks per shard, tile width or None for the shard's own) for a batch of B rows
    sharded ``width`` tokens wide (the widest shard, so that every rank cuts alike): as
    split_plan cuts a row of that width (``programs`` as there); one chunk where it
    would not split."""
    plan = split_plan(B, width, device, False, programs=programs)
    return plan if plan is not None else (1, None)


def shard_parts(a, start: int, n: int, chunks: int, *, return_logprobs: bool = True,
                block: int = None, noise_test: int = 0, kept: tuple = None):
    """float64 [chunks + 1, B, SHARD_COLS] summaries of a vocabulary shard's chunks, over
    every token or (``kept``) the filtered rows' kept ones (_shard_kernel; arguments as
    in :func:`shard_kernel_args`)."""
    grid, args, kwargs, parts = shard_kernel_args(
        a, start, n, chunks, return_logprobs=return_logprobs, block=block,
        noise_test=noise_test, kept=kept)
    if a.batch:
        _shard_kernel[grid](*args, **kwargs)
    return parts


def combine_shards_args(a, parts: torch.Tensor, block_p: int = 64):
    """The launch of _combine_shards_kernel (grid B) on the gathered summaries: (args,
    constexprs and options); its outputs are args[5] and args[6]."""
    P, B, _ = parts.shape
    dev = parts.device
    dummy = torch.empty(1, dtype=torch.int64, device=dev)
    temp_ptr, temp_val, temp_t = _scalar_or_tensor(a.temperature, torch.float32, dummy)
    tokens = torch.empty(B, dtype=torch.int64, device=dev)
    logprobs = torch.empty(B, dtype=torch.float32, device=dev)
    return ((parts.contiguous(), P, B, temp_ptr, temp_val, tokens, logprobs),
            dict(TEMP_T=temp_t, BLOCK_P=block_p, num_warps=2, enable_fp_fusion=False))


def combine_shards(a, parts: torch.Tensor, block_p: int = 64):
    """(tokens int64 [B], logprobs float32 [B]) of a plain call from the gathered
    summaries of every rank's shard chunks (float64 [P, B, SHARD_COLS]), in one launch
    (_combine_shards_kernel, ``block_p`` summaries at a time: tests shrink it)."""
    args, kwargs = combine_shards_args(a, parts, block_p)
    if parts.shape[1]:
        _combine_shards_kernel[(parts.shape[1],)](*args, **kwargs)
    return args[5], args[6]


def candidate_kernel_args(a, top_x: torch.Tensor, top_i: torch.Tensor, start: int, n: int,
                          k: int, block: int = None):
    """The launch of _candidates_kernel (grid B) for a vocabulary shard of ``n`` tokens
    from global index ``start`` (``a.logits``: [B, n], or a stand-in column when n = 0,
    never read) and a scalar top-k of ``k``, from the shard's largest: ``top_x`` (the
    logits' dtype) and ``top_i`` int64 [B, min(k, width)], torch.topk of its logits with
    NaN as -inf.
    ``block``: the tile (CANDIDATE_TILE; tests shrink it).  Returns (grid, args,
    constexprs and options, the float64 [B, SHARED_COLS + 3k + 4] summary)."""
    x = a.logits
    B, kk = top_x.shape
    dummy = torch.empty(1, dtype=torch.int64, device=x.device)
    seed_ptr, seed_val, seed_t = _scalar_or_tensor(a.seed, torch.int64, dummy)
    off_ptr, off_val, off_t = _scalar_or_tensor(a.offset, torch.int64, dummy)
    cols = SHARED_COLS.value + 3 * k + 4
    out = torch.empty(B, cols, dtype=torch.float64, device=x.device)
    args = (x, x.stride(0), start, n, top_x.contiguous(), top_i.contiguous(), kk, k,
            int(kk == k), seed_ptr, seed_val, off_ptr, off_val, out, cols)
    block = block or CANDIDATE_TILE
    return (B,), args, dict(SEED_T=seed_t, OFFSET_T=off_t, BLOCK=block,
                            KB=max(16, 1 << (k - 1).bit_length()),
                            RARE_BLOCK=min(RARE_TILE, block), num_warps=4,
                            enable_fp_fusion=False), out


def candidate_columns(a, top_x: torch.Tensor, top_i: torch.Tensor, start: int, n: int,
                      k: int, block: int = None):
    """float64 [B, SHARED_COLS + 3k + 4]: a vocabulary shard's summary for a scalar
    top-k (_candidates_kernel; arguments as in :func:`candidate_kernel_args`)."""
    grid, args, kwargs, out = candidate_kernel_args(a, top_x, top_i, start, n, k, block)
    if a.batch:
        _candidates_kernel[grid](*args, **kwargs)
    return out


def combine_candidates_args(a, parts: torch.Tensor, k: int):
    """The launch of _combine_candidates_kernel (grid B) on the gathered candidate
    summaries (float64 [W, B, SHARED_COLS + 3k + 4]): (args, constexprs and options);
    its outputs are args[11] and args[12]."""
    W, B, cols = parts.shape
    dev = parts.device
    dummy = torch.empty(1, dtype=torch.int64, device=dev)
    temp_ptr, temp_val, temp_t = _scalar_or_tensor(a.temperature, torch.float32, dummy)
    topp_ptr, topp_val, topp_t = _scalar_or_tensor(
        a.top_p if a.top_p is not None else 1.0, torch.float64, dummy)
    minp_ptr, minp_val, minp_t = _scalar_or_tensor(
        a.min_p if a.min_p is not None else 0.0, torch.float32, dummy)
    tokens = torch.empty(B, dtype=torch.int64, device=dev)
    logprobs = torch.empty(B, dtype=torch.float32, device=dev)
    nb = max(16, 1 << (W * k - 1).bit_length())
    return ((parts.contiguous(), W, B, k, cols, temp_ptr, temp_val, topp_ptr, topp_val,
             minp_ptr, minp_val, tokens, logprobs),
            dict(TEMP_T=temp_t, TOPP_T=topp_t, MINP_T=minp_t,
                 HAS_TOP_P=a.top_p is not None, HAS_MIN_P=a.min_p is not None, NB=nb,
                 WB=max(2, 1 << (W - 1).bit_length()), num_warps=max(4, min(16, nb // 256)),
                 enable_fp_fusion=False))


def combine_candidates(a, parts: torch.Tensor, k: int):
    """(tokens int64 [B], logprobs float32 [B]) of a call with a scalar top-k of ``k``
    from every rank's candidate summary (float64 [W, B, SHARED_COLS + 3k + 4]), in one
    launch (_combine_candidates_kernel)."""
    args, kwargs = combine_candidates_args(a, parts, k)
    if parts.shape[1]:
        _combine_candidates_kernel[(parts.shape[1],)](*args, **kwargs)
    return args[11], args[12]
