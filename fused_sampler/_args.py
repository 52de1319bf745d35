"""Argument checks shared by every backend: one place that says what a valid call is.

Checks that need no device sync (types, ranks, dtypes, shapes, devices, Python scalars)
always run.  Checks of the values inside tensors (parameter tensors, NaN or +inf logits)
sync, so they run only with ``validate=True``.
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import torch

ORDERS = ("top_k_first", "joint")
BACKENDS = ("auto", "triton", "reference")
LOGIT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_SEED_HIGH = 2 ** 62


def rows(v, batch: int, dtype, device) -> torch.Tensor:
    """A parameter given as a number or a [B] tensor, as a [B] tensor of ``dtype``."""
    if isinstance(v, torch.Tensor):
        return v.to(device=device, dtype=dtype)
    return torch.full((batch,), v, dtype=dtype, device=device)


def _is_number(v) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def _rows_named(mask: torch.Tensor, limit: int = 8) -> str:
    rows = torch.nonzero(mask).flatten().tolist()
    more = "" if len(rows) <= limit else f" (and {len(rows) - limit} more)"
    return f"{rows[:limit]}{more}"


def _param_tensor(name, t, batch, device, kind):
    """Shape, dtype and device of a per-row parameter tensor (no sync)."""
    if t.dim() != 1 or t.shape[0] != batch:
        raise ValueError(f"{name}: a per-row tensor must have shape [{batch}], got "
                         f"{list(t.shape)}")
    if t.device != device:
        raise ValueError(f"{name}: tensor is on {t.device}, logits are on {device}")
    if kind == "float" and not t.dtype.is_floating_point:
        raise ValueError(f"{name}: tensor dtype must be floating point, got {t.dtype}")
    if kind == "int" and (t.dtype.is_floating_point or t.dtype.is_complex
                          or t.dtype == torch.bool):
        raise ValueError(f"{name}: tensor dtype must be an integer type, got {t.dtype}")


def _int64_tensor(name, t, batch, device):
    """A [B] int64 tensor (seeds and offsets are Philox key and counter words)."""
    _param_tensor(name, t, batch, device, "int")
    if t.dtype != torch.int64:
        raise ValueError(f"{name}: tensor dtype must be int64, got {t.dtype}")


def _int_scalar(name, v, lo, hi, width):
    """A Python int in [lo, hi) given for a seed or an offset."""
    if not isinstance(v, numbers.Integral) or isinstance(v, bool):
        raise TypeError(f"{name}: expected an int or a [B] int64 tensor, got "
                        f"{type(v).__name__}")
    if not lo <= v < hi:
        raise ValueError(f"{name}: {v} does not fit in {width}")
    return int(v)


def _scalar_or_rows(name, v, batch, device, kind, allow_none=True):
    if v is None and allow_none:
        return None
    if isinstance(v, torch.Tensor):
        if v.dim() == 0:
            raise ValueError(f"{name}: pass a Python number or a [{batch}] tensor, "
                             "not a 0-d tensor")
        _param_tensor(name, v, batch, device, kind)
        return v
    if kind == "int":
        if not isinstance(v, numbers.Integral) or isinstance(v, bool):
            raise TypeError(f"{name}: expected None, an int or a [B] integer tensor, got "
                            f"{type(v).__name__}")
        return int(v)
    if not _is_number(v):
        raise TypeError(f"{name}: expected a number or a [B] tensor, got {type(v).__name__}")
    v = float(v)
    if math.isnan(v):
        raise ValueError(f"{name}: is NaN")
    return v


@dataclass
class Call:
    """A checked call: 2-D logits, parameters as Python numbers or [B] tensors."""
    logits: torch.Tensor
    squeeze: bool
    temperature: object
    top_k: object
    top_p: object
    min_p: object
    order: str
    backend: str
    seed: object = 0
    offset: object = 0

    @property
    def batch(self) -> int:
        return self.logits.shape[0]

    @property
    def seeds(self) -> torch.Tensor:
        return rows(self.seed, self.batch, torch.int64, self.logits.device)

    @property
    def offsets(self) -> torch.Tensor:
        return rows(self.offset, self.batch, torch.int64, self.logits.device)

    def empty_probs(self) -> torch.Tensor:
        return torch.empty(self.logits.shape, dtype=torch.float32, device=self.logits.device)

    def empty_tokens(self, return_logprobs: bool):
        tokens = torch.empty(0, dtype=torch.int64, device=self.logits.device)
        if return_logprobs:
            return tokens, torch.empty(0, dtype=torch.float32, device=self.logits.device)
        return tokens

    def as_rows(self):
        """(temperature, top_k, top_p, min_p, seeds, offsets) as [B] tensors, None for an
        unset filter, in the dtypes both backends compute with (top_p float64: exact)."""
        B, dev = self.batch, self.logits.device
        opt = lambda v, dtype: None if v is None else rows(v, B, dtype, dev)  # noqa: E731
        return (rows(self.temperature, B, torch.float32, dev), opt(self.top_k, torch.int64),
                opt(self.top_p, torch.float64), opt(self.min_p, torch.float32),
                self.seeds, self.offsets)

    def unsqueeze(self, probs: torch.Tensor) -> torch.Tensor:
        return probs[0] if self.squeeze else probs

    def finish(self, tokens, logprobs, return_logprobs: bool):
        if self.squeeze:
            tokens = tokens[0]
            logprobs = None if logprobs is None else logprobs[0]
        return (tokens, logprobs) if return_logprobs else tokens


def check(logits, temperature, top_k, top_p, min_p, order, *, seed=None, offset=0,
          generator=None, backend="auto", validate=True) -> Call:
    """Check every argument of a call; raise ValueError / TypeError naming the argument.

    Returns the call with ``logits`` as a 2-D view whose last dimension has stride 1
    (a copy only when the given last dimension is strided), and with ``seed`` resolved:
    drawn from ``generator`` (or the device's default generator) when ``seed`` is None.
    """
    if not isinstance(logits, torch.Tensor):
        raise TypeError(f"logits: expected a torch.Tensor, got {type(logits).__name__}")
    if logits.dim() not in (1, 2):
        raise ValueError(f"logits: expected shape [B, V] or [V], got {list(logits.shape)}")
    if logits.dtype not in LOGIT_DTYPES:
        raise ValueError(f"logits: dtype must be float32, float16 or bfloat16, got "
                         f"{logits.dtype}")
    squeeze = logits.dim() == 1
    x = logits[None] if squeeze else logits
    if x.shape[1] == 0:
        raise ValueError("logits: the vocabulary is empty (V == 0)")
    if x.shape[0] > 0 and x.stride(1) != 1:
        x = x.contiguous()
    if not isinstance(order, str) or order not in ORDERS:
        raise ValueError(f"order: expected one of {ORDERS}, got {order!r}")
    if not isinstance(backend, str) or backend not in BACKENDS:
        raise ValueError(f"backend: expected one of {BACKENDS}, got {backend!r}")
    B, dev = x.shape[0], x.device

    temperature = _scalar_or_rows("temperature", temperature, B, dev, "float",
                                  allow_none=False)
    top_k = _scalar_or_rows("top_k", top_k, B, dev, "int")
    top_p = _scalar_or_rows("top_p", top_p, B, dev, "float")
    min_p = _scalar_or_rows("min_p", min_p, B, dev, "float")
    if isinstance(temperature, float) and temperature < 0:
        raise ValueError(f"temperature: must be >= 0, got {temperature}")
    if isinstance(top_p, float) and not 0 < top_p <= 1:
        raise ValueError(f"top_p: must be in (0, 1], got {top_p}")
    if isinstance(min_p, float) and not 0 <= min_p <= 1:
        raise ValueError(f"min_p: must be in [0, 1], got {min_p}")

    if seed is not None:
        if isinstance(seed, torch.Tensor):
            _int64_tensor("seed", seed, B, dev)
        else:   # any 64-bit pattern: the Philox key's two words
            seed = _int_scalar("seed", seed, -2 ** 63, 2 ** 64, "64 bits")
            seed = seed - 2 ** 64 if seed >= 2 ** 63 else seed
    elif generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator: expected a torch.Generator, got "
                        f"{type(generator).__name__}")
    if isinstance(offset, torch.Tensor):
        _int64_tensor("offset", offset, B, dev)
    else:
        offset = _int_scalar("offset", offset, -2 ** 63, 2 ** 63, "int64")

    if validate and B > 0:
        check_values(x, temperature, top_k, top_p, min_p)
    if seed is None and B > 0:
        seed = _draw_seeds(B, dev, generator)
    return Call(x, squeeze, temperature, top_k, top_p, min_p, order, backend,
                0 if seed is None else seed, offset)


def _draw_seeds(batch: int, device, generator) -> torch.Tensor:
    """One seed per row from ``generator`` (advancing it), or from the default generator
    of the logits' device, so that ``torch.manual_seed`` makes a run repeatable.
    A generator on the logits' device keeps this free of host syncs."""
    gen_dev = generator.device if generator is not None else device
    seeds = torch.randint(0, _SEED_HIGH, (batch,), generator=generator, device=gen_dev,
                          dtype=torch.int64)
    return seeds.to(device)


def check_values(x, temperature, top_k, top_p, min_p):
    """The checks that read tensor contents (each one syncs).

    Skipped while a CUDA graph is being captured, where a sync is an error: the contract
    makes ``validate=True`` the default only outside capture."""
    if capturing(x):
        return
    check_param_values(temperature, top_k, top_p, min_p)
    raise_bad_rows("logits", torch.isnan(x).any(dim=1), "contain NaN")
    raise_bad_rows("logits", (x == float("inf")).any(dim=1), "contain +inf")
    raise_bad_rows("logits", (x == float("-inf")).all(dim=1), "have no finite logit")


def capturing(x) -> bool:
    """Whether a CUDA graph is being captured on ``x``'s stream: no check may sync then."""
    return x.is_cuda and torch.cuda.is_current_stream_capturing()


def raise_bad_rows(name, mask, what):
    """ValueError naming the rows where the [B] bool ``mask`` holds (a sync)."""
    if bool(mask.any()):
        raise ValueError(f"{name}: rows {_rows_named(mask)} {what}")


def check_param_values(temperature, top_k, top_p, min_p):
    """The checks of values inside parameter tensors (each one syncs)."""
    if isinstance(temperature, torch.Tensor):
        raise_bad_rows("temperature", torch.isnan(temperature), "are NaN")
        raise_bad_rows("temperature", temperature < 0, "are negative")
    if isinstance(top_p, torch.Tensor):
        raise_bad_rows("top_p", torch.isnan(top_p), "are NaN")
        raise_bad_rows("top_p", (top_p <= 0) | (top_p > 1), "are outside (0, 1]")
    if isinstance(min_p, torch.Tensor):
        raise_bad_rows("min_p", torch.isnan(min_p), "are NaN")
        raise_bad_rows("min_p", (min_p < 0) | (min_p > 1), "are outside [0, 1]")
