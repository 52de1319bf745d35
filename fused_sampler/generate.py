"""Autoregressive generation for Hugging Face causal LMs, sampled with :func:`sample`.

``generate`` runs the usual KV-cached decode loop (``use_cache=True``, ``past_key_values``
fed back, ``position_ids`` from the attention mask) and draws every token with
:func:`fused_sampler.sample`.  Each row gets its own seed and the decode step ``t`` is
the sampler's offset, so the token row ``b`` draws at step ``t`` depends only on its
logits, its sampling parameters, ``seed[b]`` and ``t``: a request's continuation is the
same alone or in any batch (up to the model's own batch-dependent float rounding).

transformers is never imported here: ``model`` is anything called the way transformers
calls a causal LM (``model(input_ids=..., attention_mask=..., position_ids=...,
past_key_values=..., use_cache=True)`` returning an object with ``.logits`` and
``.past_key_values``), so this module imports without transformers installed.
"""
from __future__ import annotations

import inspect
import time
from dataclasses import dataclass, field

import torch

from ._api import resolve_backend, sample

__all__ = ["generate", "GenerateOutput", "StepTimer", "time_decode"]


@dataclass
class GenerateOutput:
    """What :func:`generate` returns.

    Attributes
    ----------
    sequences : torch.Tensor
        int64 ``[B, L]``.  With ``echo=False``, the new tokens only (``L = steps run``,
        at most ``max_new_tokens``); with ``echo=True``, the prompt in left-padded form
        (``[B, P]``, padding first) followed by the new tokens.  Positions after a row's
        EOS hold the pad id.
    lengths : torch.Tensor
        int64 ``[B]``: new tokens each row generated, its EOS token included.
    prompt_lengths : torch.Tensor
        int64 ``[B]``: real (unmasked) prompt tokens of each row.
    logprobs : torch.Tensor or None
        float32 ``[B, L_new]`` when ``return_logprobs``: the natural log of the probability
        each new token had in the filtered, renormalised distribution it was drawn from
        (exactly what ``sample(..., return_logprobs=True)`` returns; 0.0 for greedy rows
        and for the pad positions after EOS).
    seeds : torch.Tensor
        int64 ``[B]``: the per-row seeds used (drawn ones included), so a run can be
        repeated row by row.
    """
    sequences: torch.Tensor
    lengths: torch.Tensor
    prompt_lengths: torch.Tensor
    logprobs: torch.Tensor | None = None
    seeds: torch.Tensor | None = None


@dataclass
class StepTimer:
    """Time split of each decode step into model forward, sampling and the rest.

    Pass one as ``generate(..., timer=StepTimer())``.  On CUDA every mark synchronises
    the device (otherwise the times would be launch times), which slows the loop a little:
    time with a timer, measure throughput without one if that matters.

    Parameters
    ----------
    clock : callable
        Seconds now.  ``time.perf_counter`` (wall time) by default; on a CPU shared with
        other jobs, ``time.thread_time`` with ``torch.set_num_threads(1)`` counts only
        this thread's own work (meaningless on CUDA, where the work is on the device).

    Attributes
    ----------
    forward, sample, other : list of float
        Seconds per step ``t`` (index ``t``); step 0 is the prefill over the prompt.
    """
    clock: object = field(default=time.perf_counter, repr=False)
    forward: list = field(default_factory=list)
    sample: list = field(default_factory=list)
    other: list = field(default_factory=list)
    _device: torch.device | None = field(default=None, repr=False)
    _last: float = field(default=0.0, repr=False)

    def start(self, device: torch.device) -> None:
        self._device = device
        self._last = self._now()

    def _now(self) -> float:
        if self._device is not None and self._device.type == "cuda":
            torch.cuda.synchronize(self._device)
        return self.clock()

    def mark(self, bucket: str) -> None:
        """Add the time since the previous mark to ``bucket`` of the current step."""
        now = self._now()
        getattr(self, bucket).append(now - self._last)
        self._last = now

    def summary(self, batch: int) -> dict:
        """Decode-step statistics, the prefill (step 0) left out.

        Returns
        -------
        dict
            ``steps`` (decode steps timed), ``step_ms`` (mean wall time of one step),
            ``sample_ms``, ``forward_ms``, ``sample_share`` (sampling time / step time),
            ``tokens_per_s`` (``batch`` tokens per step / step time) and ``prefill_ms``.
        """
        n = len(self.sample) - 1
        if n < 1:
            raise ValueError("StepTimer: no decode step after the prefill was timed")
        fwd, smp, oth = (sum(x[1:]) for x in (self.forward, self.sample, self.other))
        total = fwd + smp + oth
        return {"steps": n, "step_ms": 1e3 * total / n, "forward_ms": 1e3 * fwd / n,
                "sample_ms": 1e3 * smp / n, "sample_share": smp / total,
                "tokens_per_s": batch * n / total,
                "prefill_ms": 1e3 * (self.forward[0] + self.sample[0] + self.other[0])}


