"""``python -m bench``: time every implementation over the grid and write one JSON file.

On a GPU each call is timed with ``triton.testing.do_bench`` (median, warm-up, L2 flushed
before every call) on inputs rotated among preallocated copies; setup (inputs, seeds,
compilation, the first call) is never timed.  The same run measures the device-to-device
copy bandwidth, which gives the one-read floor ``B * V * itemsize / bandwidth``.

``python -m bench --dry-run`` runs a tiny grid on the CPU through the same code, timed with
``time.perf_counter`` medians, fused_sampler on ``backend="reference"`` (or Triton's
interpreter under ``TRITON_INTERPRET=1``), writes a temporary JSON file (never
``bench/results/``) and runs :mod:`bench.plot` on it into a temporary directory.

The results file has exactly this schema::

    {"device": str, "commit": str, "torch": str, "triton": str,
     "copy_bandwidth_GBps": float,
     "rows": [{"B": int, "V": int, "dtype": "float32" | "bfloat16", "case": str,
               "impl": str, "median_us": float}, ...]}

``impl`` is a name of ``bench.workloads.IMPLS``, timed eagerly with events, or a timing
variant ``<impl>@graph`` (its CUDA-graph replays) or ``<impl>@host`` (the host time of one
eager call: not a GPU time); see ``bench.workloads.TIMINGS``.

Why an implementation did not run is printed and written next to the results, to
``<out>.notes.txt`` (the schema has no room for it); :mod:`bench.plot` copies those notes
into ``bench/README.md``.
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from . import workloads as wl

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
RESULTS_DIR = BENCH_DIR / "results"
ROW_KEYS = ("B", "V", "dtype", "case", "impl", "median_us")
TOP_KEYS = ("device", "commit", "torch", "triton", "copy_bandwidth_GBps", "rows")
DRY_COMPILE_POINTS = (("float32", "plain", 4),)
"""Dynamo tracing of the reference takes several seconds per graph on a CPU (one per
dtype and case, and B = 1 is a graph of its own), so the dry run exercises
torch_compile_reference at these (dtype, case, B) only: one trace."""


# --------------------------------------------------------------------------------------
# Timers
# --------------------------------------------------------------------------------------

def gpu_median_us(fn, warmup_ms: float = 25, rep_ms: float = 100) -> float:
    """Median microseconds of ``fn()`` by ``triton.testing.do_bench`` (which warms up,
    flushes the L2 cache before each call and times with CUDA events)."""
    from triton.testing import do_bench
    return float(do_bench(fn, warmup=warmup_ms, rep=rep_ms, return_mode="median")) * 1e3


def cpu_median_us(fn, reps: int = 5, warmup: int = 1) -> float:
    """Median microseconds of ``fn()`` over ``reps`` calls, by ``time.perf_counter``."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e6


def host_median_us(fn, calls: int = 40, busy_ms: float = 50.0) -> float:
    """Median host microseconds of one ``fn()`` call: on a GPU, issued while the stream is
    held busy (``torch.cuda._sleep``, ``busy_ms`` at most), so no call waits for the
    device and the time is the call's own Python, allocations and launches; on a CPU,
    the calls themselves."""
    if not torch.cuda.is_available():
        return cpu_median_us(fn, reps=calls // 8 or 1, warmup=0)
    fn()
    torch.cuda.synchronize()
    rate_khz = getattr(torch.cuda.get_device_properties(0), "clock_rate", 0) or 2_000_000
    torch.cuda._sleep(int(busy_ms * rate_khz))
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    still_busy = not torch.cuda.current_stream().query()
    torch.cuda.synchronize()
    if not still_busy:
        raise RuntimeError(f"the GPU finished its {busy_ms} ms wait before the host issued "
                           f"{calls} calls: host times may include waits")
    return statistics.median(times) * 1e6


def graph_median_us(fn, timer) -> float:
    """``timer`` of the replays of ``fn()`` captured once in a CUDA graph."""
    if not torch.cuda.is_available():
        raise wl.Unavailable("CUDA graphs need a GPU")
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):          # warm-up off the capture stream, as torch asks
        fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return timer(graph.replay)


