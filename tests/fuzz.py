"""The long fuzz campaign: the CI fuzz test's invariants, random and for as long as asked.

    python -m tests.fuzz --minutes 30                 # kernel in the interpreter on CPU
    python -m tests.fuzz --minutes 30 --device cuda   # the compiled kernel on a GPU
    python -m tests.fuzz --minutes 30 --sharded       # fs.distributed's shard kernel (CPU)

Runs rounds of hypothesis examples (fresh random seeds each round, no example database)
through :func:`tests.test_fuzz.check_call` (with ``--sharded``, through
:func:`tests.test_distributed.check_sharded_call`: the calls cut into 1-4 shards at random,
their chunks' summaries combined), over larger batches and vocabularies than CI.
A failing round prints hypothesis's falsifying example and its reproduction seed, and
the campaign goes on; the summary line (and ``--out`` JSON) says how many cases ran and
how many failed.  docs/reliability.md records the campaigns run so far.
"""
import argparse
import json
import os
import subprocess
import sys
import time


def _parse(argv):
    ap = argparse.ArgumentParser(prog="python -m tests.fuzz", description=__doc__.split("\n")[0])
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--seed", type=int, default=int(time.time()),
                    help="campaign seed; round r uses hypothesis seed (seed, r)")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--round", type=int, default=20, help="examples per hypothesis round")
    ap.add_argument("--max-batch", type=int, default=6)
    ap.add_argument("--shrink", action="store_true", help="shrink failures (slow on CPU)")
    ap.add_argument("--out", help="write the summary as JSON here")
    ap.add_argument("--sharded", action="store_true",
                    help="fs.distributed's shard kernel and combines (CPU only)")
    args = ap.parse_args(argv)
    if args.sharded and args.device != "cpu":
        ap.error("--sharded runs on the CPU (its shards are CPU tensors)")
    return args


def main(argv=None):
    args = _parse(argv)
    if args.device == "cpu":
        os.environ["TRITON_INTERPRET"] = "1"      # before triton is imported
    import torch
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import seed as hypothesis_seed

    from tests import test_fuzz
    shardings = {}
    if args.sharded:
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # its `import test_fuzz`
        from tests import test_distributed
        shardings = test_distributed.SHARDINGS

    vocabs = test_fuzz.VOCABS + [255, 256, 257, 1000, 4097, 8191]
    phases = [Phase.generate] + ([Phase.shrink] if args.shrink else [])
    commit = subprocess.run(["git", "describe", "--always", "--dirty"], capture_output=True,
                            text=True).stdout.strip()
    cases, failures, r = 0, [], 0
    start = time.monotonic()
    deadline = start + 60 * args.minutes

    def on_device(call):
        x, params, cfg = call
        if args.device == "cpu":
            return call
        moved = {k: v.to(args.device) if isinstance(v, torch.Tensor) else v
                 for k, v in params.items()}
        if x.stride(0) == 0:        # one row broadcast: keep the row stride 0
            xd = x[:1].to(args.device).expand(x.shape)
        else:                       # keep the drawn strides, which .to() would densify
            xd = torch.empty_strided(x.shape, x.stride(), dtype=x.dtype, device=args.device)
            xd.copy_(x)
        return xd, moved, cfg

    while time.monotonic() < deadline:
        @hypothesis_seed(args.seed * 1_000_003 + r)
        @settings(max_examples=args.round, deadline=None, database=None, phases=phases,
                  suppress_health_check=list(HealthCheck), print_blob=True)
        @given(call=test_fuzz.calls(vocabs=vocabs, max_batch=args.max_batch), **shardings)
        def one_round(call, **sharding):
            nonlocal cases
            cases += 1
            if args.sharded:
                test_distributed.check_sharded_call(call, **sharding)
            else:
                test_fuzz.check_call(on_device(call))

        try:
            one_round()
        except Exception as e:  # noqa: BLE001 (every failure is a finding to report)
            notes = "\n".join(getattr(e, "__notes__", []))
            failures.append(dict(round=r, error=f"{type(e).__name__}: {e}"[:2000],
                                 example=notes[:4000]))
            print(f"round {r}: FAILED {type(e).__name__}: {str(e)[:300]}\n{notes[:2000]}",
                  flush=True)
        r += 1
        print(f"{time.monotonic() - start:7.0f}s  rounds {r}  cases {cases}  "
              f"failed rounds {len(failures)}", flush=True)

    summary = dict(command="python -m tests.fuzz " + " ".join(argv or sys.argv[1:]),
                   commit=commit, device=args.device, seed=args.seed, minutes=args.minutes,
                   rounds=r, cases=cases, failed_rounds=len(failures), failures=failures,
                   torch=torch.__version__, triton=__import__("triton").__version__)
    print(f"fuzz campaign: {cases} cases in {r} rounds, {len(failures)} failed rounds "
          f"(seed {args.seed}, commit {commit}, {args.device})")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(summary, f, indent=1)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