def time_decode(model, input_ids, attention_mask=None, *, max_new_tokens=32, repeats=3,
                clock=time.perf_counter, **knobs) -> dict:
    """Throughput and the sampling share of a decode step, for ``docs/generate.md``.

    Runs :func:`generate` once untimed (warm-up: allocations, lazy inits), then
    ``repeats`` times with a :class:`StepTimer` and no EOS, and pools the decode steps.

    Parameters
    ----------
    model, input_ids, attention_mask, max_new_tokens
        As in :func:`generate`; ``max_new_tokens >= 2`` (step 0 is the prefill).
    repeats : int
        Timed runs.
    clock : callable
        The :class:`StepTimer` clock (wall time by default).
    **knobs
        Sampling arguments for :func:`generate` (``temperature``, ``top_p``, ``seed``...).

    Returns
    -------
    dict
        :meth:`StepTimer.summary` of the pooled steps, plus ``batch``, ``vocab`` and
        ``backend`` (which sampler ran).
    """
    knobs.pop("eos_token_id", None)       # every step must run for a fixed step count
    generate(model, input_ids, attention_mask, max_new_tokens=max_new_tokens, **knobs)
    pooled = StepTimer()
    for _ in range(repeats):
        timer = StepTimer(clock=clock)
        out = generate(model, input_ids, attention_mask, max_new_tokens=max_new_tokens,
                       timer=timer, **knobs)
        for name in ("forward", "sample", "other"):
            getattr(pooled, name).extend(getattr(timer, name)[1:])
    for name in ("forward", "sample", "other"):   # a zero-time "prefill" slot for summary()
        getattr(pooled, name).insert(0, 0.0)
    batch = out.sequences.shape[0]
    stats = pooled.summary(batch)
    stats.pop("prefill_ms")
    with torch.no_grad():
        vocab = model(input_ids=input_ids[:1, :1]).logits.shape[-1]
    return {**stats, "batch": batch, "vocab": vocab,
            "backend": resolve_backend(knobs.get("backend", "auto"), input_ids.device)}


def _left_align(input_ids, attention_mask):
    """Move each row's masked positions to the front, keeping the real tokens in order.

    Right padding (or padding anywhere) becomes left padding, the layout the KV-cached
    loop needs: every row's next token then goes in the same column.  A stable sort of
    the mask puts the 0s first without reordering the 1s.  Returns ``(ids, mask)``.
    """
    if bool((attention_mask[:, 1:] >= attention_mask[:, :-1]).all()):
        return input_ids, attention_mask                  # already left-padded (or none)
    order = torch.sort(attention_mask.to(torch.int8), dim=1, stable=True).indices
    return input_ids.gather(1, order), attention_mask.gather(1, order)


def _positions(mask: torch.Tensor) -> torch.Tensor:
    """Position ids counting real tokens only, as transformers' ``generate`` computes
    them (masked slots get 1, a value nothing attends to)."""
    pos = mask.cumsum(-1) - 1
    return pos.masked_fill(mask == 0, 1)


def _row_seeds(seed, batch: int, device) -> torch.Tensor:
    """``[B]`` int64 seeds: a tensor as given, an int broadcast to every row, None drawn
    from torch's default CPU generator (so ``torch.manual_seed`` repeats a run)."""
    if seed is None:
        return torch.randint(0, 2 ** 62, (batch,), dtype=torch.int64).to(device)
    if isinstance(seed, torch.Tensor):
        if seed.shape != (batch,) or seed.dtype != torch.int64:
            raise ValueError(f"seed: a tensor seed must be int64 of shape [{batch}], got "
                             f"{seed.dtype} {list(seed.shape)}")
        return seed.to(device)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed: expected None, an int or a [B] int64 tensor, got "
                        f"{type(seed).__name__}")
    return torch.full((batch,), seed, dtype=torch.int64, device=device)


def _eos_ids(eos_token_id, device) -> torch.Tensor | None:
    """EOS ids as a 1-D int64 tensor (transformers allows one id or a list), or None."""
    if eos_token_id is None:
        return None
    ids = torch.as_tensor(eos_token_id, dtype=torch.int64, device=device).reshape(-1)
    return ids if ids.numel() else None