def copy_bandwidth_GBps(device, timer, nbytes: int) -> float:
    """Device-to-device copy bandwidth in GB/s, counting the bytes read plus written."""
    n = nbytes // 4
    src = torch.ones(n, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    us = timer(lambda: dst.copy_(src))
    return 2 * n * 4 / (us * 1e3)


# --------------------------------------------------------------------------------------
# Run metadata and results I/O
# --------------------------------------------------------------------------------------

def slugify(name: str) -> str:
    """``"NVIDIA H100 80GB HBM3"`` -> ``"nvidia-h100-80gb-hbm3"``."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "unknown"


def device_name(device: torch.device) -> str:
    """The GPU's name, or ``"cpu (dry run)"``."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return "cpu (dry run)"


def git_commit() -> str:
    """``$FS_BENCH_COMMIT``, else ``git rev-parse HEAD`` (``-dirty`` when the tree has
    changes), else ``"unknown"`` (a GPU machine gets the tree without ``.git``)."""
    if os.environ.get("FS_BENCH_COMMIT"):
        return os.environ["FS_BENCH_COMMIT"]
    try:
        def git(*args):
            return subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True,
                                  text=True, check=True, timeout=10).stdout.strip()
        head = git("rev-parse", "HEAD")
        return head + ("-dirty" if git("status", "--porcelain", "--untracked-files=no")
                       else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def check_schema(results: dict) -> dict:
    """Raise ``ValueError`` unless ``results`` has exactly the results-file schema."""
    if not isinstance(results, dict) or tuple(sorted(results)) != tuple(sorted(TOP_KEYS)):
        raise ValueError(f"results: top-level keys must be exactly {TOP_KEYS}")
    for key in ("device", "commit", "torch", "triton"):
        if not isinstance(results[key], str):
            raise ValueError(f"results: {key!r} must be a string")
    if not isinstance(results["copy_bandwidth_GBps"], float):
        raise ValueError("results: 'copy_bandwidth_GBps' must be a float")
    for row in results["rows"]:
        if tuple(sorted(row)) != tuple(sorted(ROW_KEYS)):
            raise ValueError(f"results: row keys must be exactly {ROW_KEYS}, got {row}")
        ok = (isinstance(row["B"], int) and isinstance(row["V"], int)
              and row["dtype"] in wl.DTYPES and isinstance(row["case"], str)
              and isinstance(row["impl"], str) and isinstance(row["median_us"], float))
        if not ok:
            raise ValueError(f"results: bad row {row}")
    return results


def notes_path(out: Path) -> Path:
    """Where the notes of the results file ``out`` go: ``<stem>.notes.txt``."""
    return out.with_suffix(".notes.txt")


def write_results(out: Path, results: dict, notes: list) -> None:
    """Write the results (atomically, so a cut run leaves a valid file) and the notes."""
    check_schema(results)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(results, indent=1) + "\n")
    tmp.replace(out)
    notes_path(out).write_text("".join(f"{n}\n" for n in notes))


def merge(paths: list, out: Path) -> dict:
    """Merge results files of one device (e.g. one run per dtype) into ``out``: rows are
    concatenated (a later file's row replaces an earlier one at the same point), the
    copy bandwidth is their mean, the notes are concatenated."""
    parts = [check_schema(json.loads(Path(p).read_text())) for p in paths]
    for key in ("device", "commit", "torch", "triton"):
        if len({part[key] for part in parts}) != 1:
            raise ValueError(f"merge: the files disagree on {key!r}")
    rows = {}
    for part in parts:
        for row in part["rows"]:
            rows[tuple(row[k] for k in ROW_KEYS[:5])] = row
    merged = {k: parts[0][k] for k in ("device", "commit", "torch", "triton")}
    merged["copy_bandwidth_GBps"] = float(statistics.mean(
        p["copy_bandwidth_GBps"] for p in parts))
    merged["rows"] = list(rows.values())
    notes = []
    for p in paths:
        np_ = notes_path(Path(p))
        if np_.exists():
            notes += [n for n in np_.read_text().splitlines() if n and n not in notes]
    write_results(out, merged, notes)
    return merged


# --------------------------------------------------------------------------------------
# Measuring
# --------------------------------------------------------------------------------------

