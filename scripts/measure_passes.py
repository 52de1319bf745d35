"""Count the full-row reads of the logits each sampling path makes.

The kernel counts its own passes over the row (``launch(..., stats=True)``); this runs it
on the benchmark's synthetic logits for every case of the benchmark grid and prints the
distribution per case.  On CPU it runs in Triton's interpreter (slow: keep rows few).

    TRITON_INTERPRET=1 python scripts/measure_passes.py --vocab 32000 128256 --rows 8
"""
import argparse
import collections
import os
import sys

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from bench.workloads import CASES, make_logits  # noqa: E402
from fused_sampler import _args  # noqa: E402
from fused_sampler.kernels import sampler  # noqa: E402


def passes(logits, params, probs_mode=False):
    a = _args.check(logits, params.get("temperature", 1.0), params.get("top_k"),
                    params.get("top_p"), params.get("min_p"), "top_k_first",
                    seed=torch.arange(logits.shape[0], device=logits.device), validate=False)
    _, _, _, reads, fallbacks = sampler.launch(a, probs_mode, stats=True)
    return reads.tolist(), int(fallbacks.sum())


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vocab", type=int, nargs="+", default=[32000])
    ap.add_argument("--rows", type=int, default=8)
    ap.add_argument("--dtype", default="float32")
    args = ap.parse_args(argv)
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    print(f"| V | case | full-row reads per row (count of rows) | exact fallbacks |\n"
          f"| --- | --- | --- | --- |")
    for V in args.vocab:
        logits = make_logits(args.rows, V, args.dtype, dev)
        for case, params in CASES.items():
            reads, fallbacks = passes(logits, params)
            hist = collections.Counter(reads)
            shown = ", ".join(f"{k} reads: {n}" for k, n in sorted(hist.items()))
            print(f"| {V} | {case} | {shown} | {fallbacks} |", flush=True)


if __name__ == "__main__":
    main()
