"""The sampling contract in plain PyTorch: the definition the Triton kernel is held to.

Every rule of ``docs/design.md`` ("Semantics") is implemented here once, vectorised over
the batch, on any device.  The kernel computes the same float32 quantities with the same
operations, so kept sets compare exactly; masses are summed in float64 here and in exact
fixed point in the kernel, so they agree far inside the contract's 1e-6 top-p band.

The draw is the same Gumbel race the kernel runs, on the same Philox-4x32-10 streams keyed
on (seed, offset, token index): for the same seed and offset, the reference and the kernel
draw the same token (barring float64 near-ties in the race keys, about 1e-16 apart).
"""
from __future__ import annotations

import torch

from . import _args

__all__ = ["sample", "filtered_probs", "probs", "draw", "philox4x32", "noise_words",
           "gumbel_from_words", "gumbel_noise", "greedy_and_inv_t", "keep_mask",
           "strictly_above", "clean", "resolve_odd_rows", "scaled"]

_M32 = 0xFFFFFFFF
_T_FLOOR = 2.0 ** -126          # the smallest normal float32: subnormal T acts as it
_PHILOX_ROUND_A = 0xD2511F53
_PHILOX_ROUND_B = 0xCD9E8D57
_PHILOX_KEY_A = 0x9E3779B9
_PHILOX_KEY_B = 0xBB67AE85


def _mulhilo32(a: int, b: torch.Tensor):
    """(hi, lo) 32-bit halves of a * b for a constant a < 2^32 and int64 b in [0, 2^32),
    without overflowing int64: b is split into 16-bit halves."""
    b_lo = b & 0xFFFF
    b_hi = b >> 16
    p_lo = a * b_lo                      # < 2^48
    t = a * b_hi + (p_lo >> 16)          # < 2^49
    hi = t >> 16
    lo = ((t & 0xFFFF) << 16) | (p_lo & 0xFFFF)
    return hi, lo


def philox4x32(seed: torch.Tensor, c0, c1, c2, c3, n_rounds: int = 10):
    """Philox-4x32 exactly as ``triton.language.philox`` computes it.

    ``seed`` is int64 (its two 32-bit halves are the key); counters are int64 tensors
    holding values in [0, 2^32).  Returns four int64 tensors in [0, 2^32).
    """
    k0 = seed & _M32
    k1 = (seed >> 32) & _M32
    for _ in range(n_rounds):
        hi_b, lo_b = _mulhilo32(_PHILOX_ROUND_B, c2)
        hi_a, lo_a = _mulhilo32(_PHILOX_ROUND_A, c0)
        c0, c1, c2, c3 = hi_b ^ c1 ^ k0, lo_b, hi_a ^ c3 ^ k1, lo_a
        k0 = (k0 + _PHILOX_KEY_A) & _M32
        k1 = (k1 + _PHILOX_KEY_B) & _M32
    return c0, c1, c2, c3


def _log1p_neg(v: torch.Tensor) -> torch.Tensor:
    """log(1 - v) for float32 v in (0, 0.5), accurate for tiny v (Kahan's log1p trick)."""
    w = 1.0 - v
    return torch.where(w == 1.0, -v, torch.log(w) * (-v) / (w - 1.0))


def noise_words(seed: torch.Tensor, offset: torch.Tensor, vocab: int, stream: int,
                start: int = 0):
    """The Philox word of every token of every row, from one of two streams.

    Token ``i`` takes word ``i % 4`` of the Philox-4x32-10 call with counter
    ``(i // 4, stream, offset_lo, offset_hi)`` under key ``seed``: one call serves four
    neighbouring tokens.  Stream 0 gives a token's main word, stream 1 its extension word.
    Returns int64 [B, vocab] in [0, 2^32): tokens ``start`` to ``start + vocab - 1`` (a
    shard of a vocabulary split over ranks starts past 0).
    """
    dev = seed.device
    first, calls = start // 4, (start + vocab + 3) // 4 - start // 4
    q = torch.arange(first, first + calls, device=dev, dtype=torch.int64)[None, :]
    offset = offset.to(torch.int64)[:, None]
    zeros = torch.zeros_like(q)
    words = philox4x32(seed.to(torch.int64)[:, None], q + zeros, zeros + stream,
                       (offset & _M32) + zeros, ((offset >> 32) & _M32) + zeros)
    skip = start - 4 * first
    return torch.stack(words, dim=2).reshape(seed.shape[0], 4 * calls)[:, skip:skip + vocab]


