"""What the benchmark times: the grid, the synthetic logits and the implementations.

Nothing here times anything; :mod:`bench.run` (``triton.testing.do_bench``) and
:mod:`bench.test_bench` (pytest-benchmark) both build their calls from this module, so the
two measure exactly the same work.

Every implementation is built by :func:`build` into a one-argument callable ``call(x)``
that takes the ``[B, V]`` logits and returns the ``[B]`` token ids.  Everything the call
does not need (seed tensors, compiled graphs, imports) is made by :func:`build`, outside
the timed region; everything the call does need (a temperature division or a softmax that
a baseline requires before its sampler) stays inside it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

import fused_sampler as fs
from fused_sampler._api import interpreter_enabled

SEED = 20240917
"""Fixed seed of the synthetic logits (copy ``i`` of an input uses ``SEED + i``)."""

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}

CASES = {
    "top_k_top_p": {"temperature": 0.7, "top_k": 50, "top_p": 0.9},
    "top_p": {"temperature": 1.0, "top_p": 0.95},
    "top_k": {"temperature": 1.0, "top_k": 50},
    "min_p": {"temperature": 1.0, "min_p": 0.05},
    "plain": {"temperature": 1.0},
}
"""Sampling parameters of each case, as keyword arguments of :func:`fused_sampler.sample`."""


@dataclass(frozen=True)
class Grid:
    """The shapes, dtypes and cases of one benchmark run."""
    batch_sizes: tuple
    vocab_sizes: tuple
    dtypes: tuple
    cases: tuple

    def points(self):
        """Yield ``(dtype, V, B, case)``, grouped by dtype, then V, then B."""
        for dtype in self.dtypes:
            for V in self.vocab_sizes:
                for B in self.batch_sizes:
                    for case in self.cases:
                        yield dtype, V, B, case


GRIDS = {
    "full": Grid((1, 8, 64, 256, 1024), (32000, 128256, 256000), ("float32", "bfloat16"),
                 tuple(CASES)),
    "quick": Grid((1, 64, 1024), (128256,), ("float32", "bfloat16"), tuple(CASES)),
    "dry": Grid((1, 4), (64, 1000), ("float32", "bfloat16"), tuple(CASES)),
}
"""``full``: the issue's grid; ``quick``: a reduced GPU grid; ``dry``: the CPU smoke grid."""

IMPLS = (
    "fused_sampler",
    "fused_sampler_per_row",
    "flashinfer_top_k_first",
    "flashinfer_joint",
    "flashinfer_probs",
    "flashinfer_logits",
    "torch_reference",
    "torch_compile_reference",
)
"""Implementation names, in the order a run measures them (cheapest and most wanted first)."""

TIMINGS = ("graph", "host")
"""How an ``impl@timing`` variant is timed instead of eagerly with events.  ``graph``: the
call captured once in a CUDA graph, its replays timed (what an engine that captures its
decode step sees: no host work, the launch gaps of one graph).  ``host``: the median
host time of one eager call while the GPU is held busy (what the call's Python and
launches cost on the CPU; on a GPU faster than that, eager timings measure the host)."""

VARIANT_IMPLS = (
    "fused_sampler_tp1",
    "fused_sampler@graph",
    "fused_sampler_per_row@graph",
    "fused_sampler@host",
    "fused_sampler_per_row@host",
    "flashinfer_logits@graph",
    "flashinfer_joint@graph",
)
"""Timing variants and fused_sampler_tp1 (fs.distributed.sample on a process group of
one rank: the tensor-parallel path's own cost, with no communication to speak of), run
only where named (the GPU session's small-batch and tensor-parallel phases)."""

CHUNK_SWEEP = (4, 8, 16, 32, 63, 126)
"""Chunks per row of the session's split-rows sweep (issue 11: which plan a batch wants)."""

SWEEP_IMPLS = tuple(f"fused_sampler_c{n}" for n in CHUNK_SWEEP)
"""``fused_sampler_c<n>``: the split kernel with its rows cut into n chunks whatever the
batch (at most one a tile), on the widest tile (4096, 2048 or 1024 tokens) that still has
n tiles a row for rows with no filter, the default tile for filtered rows (as split_plan
chooses); run only where named, under CUDA graphs (the GPU session's sweep phase)."""

FIRST_LAUNCH_IMPL = "fused_sampler_launch1"
"""A split filtered call's first launch alone (the memset, pass 1 on the chunks and the
last programs' search), as ``fused_sampler`` plans it: against the whole call, it places
the time of the later launches (the collect and the race) without hardware counters."""

KNOWN_IMPLS = IMPLS + VARIANT_IMPLS + SWEEP_IMPLS + (FIRST_LAUNCH_IMPL,) + tuple(
    f"{i}@graph" for i in SWEEP_IMPLS + (FIRST_LAUNCH_IMPL,))