def _logits_kwargs(model) -> dict:
    """Ask for last-position logits only where the model supports it (transformers >= 4.45
    ``logits_to_keep``, older ``num_logits_to_keep``): the prefill then skips a
    ``[B, P, V]`` head matmul."""
    try:
        params = inspect.signature(model.forward if hasattr(model, "forward") else model)
    except (TypeError, ValueError):
        return {}
    for name in ("logits_to_keep", "num_logits_to_keep"):
        if name in params.parameters:
            return {name: 1}
    return {}


def _check(input_ids, attention_mask, max_new_tokens):
    if not isinstance(input_ids, torch.Tensor):
        raise TypeError(f"input_ids: expected a torch.Tensor, got {type(input_ids).__name__}")
    if input_ids.dim() == 1:
        input_ids = input_ids[None]
    if input_ids.dim() != 2 or input_ids.dtype.is_floating_point:
        raise ValueError(f"input_ids: expected integer ids of shape [B, P], got "
                         f"{input_ids.dtype} {list(input_ids.shape)}")
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    elif attention_mask.dim() == 1:
        attention_mask = attention_mask[None]
    if attention_mask.shape != input_ids.shape:
        raise ValueError(f"attention_mask: shape {list(attention_mask.shape)} differs from "
                         f"input_ids {list(input_ids.shape)}")
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) \
            or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens: expected an int >= 0, got {max_new_tokens!r}")
    mask = attention_mask.to(device=input_ids.device, dtype=torch.int64)
    empty_row = input_ids.shape[1] == 0 or bool((mask.sum(1) == 0).any())
    if input_ids.shape[0] > 0 and empty_row:
        raise ValueError("input_ids: every row needs at least one unmasked prompt token")
    return input_ids.to(torch.int64), mask