def gumbel_from_words(w: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
    """Standard Gumbel noise, float32, from a token's main word ``w`` and extension word
    ``e`` (int64 in [0, 2^32)).

    The uniform has 53 bits, ``n = w * 2^21 + (e >> 11)``: ``U = 1 - (n + 1/2) / 2^53``,
    never 0 or 1.  Its top 32 bits are the main word alone, so ``w`` bounds the noise
    (the kernel's race needs only ``w`` for most tokens).  E = -log U is computed from
    whichever of U or 1 - U is small, so both tails keep float32 relative precision (E from
    2^-54 to 37.4); G = -log E lies in [-3.62, 37.4]: no 2^-24 floor, no infinity.
    """
    n = (w << 21) | (e >> 11)                                      # 53 random bits
    half = 1 << 52
    v = ((n.double() + 0.5) * 2.0 ** -53).float()                  # 1 - U, used when small
    u = (((1 << 53) - n).double() - 0.5).mul(2.0 ** -53).float()   # U, used when small
    e = torch.where(n < half, -_log1p_neg(torch.where(n < half, v, 0.25)),
                    -torch.log(torch.where(n < half, 0.5, u)))
    return -torch.log(e)


def gumbel_noise(seed: torch.Tensor, offset: torch.Tensor, vocab: int,
                 start: int = 0) -> torch.Tensor:
    """Standard Gumbel noise G[b, i] for token start + i of row b under (seed, offset),
    float32: :func:`gumbel_from_words` of the token's two words (:func:`noise_words`)."""
    return gumbel_from_words(noise_words(seed, offset, vocab, 0, start),
                             noise_words(seed, offset, vocab, 1, start))


def clean(logits: torch.Tensor) -> torch.Tensor:
    """float32 logits with NaN as -inf and -0.0 as +0.0."""
    x = logits.float()
    x = torch.where(torch.isnan(x), float("-inf"), x)
    return torch.where(x == 0, 0.0, x)


def resolve_odd_rows(x: torch.Tensor, m: torch.Tensor):
    """(x, m) with the contract's odd rows resolved, from :func:`clean` logits and each
    row's max ``m`` [B, 1] (over the whole row, wherever its columns live): a row holding
    +inf keeps only its +inf tokens, as equals (logit 0, every other token -inf); a row
    with no logit above -inf treats all its tokens as equals (logit 0).  m comes back
    finite."""
    pos, neg = m == float("inf"), m == float("-inf")
    x = torch.where(pos, torch.where(x == float("inf"), 0.0, float("-inf")), x)
    x = torch.where(neg, 0.0, x)
    return x, torch.where(pos | neg, 0.0, m)


def _sanitize(logits: torch.Tensor):
    """(x, m): float32 logits with the contract's special values resolved (:func:`clean`,
    :func:`resolve_odd_rows`) and the row max, finite."""
    x = clean(logits)
    return resolve_odd_rows(x, x.amax(dim=1, keepdim=True))


def scaled(x, m, inv_t):
    """d = (x - m) * (1/T) in float32, -inf for -inf logits: log P up to the normaliser."""
    d = (x - m) * inv_t[:, None]
    return torch.where(x == float("-inf"), float("-inf"), d)


def strictly_above(x: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """[B, V] float64: for each token, the sum of ``q`` over the tokens of its row with a
    strictly larger logit ``x`` (tied tokens get the same sum: their group's)."""
    xs, idx = torch.sort(x, dim=1, descending=True, stable=True)
    qs = q.gather(1, idx)
    before = torch.cumsum(qs, dim=1) - qs                          # mass before, sorted
    pos = torch.arange(x.shape[1], device=x.device).expand_as(xs)
    starts = torch.ones_like(xs, dtype=torch.bool)
    starts[:, 1:] = xs[:, 1:] != xs[:, :-1]
    first = torch.cummax(torch.where(starts, pos, 0), dim=1).values
    return torch.empty_like(q).scatter_(1, idx, before.gather(1, first))


def greedy_and_inv_t(temperature, batch: int, device):
    """([B] bool: greedy rows (T <= 0 or NaN), [B] float32 1/T, 1 for greedy rows).  A
    subnormal T acts as the smallest normal float32, 2^-126: its reciprocal would
    overflow float32 (or nearly), and (x - max) * inf is NaN at the max; at 2^-126 the
    row's maxima race as at any tiny T (docs/design.md, "Semantics")."""
    t = _args.rows(temperature, batch, torch.float32, device)
    greedy = ~(t > 0)
    # 1.0 / t is torch.reciprocal, correctly rounded; no host scalar copied to the device
    return greedy, torch.where(greedy, 1.0,
                               1.0 / torch.where(greedy, 1.0, t.clamp_min(_T_FLOOR)))


def keep_mask(logits, temperature=1.0, top_k=None, top_p=None, min_p=None, order="top_k_first"):
    """Boolean [B, V]: the kept set of every row (for a greedy row, its argmax alone), and
    the float32 log-weights d = (x - max) / T the kept tokens are drawn with."""
    B, V = logits.shape
    dev = logits.device
    # Out-of-range tensor values (validate=False only): T <= 0 or NaN is greedy, a NaN
    # top_p / min_p is off, top_p <= 0 keeps the most probable tokens, min_p > 1 acts as 1.
    greedy, inv_t = greedy_and_inv_t(temperature, B, dev)
    x, m = _sanitize(logits)
    d = scaled(x, m, inv_t)
    e = torch.exp(d).double()                                      # P up to the normaliser
    keep = torch.ones(B, V, dtype=torch.bool, device=dev)

    xs = torch.sort(x, dim=1, descending=True).values
    k = _args.rows(0 if top_k is None else top_k, B, torch.int64, dev)
    k_on = (k > 0) & (k < V)
    if bool(k_on.any()):
        kth = xs.gather(1, (k.clamp(1, V) - 1)[:, None])
        keep &= ~k_on[:, None] | (x >= kth)
    p = _args.rows(1.0 if top_p is None else top_p, B, torch.float64, dev)
    p_on = p < 1.0
    p = p.clamp_min(1e-30)
    if bool(p_on.any()):
        q = torch.where(keep if order == "top_k_first" else torch.ones_like(keep), e, 0.0)
        passes_p = strictly_above(x, q) < p[:, None] * q.sum(dim=1, keepdim=True)
        theta = torch.where(passes_p, x, float("inf")).amin(dim=1, keepdim=True)
        keep &= ~p_on[:, None] | (x >= theta)
    mp = _args.rows(0.0 if min_p is None else min_p, B, torch.float32, dev)
    mp_on = mp > 0
    mp = mp.clamp_max(1.0)
    if bool(mp_on.any()):
        keep &= ~mp_on[:, None] | (d >= torch.log(torch.where(mp_on, mp, 1.0))[:, None])

    raw = torch.where(torch.isnan(logits.float()), float("-inf"), logits.float())
    argmax = torch.argmax(raw, dim=1)                              # first of equal maxima
    one_hot = torch.zeros_like(keep).scatter_(1, argmax[:, None], True)
    keep = torch.where(greedy[:, None], one_hot, keep)
    return keep, d, greedy, x, m, inv_t


def probs(a: _args.Call) -> torch.Tensor:
    """Filtered, renormalised float32 [B, V] probabilities of a checked call."""
    keep, d, greedy, *_ = keep_mask(a.logits, a.temperature, a.top_k, a.top_p, a.min_p,
                                    a.order)
    w = torch.where(keep, torch.exp(d).double(), 0.0)
    w = torch.where(greedy[:, None], keep.double(), w)
    return (w / w.sum(dim=1, keepdim=True)).float()


def draw(a: _args.Call):
    """(tokens int64 [B], logprobs float32 [B]) of a checked call.

    Draws the argmax over the kept set of the float64 race key (x - max) * (1/T) + G, with
    G from :func:`gumbel_noise`: the kernel's race, so the tokens agree with it.  The key
    is exact enough (float64) that tied maxima stay tied however small T is, so the noise
    alone splits them.
    """
    keep, d, greedy, x, m, inv_t = keep_mask(a.logits, a.temperature, a.top_k, a.top_p,
                                             a.min_p, a.order)
    V = a.logits.shape[1]
    g = gumbel_noise(a.seeds, a.offsets, V).double()
    key = (x.double() - m.double()) * inv_t.double()[:, None] + g
    race = torch.where(keep & (x > float("-inf")), key, float("-inf"))
    tokens = torch.argmax(race, dim=1)
    w = torch.where(keep, torch.exp(d).double(), 0.0)
    logp = d.gather(1, tokens[:, None])[:, 0].double() - torch.log(w.sum(dim=1))
    tokens = torch.where(greedy, torch.argmax(keep.int(), dim=1), tokens)
    logp = torch.where(greedy, 0.0, logp).float()
    return tokens, logp


def filtered_probs(logits, *, temperature=1.0, top_k=None, top_p=None, min_p=None,
                   order="top_k_first", backend="reference"):
    """:func:`fused_sampler.filtered_probs` in plain PyTorch (``backend`` is checked, then
    ignored)."""
    a = _args.check(logits, temperature, top_k, top_p, min_p, order, backend=backend,
                    validate=True)
    return a.unsqueeze(probs(a)) if a.batch else a.empty_probs()


def sample(logits, *, temperature=1.0, top_k=None, top_p=None, min_p=None,
           order="top_k_first", seed=None, offset=0, generator=None, return_logprobs=False,
           validate=True, backend="reference"):
    """:func:`fused_sampler.sample` in plain PyTorch (``backend`` is checked, then ignored)."""
    a = _args.check(logits, temperature, top_k, top_p, min_p, order, seed=seed,
                    offset=offset, generator=generator, backend=backend, validate=validate)
    if a.batch == 0:
        return a.empty_tokens(return_logprobs)
    return a.finish(*draw(a), return_logprobs)
