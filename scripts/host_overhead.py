"""Host microseconds of the kernel path's Python: fs.sample's argument check and each
launcher (one program per row, split rows), best of 7 rounds.

On the CPU (default) Triton's kernels are replaced by no-ops: what is left is this
package's Python and its few tensor allocations.  With ``--device cuda`` the kernels
launch for real (compiled on the first calls, outside the timing) and ``--profile``
prints where the host time goes (cProfile, by own time): on a GPU an eager call's host
time is the Python, the allocator, Triton's launcher and the driver (bench.run's
``@host`` timing measures the same from outside).

    python scripts/host_overhead.py [--vocab 128256] [--calls 3000]
    python scripts/host_overhead.py --device cuda --profile
"""
import argparse
import cProfile
import pstats
import time

import torch

from fused_sampler import _args
from fused_sampler.kernels import sampler


class _NoLaunch:
    def __getitem__(self, grid):
        return lambda *args, **kwargs: None


def best_us(fn, calls, rounds=7):
    for _ in range(200):
        fn()
    out = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        out.append((time.perf_counter() - t0) / calls * 1e6)
    return min(out)                   # the least disturbed round (a shared machine)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--vocab", type=int, default=128256)
    p.add_argument("--calls", type=int, default=3000)
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--profile", action="store_true", help="cProfile each launcher's calls")
    args = p.parse_args(argv)
    if args.device == "cpu":
        sampler._sample_kernel = sampler._split_kernel = _NoLaunch()
    x = torch.randn(1, args.vocab, device=args.device)
    seeds = torch.arange(1, device=args.device)
    print(f"host microseconds a call, {args.device}, B = 1, V = {args.vocab}")
    print("| call | check | one program per row | split, 16 chunks |")
    print("| --- | --- | --- | --- |")
    profiles = []
    for name, (t, k, p_) in (("plain", (1.0, None, None)),
                             ("top-k + top-p", (0.7, 50, 0.9))):
        def check():
            return _args.check(x, t, k, p_, None, "top_k_first", seed=seeds, offset=0,
                               validate=False)
        a = check()
        row = [best_us(check, args.calls)]
        for chunks in (0, 16):
            def call():
                return sampler.launch(a, False, return_logprobs=False, chunks=chunks)
            row.append(best_us(call, args.calls))
            if args.profile:
                prof = cProfile.Profile()
                prof.enable()
                for _ in range(args.calls):
                    call()
                prof.disable()
                profiles.append((f"{name}, chunks={chunks}", prof))
        print(f"| {name} | " + " | ".join(f"{v:.1f}" for v in row) + " |", flush=True)
    if args.device == "cuda":
        torch.cuda.synchronize()
    for label, prof in profiles:
        print(f"\n== {label}: {args.calls} calls, by own time")
        pstats.Stats(prof).sort_stats("tottime").print_stats(12)


if __name__ == "__main__":
    main()
