"""Compile the kernel for a GPU target on a machine without one (Triton's AOT path).

The interpreter runs the kernel's Python on CPU tensors and forgives what the compiler
does not (a global that is not a ``tl.constexpr``, a type that changes around a loop).
This script builds the launch of real calls with :func:`fused_sampler.kernels.sampler.
kernel_args`, then compiles each specialisation through Triton's frontend, LLVM and ptxas
to a cubin for ``--arch`` (Hopper, sm_90, by default).  No GPU and no CUDA driver needed.

The specialisation is the one a real launch gets: Triton's own binder reads the arguments
(16-byte alignment of pointers, divisibility of sizes by 16), so the code is the code a
GPU runs (128-bit loads where a launch would get them).

    python scripts/compile_check.py             # every filter / mode combination
    python scripts/compile_check.py --quick     # eleven: all filters drawing and writing
                                                # probs, plain, min-p alone; split rows
                                                # plain, top-p alone's launch 1, and all
                                                # filters' launches 1, 3
"""
import argparse
import contextlib
import io
import itertools
import os
import sys
import time

os.environ.pop("TRITON_INTERPRET", None)     # the real @triton.jit functions
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import torch  # noqa: E402
import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from fused_sampler import _args  # noqa: E402
from fused_sampler.kernels import sampler  # noqa: E402


def _specialise(fn, args, kwargs, target):
    """(signature, constexprs, attrs, options) exactly as a launch with these arguments
    would compile them, from Triton's own binder (no driver needed)."""
    from triton.compiler import make_backend
    from triton.runtime.jit import create_function_from_signature
    backend = make_backend(target)
    binder = create_function_from_signature(fn.signature, fn.params, backend)
    kwargs = dict(kwargs, debug=False)
    bound, specialization, options = binder(*args, **kwargs)
    options, signature, constexprs, attrs = fn._pack_args(backend, kwargs, bound,
                                                          specialization, options)
    return signature, constexprs, attrs, options.__dict__


def compile_call(a, probs_mode, arch, ptxas_log=False, **launch):
    """Compile the specialisation a launch of call ``a`` would use.

    Returns the compiled kernel, or (kernel, ptxas's -v report) with ``ptxas_log``: the
    registers, stack frame and spill bytes (a driverless compile has no other source of
    them)."""
    if launch.get("shard"):           # a vocabulary shard's chunk summaries
        start = launch["shard"] if launch["shard"] is not True else 130   # a head too
        B = a.logits.shape[0]             # kept: a filtered call's race, min-p's bound too
        kept = (torch.zeros(B, dtype=torch.int64), torch.zeros(B), torch.zeros(B)) \
            if launch.get("kept") else None
        _, args, kwargs, _ = sampler.shard_kernel_args(
            a, start, a.logits.shape[1], 8,
            return_logprobs=launch.get("return_logprobs", True), kept=kept)
        fn = sampler._shard_kernel
    elif launch.get("candidates"):    # a shard's summary for a scalar top-k
        k = a.top_k
        top = (torch.zeros(a.batch, k, dtype=a.logits.dtype),
               torch.zeros(a.batch, k, dtype=torch.int64))
        _, args, kwargs, _ = sampler.candidate_kernel_args(
            a, *top, launch["candidates"], a.logits.shape[1], k)
        fn = sampler._candidates_kernel
    elif launch.get("combine_candidates"):   # their combine: W ranks' summaries
        W, k = launch["combine_candidates"], a.top_k
        args, kwargs = sampler.combine_candidates_args(
            a, torch.zeros(W, a.batch, sampler.SHARED_COLS.value + 3 * k + 4,
                           dtype=torch.float64), k)
        fn = sampler._combine_candidates_kernel
    elif launch.get("combine"):       # their combine, after the all-gather
        args, kwargs = sampler.combine_shards_args(a, torch.zeros(17, a.batch, 14,
                                                                  dtype=torch.float64))
        fn = sampler._combine_shards_kernel
    elif launch.get("level"):         # a radix level of a shard (the other filtered calls)
        B = a.logits.shape[0]                 # (both histograms, after the first level's)
        hist = torch.zeros(2, B, 256, dtype=torch.int64)
        _, args, kwargs, _ = sampler.radix_level_args(
            a.logits, a.logits.shape[1], torch.zeros(B), torch.ones(B), 16, 8,
            torch.zeros(B, 4, dtype=torch.int64), has_k=True, has_p=True,
            kept_lo=torch.zeros(B, dtype=torch.int64), prev=hist,
            pk=torch.zeros(B, dtype=torch.float64), p=torch.ones(B, dtype=torch.float64),
            first=True)
        fn = sampler._radix_level_kernel
    elif launch.get("chunks"):        # rows split over programs (small batches)
        _, args, kwargs, _ = sampler.split_kernel_args(a, **launch)
        fn = sampler._split_kernel
    else:
        _, args, kwargs, _ = sampler.kernel_args(a, probs_mode, **launch)
        fn = sampler._sample_kernel
    target = GPUTarget("cuda", arch, 32)
    signature, constexprs, attrs, options = _specialise(fn, args, kwargs, target)
    src = ASTSource(fn, signature, constexprs, attrs)
    if not ptxas_log:
        return triton.compile(src, target=target, options=options)
    from triton import knobs
    out = io.StringIO()
    with knobs.nvidia.scope(), knobs.compilation.scope():
        knobs.nvidia.dump_ptxas_log = True       # printed only when ptxas runs ...
        knobs.compilation.always_compile = True  # ... so never take it from the cache
        with contextlib.redirect_stdout(out):
            kernel = triton.compile(src, target=target, options=options)
    return kernel, out.getvalue()


