"""The public calls: check the arguments once, then hand the call to one backend.

Under ``torch.compile`` the call goes through a custom operator (``fused_sampler::sample``,
``fused_sampler::filtered_probs``) with a fake implementation, so that a compiled decode
step keeps the sampler in its graph (``fullgraph=True``) instead of tracing the kernel
launch.  The operator takes every parameter as a [B] tensor and runs the value checks
itself, at run time, so ``validate=True`` needs no graph break either.
"""
import os
from typing import Optional, Tuple

import torch

from . import _args, reference


def interpreter_enabled() -> bool:
    """True when Triton's interpreter runs kernels on CPU tensors (TRITON_INTERPRET=1)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def resolve_backend(backend: str, device: torch.device) -> str:
    """'triton' or 'reference' for a call on ``device`` (see the contract's dispatch rule)."""
    triton_ok = device.type == "cuda" or (device.type == "cpu" and interpreter_enabled())
    if backend == "auto":
        return "triton" if triton_ok else "reference"
    if backend == "triton" and not triton_ok:
        raise ValueError(f"backend: 'triton' cannot run on {device.type} tensors; it needs a "
                         "CUDA device, or TRITON_INTERPRET=1 (set before the first call) "
                         "for CPU tensors")
    return backend


def _triton():
    from .kernels import sampler  # imported late: TRITON_INTERPRET is read at import time
    return sampler


def _draw(a: _args.Call, return_logprobs: bool = True):
    """(tokens, logprobs) of a checked call from the backend it resolves to (the kernel
    skips the log-probs' normaliser when they are not asked for: logprobs None)."""
    if resolve_backend(a.backend, a.logits.device) == "reference":
        return reference.draw(a)
    return _triton().sample(a, return_logprobs)


def _probs(a: _args.Call):
    """filtered_probs [B, V] of a checked call from the backend it resolves to."""
    if resolve_backend(a.backend, a.logits.device) == "reference":
        return reference.probs(a)
    return _triton().filtered_probs(a)


# ---- the operators torch.compile sees: parameters as [B] tensors (Call.as_rows)

@torch.library.custom_op("fused_sampler::sample", mutates_args=())
def _sample_op(logits: torch.Tensor, temperature: torch.Tensor, top_k: Optional[torch.Tensor],
               top_p: Optional[torch.Tensor], min_p: Optional[torch.Tensor],
               seed: torch.Tensor, offset: torch.Tensor, order: str, backend: str,
               validate: bool) -> Tuple[torch.Tensor, torch.Tensor]:
    if validate:
        _args.check_values(logits, temperature, top_k, top_p, min_p)
    return _draw(_args.Call(logits, False, temperature, top_k, top_p, min_p, order, backend,
                            seed, offset))


@_sample_op.register_fake
def _sample_fake(logits, *_):
    B = logits.shape[0]
    return logits.new_empty(B, dtype=torch.int64), logits.new_empty(B, dtype=torch.float32)


@torch.library.custom_op("fused_sampler::filtered_probs", mutates_args=())
def _filtered_probs_op(logits: torch.Tensor, temperature: torch.Tensor,
                       top_k: Optional[torch.Tensor], top_p: Optional[torch.Tensor],
                       min_p: Optional[torch.Tensor], order: str,
                       backend: str) -> torch.Tensor:
    _args.check_values(logits, temperature, top_k, top_p, min_p)
    return _probs(_args.Call(logits, False, temperature, top_k, top_p, min_p, order, backend))


@_filtered_probs_op.register_fake
def _filtered_probs_fake(logits, *_):
    return logits.new_empty(logits.shape, dtype=torch.float32)


def sample(logits, *, temperature=1.0, top_k=None, top_p=None, min_p=None,
           order="top_k_first", seed=None, offset=0, generator=None, return_logprobs=False,
           validate=True, backend="auto"):
    """Draw one token per row from the filtered, temperature-scaled softmax of ``logits``.

    Parameters
    ----------
    logits : torch.Tensor
        ``[B, V]`` or ``[V]``; float32, float16 or bfloat16; CUDA or CPU.  Rows may be
        strided; a last dimension with stride != 1 is copied once.  Never written.
    temperature : float or torch.Tensor
        Scalar or ``[B]`` floating tensor, ``>= 0``; 0 makes a row greedy (argmax, lowest
        index among equal maxima).
    top_k : None, int or torch.Tensor
        Scalar or ``[B]`` integer tensor; off when None, ``<= 0`` or ``>= V``.  Tokens tied
        with the k-th largest logit are all kept.
    top_p : None, float or torch.Tensor
        Scalar or ``[B]`` tensor in ``(0, 1]``; off when None or 1.  Smallest set of most
        probable tokens whose mass reaches ``top_p``, ties at the boundary all kept.
    min_p : None, float or torch.Tensor
        Scalar or ``[B]`` tensor in ``[0, 1]``; keeps ``P[i] >= min_p * max(P)``.
    order : {"top_k_first", "joint"}
        Whether top-p measures mass within the top-k set (Hugging Face, vLLM) or over the
        whole distribution (Gemma, FlashInfer).
    seed : None, int or torch.Tensor
        int64 Philox key; an int is shared by every row (identical rows with the same seed
        and offset draw the same token), a ``[B]`` int64 tensor gives one per request.
        None draws one seed per row from ``generator`` (or the default generator of the
        logits' device), advancing it.
    offset : int or torch.Tensor
        Scalar or ``[B]`` int64 counter (e.g. the decode step): a new offset is a new draw.
    generator : torch.Generator, optional
        Used only when ``seed`` is None.  One on the logits' device avoids a host sync.
        Under ``torch.compile`` pass ``seed`` instead: a Generator cannot enter a graph
        (with neither, the compiled step draws seeds from the default generator).
    return_logprobs : bool
        Also return ``logprobs`` ``[B]`` float32: the natural log of the probability the
        drawn token had in the filtered, renormalised distribution (0.0 for greedy rows).
    validate : bool
        Check values inside tensors (parameters; NaN/+inf logits; rows with no finite
        logit) at the cost of a device sync (under ``torch.compile``, inside the
        ``fused_sampler::sample`` operator at run time); skipped while a CUDA graph is
        being captured, where a sync is an error.  With False nothing syncs, and odd rows still
        get a token in ``[0, V)`` (see docs/design.md, "Odd input").
    backend : {"auto", "triton", "reference"}
        "auto" runs the Triton kernel on CUDA, and on CPU under ``TRITON_INTERPRET=1``;
        otherwise the PyTorch reference.

    Returns
    -------
    tokens : torch.Tensor
        int64 ``[B]`` (a 0-d tensor for 1-D logits); with ``return_logprobs`` the pair
        ``(tokens, logprobs)``.

    Examples
    --------
    >>> import torch, fused_sampler as fs
    >>> logits = torch.tensor([[4.51, 0.89, -1.90, 6.75, 1.63, -1.62, -1.89, 6.28, 1.79]])
    >>> fs.sample(logits, temperature=0.0).tolist()
    [3]
    >>> fs.sample(logits, top_k=1, seed=0).tolist()
    [3]
    """
    compiling = torch.compiler.is_compiling()
    a = _args.check(logits, temperature, top_k, top_p, min_p, order, seed=seed,
                    offset=offset, generator=generator, backend=backend,
                    validate=validate and not compiling)
    if a.batch == 0:
        return a.empty_tokens(return_logprobs)
    if compiling:
        tokens, logprobs = _sample_op(a.logits, *a.as_rows(), a.order, a.backend, validate)
    else:
        tokens, logprobs = _draw(a, return_logprobs)
    return a.finish(tokens, logprobs, return_logprobs)


def filtered_probs(logits, *, temperature=1.0, top_k=None, top_p=None, min_p=None,
                   order="top_k_first", backend="auto"):
    """The float32 ``[B, V]`` distribution :func:`sample` draws from.

    Zero outside the kept set, renormalised inside it, one-hot for a greedy row.  Computed
    by the same kernel as :func:`sample` (a compile-time mode of it), so testing it tests
    the threshold search.  Arguments as in :func:`sample`; always validates.

    Examples
    --------
    >>> import torch, fused_sampler as fs
    >>> p = fs.filtered_probs(torch.tensor([2.0, 1.0, 1.0, 0.0]), top_k=2)
    >>> [round(v, 4) for v in p.tolist()]
    [0.5761, 0.2119, 0.2119, 0.0]
    """
    compiling = torch.compiler.is_compiling()
    a = _args.check(logits, temperature, top_k, top_p, min_p, order, backend=backend,
                    validate=not compiling)
    if a.batch == 0:
        return a.empty_probs()
    if compiling:
        probs = _filtered_probs_op(a.logits, *a.as_rows()[:4], a.order, a.backend)
    else:
        probs = _probs(a)
    return a.unsqueeze(probs)