class Run:
    """One benchmark run: where, what, how it is timed, and what it found."""

    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.dry = args.dry_run
        self.device = torch.device("cpu" if self.dry else "cuda")
        if self.dry:
            # measure_point has made the first (untimed) call already: no extra warm-up
            self.timer = lambda fn: cpu_median_us(fn, reps=args.reps, warmup=0)
        else:
            self.timer = lambda fn: gpu_median_us(fn, args.warmup_ms, args.rep_ms)
        # a CPU has no L2 flush to complement, and the dry run checks the path, not speed
        self.cache = 0 if self.dry else wl.cache_bytes(self.device)
        self.compile_backend = "eager" if self.dry else "inductor"
        self.strict = args.strict if args.strict is not None else self.dry
        self.notes = []
        self.failed = {}                   # impl -> reason: skip it from then on
        self.deadline = time.monotonic() + args.time_budget_s
        self.out = args.out
        self.results = {
            "device": device_name(self.device),
            "commit": git_commit(),
            "torch": torch.__version__,
            "triton": _triton_version(),
            "copy_bandwidth_GBps": 0.0,
            "rows": [],
        }

    def note(self, text: str) -> None:
        """Print and keep a note (why something did not run)."""
        if text not in self.notes:
            self.notes.append(text)
        print(f"NOTE: {text}", flush=True)

    def save(self) -> None:
        write_results(self.out, self.results, self.notes)

    def measure_bandwidth(self) -> None:
        nbytes = (16 << 20) if self.dry else (1 << 30)
        bw = copy_bandwidth_GBps(self.device, self.timer, nbytes)
        self.results["copy_bandwidth_GBps"] = float(bw)
        print(f"copy bandwidth: {bw:.1f} GB/s (read + write, {nbytes >> 20} MiB copy)",
              flush=True)

    def points(self, impl: str) -> list:
        """The grid points ``(dtype, V, B, case)`` ``impl`` is measured at, in order.

        torch_compile_reference goes case by case (each case and dtype is a compilation,
        B = 1 another), so a time budget that runs out leaves whole cases measured.
        """
        points = [(dtype, V, B, case) for dtype, V, B, case in self.args.grid.points()
                  if wl.applies(impl, case)]
        if impl == "torch_compile_reference":
            if self.dry:
                points = [p for p in points if (p[0], p[3], p[2]) in DRY_COMPILE_POINTS]
            points.sort(key=lambda p: (p[0], list(wl.CASES).index(p[3])))
        return points

    def measure_impl(self, impl: str) -> None:
        """Measure ``impl`` at every grid point, rotating preallocated inputs."""
        for dtype, V, B, case in self.points(impl):
            if impl in self.failed:
                return
            if time.monotonic() > self.deadline:
                self.note(f"{impl}: time budget ({self.args.time_budget_s:.0f} s) spent "
                          f"before dtype={dtype} V={V} B={B} case={case}; rest not measured")
                return
            us = self.measure_point(impl, case, dtype, V, B)
            if us is None:
                continue
            self.results["rows"].append({"B": B, "V": V, "dtype": dtype, "case": case,
                                         "impl": impl, "median_us": float(us)})
            self.save()                    # a run cut short still leaves a valid file
            floor = wl.floor_us(B, V, dtype, self.results["copy_bandwidth_GBps"])
            print(f"{impl:24s} {case:12s} {dtype:9s} B={B:5d} V={V:6d} "
                  f"{us:11.1f} us   (floor {floor:.2f} us)", flush=True)

    def measure_point(self, impl, case, dtype, V, B):
        """Median microseconds of one (impl, case, dtype, V, B), or None if it failed."""
        inputs, oom = None, False
        base, timing = wl.split_impl(impl)
        try:
            call = wl.build(base, case, B, self.device, self.compile_backend)
            inputs = wl.make_inputs(B, V, dtype, self.device, self.cache)
            call(inputs[0])                # first call: compiles; not timed
            self.sync()
            if timing == "graph":          # do_bench's L2 flush keeps the one input cold
                return graph_median_us(lambda: call(inputs[0]), self.timer)
            rotation = itertools.cycle(inputs)
            if timing == "host":
                return host_median_us(lambda: call(next(rotation)))
            return self.timer(lambda: call(next(rotation)))
        except wl.Unavailable as exc:
            self.failed[impl] = str(exc)
            self.note(f"{impl}: not run: {exc}")
        except torch.cuda.OutOfMemoryError as exc:
            self.note(f"{impl}: out of memory at dtype={dtype} V={V} B={B} case={case}: "
                      f"{str(exc).splitlines()[0]}")
            oom = True
        except Exception as exc:
            text = str(exc).strip()
            reason = f"{type(exc).__name__}: {text.splitlines()[0][:300]}" if text \
                else type(exc).__name__
            where = f"dtype={dtype} V={V} B={B} case={case}"
            if _context_lost(text):
                self.note(f"{impl}: {reason} at {where}; the CUDA context is lost, run stopped")
                self.save()
                raise
            if self.strict and impl not in wl.OPTIONAL_IMPLS:
                raise
            if impl in wl.OPTIONAL_IMPLS:  # a baseline that fails once fails everywhere
                self.failed[impl] = reason
                self.note(f"{impl}: failed at {where} (skipped from here on): {reason}")
            else:
                self.note(f"{impl}: failed at {where}: {reason}")
        finally:
            del inputs
            if oom:
                torch.cuda.empty_cache()
        return None

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


def _context_lost(message: str) -> bool:
    """Whether an error message says the CUDA context is unusable from now on."""
    return any(m in message for m in ("illegal memory access", "device-side assert",
                                      "unspecified launch failure", "CUDA error: an illegal"))


def _triton_version() -> str:
    try:
        import triton
        return triton.__version__
    except ImportError:
        return "not installed"


# --------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------