OPTIONAL_IMPLS = frozenset(KNOWN_IMPLS) - {"fused_sampler", "torch_reference"}
"""Implementations whose failure is recorded rather than raised, even in a strict run."""


def split_impl(impl: str) -> tuple:
    """``(base implementation, timing)`` of an implementation name: timing is ``"events"``
    for a plain name, else one of :data:`TIMINGS` (``"fused_sampler@graph"``)."""
    base, _, timing = impl.partition("@")
    if timing and timing not in TIMINGS:
        raise ValueError(f"unknown timing {timing!r} in {impl!r}; choose from {TIMINGS}")
    return base, timing or "events"


class Unavailable(RuntimeError):
    """An implementation cannot run here (missing package, no CUDA, failed build)."""


# --------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------

def make_logits(batch: int, vocab: int, dtype: str = "float32", device="cpu",
                seed: int = SEED) -> torch.Tensor:
    """Synthetic LM-head logits, shaped like a real model's: a heavy head on a long tail.

    Every row is ``N(0, 3^2)`` noise over the whole vocabulary (the long tail: its softmax
    mass is spread over thousands of tokens) plus ``min(8, V)`` spikes at random
    positions whose logits are drawn uniformly from ``[12, 18]`` (the heavy head).  The
    head holds roughly 95% of the probability at ``V = 32000``, 80% at 128256 and 75% at
    256000 (varying from row to row), so top-p 0.9 / 0.95 must reach into the tail (tens
    to hundreds of tokens kept), top-k keeps its 50 and min-p 0.05 a handful of head
    tokens.  No logit is zero or infinite.

    Parameters
    ----------
    batch, vocab : int
        Shape ``[batch, vocab]``.
    dtype : {"float32", "bfloat16"}
        Generated in float32, then rounded.
    device : str or torch.device
        Generated directly on the device (no host-to-device copy).
    seed : int
        Seed of the device generator; the same seed gives the same tensor on the same
        kind of device.

    Returns
    -------
    torch.Tensor
        Contiguous ``[batch, vocab]`` logits of ``dtype``.
    """
    gen = torch.Generator(device=device)
    gen.manual_seed(seed)
    x = torch.randn(batch, vocab, generator=gen, device=device).mul_(3.0)
    n_spikes = min(8, vocab)
    where = torch.randint(0, vocab, (batch, n_spikes), generator=gen, device=device)
    height = torch.rand(batch, n_spikes, generator=gen, device=device).mul_(6.0).add_(12.0)
    x.scatter_(1, where, height)
    return x.to(DTYPES[dtype]).contiguous()