@torch.no_grad()
def generate(model, input_ids, attention_mask=None, *, max_new_tokens, temperature=1.0,
             top_k=None, top_p=None, min_p=None, eos_token_id=None, pad_token_id=None,
             seed=None, echo=False, return_logprobs=False, order="top_k_first",
             backend="auto", timer: StepTimer | None = None) -> GenerateOutput:
    """Continue each prompt by up to ``max_new_tokens`` tokens drawn with :func:`sample`.

    The knobs keep the names and meanings of transformers' ``GenerationConfig``, with two
    differences: ``temperature=0`` (a scalar or per row) means greedy, as in
    :func:`sample` (transformers spells it ``do_sample=False``), and ``top_k=None`` is off
    (transformers' default is 50).  Filters apply in the order of :func:`sample`
    (temperature, then top-k, top-p measured inside the top-k set, min-p).

    Parameters
    ----------
    model : callable
        A causal LM called as transformers calls one: ``model(input_ids=...,
        attention_mask=..., position_ids=..., past_key_values=..., use_cache=True)``,
        returning ``.logits`` ``[B, T, V]`` and ``.past_key_values``.  Put it in eval
        mode first (dropout is not switched off here).
    input_ids : torch.Tensor
        int64 ``[B, P]`` prompt ids (``[P]`` is one prompt) on the model's device.
    attention_mask : torch.Tensor, optional
        ``[B, P]``, 1 for real tokens and 0 for padding.  Left padding is used as given;
        right padding (or any other layout) is converted to left padding first by moving
        each row's padding to its front (the cache then holds every row's next token in
        the same column).  None means no padding.
    max_new_tokens : int
        Most new tokens per row; the loop stops earlier once every row has hit EOS.
    temperature, top_p, min_p : float or torch.Tensor
        Python numbers or ``[B]`` float tensors on the model's device, passed straight
        to :func:`sample` every step.
    top_k : None, int or torch.Tensor
        None, an int or a ``[B]`` integer tensor; off when None, ``<= 0`` or ``>= V``.
    eos_token_id : None, int or list of int
        A row is finished after it emits any of these ids; it then emits ``pad_token_id``
        (log-prob 0.0) until the loop ends.
    pad_token_id : int, optional
        The filler after EOS; defaults to the first EOS id.  Also written into the padded
        prompt positions of an ``echo`` result.
    seed : None, int or torch.Tensor
        A ``[B]`` int64 tensor gives each row its own random stream; an int is used by
        every row (identical prompts then continue identically); None draws one seed per
        row from torch's default generator (so ``torch.manual_seed`` repeats a run).  The
        sampler's offset is the decode step ``t`` (0 for the first new token), so row
        ``b``'s draw at step ``t`` depends only on its logits, ``seed[b]`` and ``t``.
    echo : bool
        Return the (left-aligned) prompt before the new tokens.
    return_logprobs : bool
        Also return the log-probability of every new token (see :class:`GenerateOutput`).
    order : {"top_k_first", "joint"}
        Passed to :func:`sample`.
    backend : {"auto", "triton", "reference"}
        Passed to :func:`sample`: "auto" is the Triton kernel on CUDA (and on CPU under
        ``TRITON_INTERPRET=1``, where it is slow), the PyTorch reference otherwise.
    timer : StepTimer, optional
        Records the wall time of each step's forward pass and sampling call.

    Returns
    -------
    GenerateOutput
        ``sequences`` int64 ``[B, L]``, ``lengths`` int64 ``[B]``, ``prompt_lengths``
        int64 ``[B]``, ``logprobs`` float32 ``[B, L_new]`` or None, ``seeds`` int64 ``[B]``.

    Notes
    -----
    Sampling parameters and logits are validated (a device sync) on the first step only;
    later steps call :func:`sample` with ``validate=False`` so a CUDA decode loop does not
    sync per token for that.  With ``eos_token_id`` set, each step checks whether all
    rows have finished, one small sync, as transformers does.

    Examples
    --------
    >>> import torch, fused_sampler as fs
    >>> from transformers import GPT2Config, GPT2LMHeadModel       # doctest: +SKIP
    >>> model = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=2,
    ...                                    vocab_size=100)).eval()  # doctest: +SKIP
    >>> out = fs.generate(model, torch.tensor([[5, 6, 7]]), max_new_tokens=4,
    ...                   top_p=0.9, seed=1)                        # doctest: +SKIP
    >>> out.sequences.shape                                         # doctest: +SKIP
    torch.Size([1, 4])
    """
    ids, mask = _check(input_ids, attention_mask, max_new_tokens)
    ids, mask = _left_align(ids, mask)
    batch, dev = ids.shape[0], ids.device
    seeds = _row_seeds(seed, batch, dev)
    eos = _eos_ids(eos_token_id, dev)
    pad = pad_token_id if pad_token_id is not None else (
        int(eos[0]) if eos is not None else None)
    new = torch.full((batch, max_new_tokens), pad if pad is not None else 0,
                     dtype=torch.int64, device=dev)
    logprobs = torch.zeros((batch, max_new_tokens), dtype=torch.float32, device=dev)
    finished = torch.zeros(batch, dtype=torch.bool, device=dev)
    lengths = torch.zeros(batch, dtype=torch.int64, device=dev)
    extra = _logits_kwargs(model)

    if timer is not None:
        timer.start(dev)
    step_ids, positions, past, steps = ids, _positions(mask), None, 0
    for t in range(max_new_tokens if batch else 0):
        out = model(input_ids=step_ids, attention_mask=mask, position_ids=positions,
                    past_key_values=past, use_cache=True, **extra)
        logits, past = out.logits[:, -1, :], out.past_key_values
        if timer is not None:
            timer.mark("forward")
        tok, lp = sample(logits, temperature=temperature, top_k=top_k, top_p=top_p,
                         min_p=min_p, order=order, seed=seeds, offset=t,
                         return_logprobs=True, validate=t == 0, backend=backend)
        if timer is not None:
            timer.mark("sample")
        if eos is not None:
            # Finished rows keep running (the batch stays rectangular) but emit pad.
            tok = torch.where(finished, pad, tok)
            lp = torch.where(finished, 0.0, lp)
            lengths += ~finished
            finished |= torch.isin(tok, eos)
        else:
            lengths += 1
        new[:, t], logprobs[:, t] = tok, lp
        steps = t + 1
        done = eos is not None and bool(finished.all())
        if not done and steps < max_new_tokens:
            mask = torch.cat([mask, mask.new_ones(batch, 1)], dim=1)
            positions = positions[:, -1:] + 1
            step_ids = tok[:, None]
        if timer is not None:
            timer.mark("other")
        if done:
            break

    new, logprobs = new[:, :steps], logprobs[:, :steps]
    prompt_lengths = mask[:, : ids.shape[1]].sum(1)
    if echo:
        prompt = ids
        if pad is not None:
            prompt = ids.masked_fill(mask[:, : ids.shape[1]] == 0, pad)
        sequences = torch.cat([prompt, new], dim=1)
    else:
        sequences = new
    return GenerateOutput(sequences, lengths, prompt_lengths,
                          logprobs if return_logprobs else None, seeds)