def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    p.add_argument("--dry-run", action="store_true",
                   help="tiny grid on the CPU (perf_counter medians); writes a temp file")
    p.add_argument("--quick", action="store_true", help="reduced GPU grid (B 1/64/1024, V 128256)")
    p.add_argument("--out", type=Path, default=None,
                   help="results JSON (default: bench/results/<gpu>.json; dry run: a temp file)")
    p.add_argument("--impls", default=",".join(wl.IMPLS),
                   help="comma-separated implementations (default: all)")
    p.add_argument("--dtypes", default=None, help="comma-separated subset of float32,bfloat16")
    p.add_argument("--cases", default=None, help=f"comma-separated subset of {','.join(wl.CASES)}")
    p.add_argument("--batch", default=None, help="comma-separated batch sizes (default: the grid's)")
    p.add_argument("--vocab", default=None, help="comma-separated vocabularies (default: the grid's)")
    p.add_argument("--time-budget-s", type=float, default=1e9,
                   help="stop measuring after this many seconds, keeping what was measured")
    p.add_argument("--warmup-ms", type=float, default=25, help="do_bench warm-up (GPU)")
    p.add_argument("--rep-ms", type=float, default=100, help="do_bench repetition time (GPU)")
    p.add_argument("--reps", type=int, default=3, help="timed calls per point (dry run)")
    strict = p.add_mutually_exclusive_group()
    strict.add_argument("--strict", dest="strict", action="store_true", default=None,
                        help="raise when fused_sampler or torch_reference fails (dry-run default)")
    strict.add_argument("--no-strict", dest="strict", action="store_false",
                        help="record failures and go on (GPU default)")
    p.add_argument("--no-plot", action="store_true", help="dry run: skip the plot check")
    p.add_argument("--merge", nargs="+", type=Path, default=None, metavar="JSON",
                   help="merge these results files of one device into --out and exit")
    args = p.parse_args(argv)

    grid = wl.GRIDS["dry" if args.dry_run else "quick" if args.quick else "full"]
    dtypes = tuple(args.dtypes.split(",")) if args.dtypes else grid.dtypes
    cases = tuple(args.cases.split(",")) if args.cases else grid.cases
    impls = tuple(args.impls.split(","))
    for name, given, known in (("--dtypes", dtypes, wl.DTYPES), ("--cases", cases, wl.CASES),
                               ("--impls", impls, wl.KNOWN_IMPLS)):
        unknown = [g for g in given if g not in known]
        if unknown:
            p.error(f"{name}: unknown {unknown}; choose from {list(known)}")
    ints = lambda text, default: tuple(int(v) for v in text.split(",")) if text else default  # noqa: E731
    args.grid = wl.Grid(ints(args.batch, grid.batch_sizes), ints(args.vocab, grid.vocab_sizes),
                        dtypes, cases)
    args.impls = [i for i in wl.KNOWN_IMPLS if i in impls]
    return args


def dry_run_plot(out: Path) -> None:
    """Run bench.plot on the dry-run results, into a temp dir with a temp README copy."""
    from . import plot
    tmp = Path(tempfile.mkdtemp(prefix="fs-bench-plot-"))
    readme = tmp / "README.md"
    shutil.copy(BENCH_DIR / "README.md", readme)
    plot.main([str(out), "--out-dir", str(tmp), "--readme", str(readme)])


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.merge:
        if args.out is None:
            raise SystemExit("--merge needs --out")
        merged = merge(args.merge, args.out)
        print(f"merged {len(args.merge)} files, {len(merged['rows'])} rows -> {args.out}")
        return 0
    if not args.dry_run and not torch.cuda.is_available():
        print("bench: no CUDA device; nothing to time (python -m bench --dry-run checks the "
              "script on the CPU)")
        return 0
    if args.out is None:
        if args.dry_run:
            fd, name = tempfile.mkstemp(prefix="fs-bench-dry-", suffix=".json")
            os.close(fd)
            args.out = Path(name)
        else:
            args.out = RESULTS_DIR / f"{slugify(torch.cuda.get_device_name())}.json"
    args.out = args.out.resolve()
    if args.dry_run and RESULTS_DIR.resolve() in args.out.parents:
        raise SystemExit("bench: a dry run never writes into bench/results/; pass another --out")

    run = Run(args)
    start = time.monotonic()
    print(f"device: {run.results['device']}  torch {run.results['torch']}  triton "
          f"{run.results['triton']}  commit {run.results['commit']}", flush=True)
    run.measure_bandwidth()
    run.save()
    for impl in args.impls:
        run.measure_impl(impl)
    run.save()
    print(f"{len(run.results['rows'])} rows in {time.monotonic() - start:.1f} s -> {args.out}")
    for note in run.notes:
        print(f"NOTE: {note}")
    if args.dry_run and not args.no_plot:
        dry_run_plot(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