def n_copies(nbytes: int, cache_bytes: int, max_copies: int = 512,
             max_total_bytes: int = 4 << 30) -> int:
    """How many copies of an input to rotate so that no call finds its input in cache.

    Enough copies to span twice the last-level cache, at least 2, at most ``max_copies``
    and at most ``max_total_bytes`` in all (but never fewer than 2).
    """
    want = math.ceil(2 * cache_bytes / max(nbytes, 1))
    cap = max(2, max_total_bytes // max(nbytes, 1))
    return int(max(2, min(want, max_copies, cap)))


def make_inputs(batch: int, vocab: int, dtype: str, device, cache_bytes: int) -> list:
    """Preallocated, distinct copies of the logits (see :func:`n_copies`) to rotate."""
    nbytes = batch * vocab * torch.empty((), dtype=DTYPES[dtype]).element_size()
    return [make_logits(batch, vocab, dtype, device, seed=SEED + i)
            for i in range(n_copies(nbytes, cache_bytes))]


def cache_bytes(device) -> int:
    """Last-level cache size of ``device`` (the GPU's L2; 64 MiB assumed for a CPU)."""
    device = torch.device(device)
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        return int(getattr(props, "L2_cache_size", 0) or (50 << 20))
    return 64 << 20


def itemsize(dtype: str) -> int:
    """Bytes per logit of ``dtype``."""
    return torch.empty((), dtype=DTYPES[dtype]).element_size()


def floor_us(batch: int, vocab: int, dtype: str, bandwidth_GBps: float) -> float:
    """The one-read floor: microseconds to read the logits once at the copy bandwidth."""
    return batch * vocab * itemsize(dtype) / (bandwidth_GBps * 1e3)


# --------------------------------------------------------------------------------------
# Implementations
# --------------------------------------------------------------------------------------

def applies(impl: str, case: str) -> bool:
    """Whether ``impl`` has a call for ``case`` (FlashInfer's logits entry points are
    specific: the two top-k/top-p orders, and plain sampling from logits)."""
    impl = split_impl(impl)[0]
    if impl in ("flashinfer_joint", "flashinfer_top_k_first"):
        return case == "top_k_top_p"
    if impl == "flashinfer_logits":
        return case == "plain"
    return impl in KNOWN_IMPLS


def _seeds(batch: int, device) -> torch.Tensor:
    """One int64 seed per row, made once, outside the timed call."""
    return torch.arange(batch, dtype=torch.int64, device=device).add_(SEED)


def _fused_sampler(params: dict, batch: int, device) -> Callable:
    device = torch.device(device)
    backend = "auto" if device.type == "cuda" or interpreter_enabled() else "reference"
    seeds = _seeds(batch, device)

    def call(x):
        return fs.sample(x, **params, seed=seeds, validate=False, backend=backend)
    return call


def _kernel_check(params: dict, batch: int, device) -> tuple:
    """``(check, filtered)`` for the variants that launch the kernel's own pieces:
    ``check(x)`` is the checked call of ``params`` on logits ``x`` (per-row seeds made
    once, validate=False), ``filtered`` whether any filter is on."""
    device = torch.device(device)
    if device.type != "cuda" and not interpreter_enabled():
        raise Unavailable("the kernel needs CUDA or TRITON_INTERPRET=1")
    from fused_sampler import _args
    seeds = _seeds(batch, device)

    def check(x):
        return _args.check(x, params.get("temperature", 1.0), params.get("top_k"),
                           params.get("top_p"), params.get("min_p"), "top_k_first",
                           seed=seeds, offset=0, validate=False)
    return check, any(params.get(k) is not None for k in ("top_k", "top_p", "min_p"))


def _fused_sampler_chunks(params: dict, batch: int, device, chunks: int) -> Callable:
    """The kernel with ``chunks`` chunks a row whatever the batch: 0 is one program per
    row (``fused_sampler_per_row``: what ``fused_sampler`` does at small batches without
    split rows, docs/design.md "Small batches"), more the split kernel on the widest tile
    that has that many (:data:`SWEEP_IMPLS`)."""
    from fused_sampler.kernels import sampler
    check, filtered = _kernel_check(params, batch, device)

    def call(x):
        a = check(x)
        if not chunks:
            return sampler.sample(a, return_logprobs=False, chunks=0)[0]
        V = x.shape[1]
        block = sampler._sizes_for(V)[0]
        while not filtered and block > sampler.SPLIT_BLOCK_MIN and -(-V // block) < chunks:
            block //= 2
        return sampler.launch(a, probs_mode=False, return_logprobs=False,
                              chunks=min(chunks, -(-V // block)), block=block)[0]
    return call


def _fused_sampler_first_launch(params: dict, batch: int, device) -> Callable:
    """:data:`FIRST_LAUNCH_IMPL`: the first of a split call's launches (3 chunks a row
    where nothing splits: the CPU rehearsal)."""
    from fused_sampler.kernels import sampler
    check, filtered = _kernel_check(params, batch, device)

    def call(x):
        chunks, block = sampler.split_plan(*x.shape, x.device, filtered) or (3, None)
        grid, args, kwargs, (tokens, *_) = sampler.split_kernel_args(
            check(x), chunks, return_logprobs=False, block=block)
        sampler._split_kernel[grid](*args, **kwargs)
        return tokens
    return call


def _fused_sampler_tp1(params: dict, batch: int, device) -> Callable:
    """fs.distributed.sample with the whole row as the one shard of a one-rank group
    (NCCL on a GPU, gloo on a CPU; created here on first use): what the tensor-parallel
    path costs a rank besides its collectives (docs/design.md, "Tensor parallel")."""
    import tempfile

    import torch.distributed as dist
    device = torch.device(device)
    if not dist.is_initialized():
        store = tempfile.mkdtemp(prefix="fs-bench-tp1-")
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo",
                                init_method=f"file://{store}/init", rank=0, world_size=1)
    seeds = _seeds(batch, device)

    def call(x):
        return fs.distributed.sample(x, vocab_start=0, vocab_size=x.shape[1], **params,
                                     seed=seeds, validate=False)
    return call


def _torch_reference(params: dict, batch: int, device) -> Callable:
    seeds = _seeds(batch, device)

    def call(x):
        return fs.reference.sample(x, **params, seed=seeds, validate=False)
    return call


_COMPILED = {}


def _compiled_reference(case: str, backend: str) -> Callable:
    """One ``torch.compile``d reference call per (case, compile backend), shapes dynamic,
    so B and V do not recompile (dtypes do)."""
    key = (case, backend)
    if key not in _COMPILED:
        import torch._dynamo
        cfg = torch._dynamo.config
        for name in ("cache_size_limit", "recompile_limit"):
            if hasattr(cfg, name):
                setattr(cfg, name, max(getattr(cfg, name), 64))
        params = CASES[case]

        def reference_call(x, seeds):
            return fs.reference.sample(x, **params, seed=seeds, validate=False)
        _COMPILED[key] = torch.compile(reference_call, dynamic=True, backend=backend)
    return _COMPILED[key]


def _torch_compile_reference(case: str, batch: int, device, compile_backend: str) -> Callable:
    compiled = _compiled_reference(case, compile_backend)
    seeds = _seeds(batch, device)

    def call(x):
        return compiled(x, seeds)
    return call


_FLASHINFER = {}


def flashinfer_sampling():
    """``flashinfer.sampling``, imported on first use; :class:`Unavailable` with the
    reason (kept, so a failed import is tried once) when it cannot be imported."""
    if "module" not in _FLASHINFER:
        try:
            import flashinfer
            import flashinfer.sampling as sampling
            _FLASHINFER["module"] = sampling
            _FLASHINFER["version"] = getattr(flashinfer, "__version__", "unknown")
        except Exception as exc:  # ImportError, or a broken install failing at import
            _FLASHINFER["module"] = None
            _FLASHINFER["reason"] = f"import flashinfer failed: {type(exc).__name__}: {exc}"
    if _FLASHINFER["module"] is None:
        raise Unavailable(_FLASHINFER["reason"])
    return _FLASHINFER["module"]


def _scaled(temperature: float) -> Callable:
    """The temperature step a FlashInfer call needs before its sampler (FlashInfer's
    samplers take no temperature): one float32 division, or nothing at T = 1."""
    if temperature == 1.0:
        return lambda x: x
    return lambda x: x.float().div_(temperature)


def _flashinfer(impl: str, case: str, device) -> Callable:
    if torch.device(device).type != "cuda":
        flashinfer_sampling()              # record the import failure first, if any
        raise Unavailable("FlashInfer needs CUDA tensors")
    fi = flashinfer_sampling()
    p = CASES[case]
    scale = _scaled(p["temperature"])
    if impl in ("flashinfer_joint", "flashinfer_top_k_first"):
        order = "joint" if impl == "flashinfer_joint" else "top_k_first"
        return lambda x: fi.top_k_top_p_sampling_from_logits(
            scale(x), p["top_k"], p["top_p"], filter_apply_order=order)
    if impl == "flashinfer_logits":
        return lambda x: fi.sampling_from_logits(scale(x))

    def probs(x):
        return torch.softmax(scale(x), dim=-1, dtype=torch.float32)
    if case == "top_k_top_p":
        return lambda x: fi.top_k_top_p_sampling_from_probs(
            probs(x), p["top_k"], p["top_p"], filter_apply_order="top_k_first")
    if case == "top_p":
        return lambda x: fi.top_p_sampling_from_probs(probs(x), p["top_p"])
    if case == "top_k":
        return lambda x: fi.top_k_sampling_from_probs(probs(x), p["top_k"])
    if case == "min_p":
        return lambda x: fi.min_p_sampling_from_probs(probs(x), p["min_p"])
    return lambda x: fi.sampling_from_probs(probs(x))


def build(impl: str, case: str, batch: int, device, compile_backend: str = "inductor"
          ) -> Callable:
    """The timed call ``call(x) -> tokens`` of ``impl`` for ``case`` at batch ``batch``.

    Parameters
    ----------
    impl : str
        One of :data:`IMPLS`.
    case : str
        One of :data:`CASES`; ``applies(impl, case)`` must hold.
    batch : int
        Rows of the logits the call will get (per-row seed tensors are made here).
    device : str or torch.device
        Where the logits live.
    compile_backend : str
        ``torch.compile`` backend of ``torch_compile_reference`` ("inductor" on a GPU;
        the CPU dry run uses "eager", which traces with Dynamo but skips code generation).

    Returns
    -------
    Callable
        ``call(x)``; its first call may compile (JIT, Triton, Inductor): make it once
        before timing.

    Raises
    ------
    Unavailable
        The implementation cannot run here; the message says why.
    """
    if not applies(impl, case):
        raise ValueError(f"{impl} has no call for case {case!r}")
    params = CASES[case]
    if impl == "fused_sampler":
        return _fused_sampler(params, batch, device)
    if impl == "fused_sampler_per_row":
        return _fused_sampler_chunks(params, batch, device, 0)
    if impl == "fused_sampler_tp1":
        return _fused_sampler_tp1(params, batch, device)
    if impl == FIRST_LAUNCH_IMPL:
        return _fused_sampler_first_launch(params, batch, device)
    if impl in SWEEP_IMPLS:
        return _fused_sampler_chunks(params, batch, device, int(impl[len("fused_sampler_c"):]))
    if impl == "torch_reference":
        return _torch_reference(params, batch, device)
    if impl == "torch_compile_reference":
        return _torch_compile_reference(case, batch, device, compile_backend)
    return _flashinfer(impl, case, device)
