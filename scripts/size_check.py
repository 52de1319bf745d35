"""Run the sampler at engine sizes and record what it allocates (docs/reliability.md).

For each case of the benchmark grid: one ``fs.sample`` call on B x V synthetic logits,
the tokens of a few rows checked against the reference (rows are independent, so the
reference needs only those rows), every tensor the call allocated
(:func:`fused_sampler.testing.allocations`), the largest of them against B x V, and on a
GPU the peak of ``torch.cuda.max_memory_allocated`` above the inputs.  On CPU the kernel
runs in Triton's interpreter (~0.1 s a program: B = 4096 takes minutes per case).

    python scripts/size_check.py --batch 4096 --vocab 1000
    python scripts/size_check.py --batch 2 --vocab 1048583 --dtype bfloat16
"""
import argparse
import os
import sys
import time

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import fused_sampler as fs  # noqa: E402
from bench.workloads import CASES, make_logits  # noqa: E402
from fused_sampler import reference, testing  # noqa: E402


def _mib(n):
    return f"{n / 2 ** 20:.3f} MiB"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=4096)
    ap.add_argument("--vocab", type=int, default=1000)
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--cases", nargs="+", default=list(CASES))
    ap.add_argument("--check-rows", type=int, default=8)
    args = ap.parse_args(argv)
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    B, V = args.batch, args.vocab
    logits = make_logits(B, V, args.dtype, dev)
    seeds = torch.arange(B, device=dev)
    rows = torch.linspace(0, B - 1, min(B, args.check_rows), device=dev).long().unique()
    where = torch.cuda.get_device_name() if dev == "cuda" else "CPU, Triton interpreter"
    print(f"B={B} V={V} {args.dtype} on {where}; logits {_mib(logits.nbytes)}, "
          f"B x V float32 would be {_mib(B * V * 4)}")
    print("| case | seconds | reference rows equal | allocations | largest | total |"
          + (" CUDA peak above inputs |" if dev == "cuda" else ""))
    for case in args.cases:
        params = CASES[case]
        fs.sample(logits[:1], seed=seeds[:1], validate=False, **params)   # compile / warm
        if dev == "cuda":
            torch.cuda.synchronize()
            base = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        tokens, sizes = testing.allocations(
            lambda: fs.sample(logits, seed=seeds, validate=False, **params), logits, seeds)
        if dev == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        want = reference.sample(logits[rows], seed=seeds[rows], **params)
        same = bool(torch.equal(tokens[rows], want))
        in_range = bool(((tokens >= 0) & (tokens < V)).all())
        line = (f"| {case} | {seconds:.2f} | {len(rows)} rows: "
                f"{'yes' if same and in_range else 'NO'} | {len(sizes)} | "
                f"{_mib(max(n for _, n in sizes))} | {_mib(sum(n for _, n in sizes))} |")
        if dev == "cuda":
            line += f" {_mib(torch.cuda.max_memory_allocated() - base)} |"
        print(line, flush=True)


if __name__ == "__main__":
    main()