def calls(quick):
    """(name, call, probs_mode, launch overrides): every filter combination in both modes,
    per-row tensors and scalars, a bf16 row and small sizes."""
    B, V = 2, 1 << 16
    x = torch.zeros(B, V, dtype=torch.bfloat16)
    rows = lambda v, dt: torch.full((B,), v, dtype=dt)  # noqa: E731
    seeds = torch.arange(B)
    combos = [(k, p, m, order) for k, p, m in itertools.product([False, True], repeat=3)
              for order in (["top_k_first", "joint"] if k and p else ["top_k_first"])]
    # --quick: every filter drawing and writing probs, and the two paths with the least
    # code, drawing (plain; min-p alone, whose dead search code crashed Triton 3.6)
    quick_set = {(True, True, True, "top_k_first", False), (True, True, True, "joint", True),
                 (False, False, False, "top_k_first", False),
                 (False, False, True, "top_k_first", False)}
    for i, (k, p, m, order) in enumerate(combos):
        tensors = i % 2 == 1
        a = _args.check(x, rows(0.7, torch.float32) if tensors else 0.7,
                        (rows(50, torch.int64) if tensors else 50) if k else None,
                        (rows(0.9, torch.float64) if tensors else 0.9) if p else None,
                        (rows(0.05, torch.float32) if tensors else 0.05) if m else None,
                        order, seed=seeds if tensors else 3, offset=seeds if tensors else 0,
                        validate=False)
        for probs_mode in (False, True):
            if quick and (k, p, m, order, probs_mode) not in quick_set:
                continue
            name = (f"k={k:d} p={p:d} min_p={m:d} {order} "
                    f"{'probs' if probs_mode else 'sample'} {'tensors' if tensors else 'scalars'}")
            yield name, a, probs_mode, dict(stats=not probs_mode and tensors)
    # split rows (small batches): the plain draw on narrow tiles; every filter on full
    # ones, each launch (2: top-p alone's bin masses, possible with per-row top-k; 3: the
    # collect pass)
    a = _args.check(x, 0.7, None, None, None, "top_k_first", seed=3, validate=False)
    yield "split rows: plain sample scalars", a, False, dict(chunks=126, block=1024)
    # top-p alone: its PHASE 1 crashed Triton 3.6 while it deferred the search
    a = _args.check(x, 0.7, None, 0.9, None, "top_k_first", seed=3, validate=False)
    yield "split rows, launch 1: k=0 p=1 min_p=0 sample scalars", a, False, dict(chunks=32)
    a = _args.check(x, 0.7, rows(50, torch.int64), 0.9, 0.05, "top_k_first", seed=3,
                    validate=False)
    for phase in (1, 2, 3):
        if quick and phase == 2:
            continue
        yield f"split rows, launch {phase}: k=1 p=1 min_p=1 sample, top-k tensor", a, False, \
            dict(chunks=32, phase=phase)
    # fused_sampler.distributed: a shard's chunk summaries, plain and over the kept tokens
    a = _args.check(x, rows(0.7, torch.float32), None, None, None, "top_k_first",
                    seed=seeds, validate=False)
    yield "chunk summaries of a vocabulary shard: plain, temperature tensor", a, False, \
        dict(shard=True)
    yield "chunk summaries of a vocabulary shard: kept tokens, min-p", a, False, \
        dict(shard=True, kept=True)
    yield "combine of the shards' summaries: plain, temperature tensor", a, False, \
        dict(combine=True)
    yield "a radix level of a vocabulary shard: counts and masses", a, False, dict(level=True)
    # ... and a scalar top-k's candidates (with top-p and min-p tensors), and their combine
    a = _args.check(x, rows(0.7, torch.float32), 50, rows(0.9, torch.float64),
                    rows(0.05, torch.float32), "top_k_first", seed=seeds, validate=False)
    yield "candidates of a vocabulary shard: scalar top-k", a, False, dict(candidates=130)
    yield "combine of 4 shards' candidates: top-k, top-p and min-p tensors", a, False, \
        dict(combine_candidates=4)
    # ... where integers of 1 become constants (Triton specialises them): top-k 1, a
    # shard one token wide, one rank
    a = _args.check(torch.zeros(B, 1), 0.7, 1, 0.9, None, "top_k_first", seed=3,
                    validate=False)
    yield "candidates of a one-token shard: top-k 1", a, False, dict(candidates=7)
    yield "combine of 1 shard's candidates: top-k 1", a, False, dict(combine_candidates=1)
    if not quick:
        a = _args.check(torch.zeros(B, 100), 1.0, 5, 0.9, None, "top_k_first", seed=0,
                        validate=False)
        yield "small sizes (block 16, 3 bits, cap 8)", a, False, dict(block=16, bin_bits=3,
                                                                       cap=8)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", type=int, default=90, help="compute capability, e.g. 80, 90")
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args(argv)
    print(f"triton {triton.__version__}, target sm_{args.arch}")
    failed = 0
    for name, a, probs_mode, launch in calls(args.quick):
        start = time.perf_counter()
        try:
            k = compile_call(a, probs_mode, args.arch, **launch)
            print(f"  ok    {name}: {time.perf_counter() - start:.1f} s, cubin "
                  f"{len(k.asm['cubin'])} bytes, {k.metadata.shared} B shared", flush=True)
        except Exception as e:  # noqa: BLE001 (report every specialisation)
            failed += 1
            print(f"  FAIL  {name}: {type(e).__name__}: {str(e)[:2000]}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
