"""The Python sub-steps of one short GPU session (``bash bench/gpu_session.sh session``).

Each writes its result file as soon as it has one (atomically), so a run cut short still
returns what it had::

    python -m bench.session bandwidth  --out bandwidth.json
    python -m bench.session precompile --out compile-check.json [--jobs N]
    python -m bench.session precompile --out compile-check.json --serial --only NAME,NAME
    python -m bench.session flashinfer --status flashinfer.json
    python -m bench.session bench --out <gpu>.json --budget S [--flashinfer-status F]
    python -m bench.session summary --out-dir DIR

``precompile`` compiles, in parallel worker processes, every specialisation of the kernel
that the session's GPU tests and benchmark will launch (the real calls, on CUDA tensors),
timing each first call (compile + load) against the second, and checks each
specialisation's tokens against :func:`fused_sampler.reference.sample` on the same CUDA
tensors.  Triton caches what it compiles, so the tests and the benchmark then find their
kernels compiled.  ``--serial`` times a few specialisations again one at a time, in a
fresh cache, as a check on the parallel numbers.

``bench`` runs :mod:`bench.run`'s measuring code over the session grid in phases, most
valuable first: float32 at V 32000 / 128256 (fused_sampler, torch_reference for
B <= 256), FlashInfer there, then bfloat16, then V 256000.  FlashInfer phases wait for
``flashinfer`` (run in the background: FlashInfer builds its sampling module with nvcc
on first use) and are skipped, with the reason in the notes, when it failed.

With ``--dry-run`` (no CUDA) each step runs a small grid on the CPU through the same code
(the kernel in Triton's interpreter under ``TRITON_INTERPRET=1``).
"""
from __future__ import annotations

import argparse
import concurrent.futures
import importlib.util
import json
import multiprocessing
import os
import statistics
import sys
import time
from pathlib import Path
from xml.etree import ElementTree

import torch
import triton
import triton.language as tl

from . import workloads as wl

REPO_ROOT = Path(__file__).resolve().parent.parent

# The session grid.  B, V and dtypes in the order they are measured; V_FIRST before V_LATER.
GPU_GRID = dict(batch=(1, 8, 64, 256, 1024), v_first=(32000, 128256), v_later=(256000,),
                dtypes=("float32", "bfloat16"))
DRY_GRID = dict(batch=(1, 4), v_first=(64,), v_later=(1000,), dtypes=("float32", "bfloat16"))
REF_MAX_B = 256          # torch_reference only up to this batch (it is slow, and the floor)
FLASHINFER_IMPLS = ("flashinfer_top_k_first", "flashinfer_joint", "flashinfer_probs",
                    "flashinfer_logits")
CORE_IMPLS = ("fused_sampler", "torch_reference")
SMALL_IMPLS = ("fused_sampler@graph", "fused_sampler_per_row@graph", "fused_sampler@host",
               "fused_sampler_per_row@host")
FLASHINFER_GRAPH_IMPLS = ("flashinfer_logits@graph", "flashinfer_joint@graph")

# The test specialisations precompile warms (tests/test_gpu.py: test_cuda_graph_capture_*,
# test_validate_false_never_syncs, test_same_tokens_on_gpu_*).  CASES is read from the
# test file; this copy is used only where that fails.  A mismatch costs compile time in
# the tests, never a wrong result.
TEST_CASES_FALLBACK = [dict(), dict(temperature=0.0), dict(top_k=50), dict(top_p=0.95),
                       dict(min_p=0.05), dict(temperature=0.7, top_k=50, top_p=0.9),
                       dict(top_k=20, top_p=0.8, order="joint")]
SERIAL_DEFAULT = ("bench plain float32 B1", "bench top_k_top_p float32 B64")


def write_json(path: Path, data) -> None:
    """Write ``data`` to ``path`` atomically (a reader never sees half a file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    tmp.replace(path)


def cuda_ok() -> bool:
    return torch.cuda.is_available()


def sync() -> None:
    if cuda_ok():
        torch.cuda.synchronize()


# --------------------------------------------------------------------------------------
# bandwidth
# --------------------------------------------------------------------------------------

def cmd_bandwidth(args) -> int:
    """Device-to-device copy bandwidth (bytes read + written), several sizes."""
    from .run import copy_bandwidth_GBps, cpu_median_us, gpu_median_us
    dry = args.dry_run or not cuda_ok()
    device = torch.device("cpu" if dry else "cuda")
    timer = (lambda fn: cpu_median_us(fn, reps=3)) if dry else gpu_median_us
    sizes = (16 << 20, 64 << 20) if dry else (256 << 20, 1 << 30, 4 << 30)
    out = {"device": torch.cuda.get_device_name() if not dry else "cpu (dry run)",
           "timer": "perf_counter median" if dry else "triton.testing.do_bench median "
                    "(warmup 25 ms, rep 100 ms, L2 flushed)",
           "counting": "bytes read + bytes written", "copies": []}
    if not dry:
        p = torch.cuda.get_device_properties(0)
        out.update(sm_count=p.multi_processor_count,
                   l2_bytes=int(getattr(p, "L2_cache_size", 0)),
                   memory_bytes=int(p.total_memory))
    for nbytes in sizes:
        gbps = copy_bandwidth_GBps(device, timer, nbytes)
        out["copies"].append({"bytes": nbytes, "GBps": round(gbps, 1)})
        print(f"copy {nbytes >> 20:5d} MiB: {gbps:8.1f} GB/s (read + write)", flush=True)
        write_json(args.out, out)
        if not dry:
            torch.cuda.empty_cache()
    return 0


# --------------------------------------------------------------------------------------
# precompile: every specialisation the session launches, compiled in parallel and checked
# --------------------------------------------------------------------------------------

def _b_class(B: int) -> str:
    """Triton specialises an int argument equal to 1 and one divisible by 16."""
    return "1" if B == 1 else "d16" if B % 16 == 0 else "any"


def _v_class(V: int):
    from fused_sampler.kernels import sampler
    return tuple(sampler._sizes_for(V)) + (V % 16 == 0,)


def _split_class(B: int, V: int, case: str):
    """The tile width of the split-row kernel that a call at (B, V) runs on this GPU, or
    None for one program per row (docs/design.md, "Small batches")."""
    if not cuda_ok():
        return None
    from fused_sampler.kernels import sampler
    plan = sampler.split_plan(B, V, torch.device("cuda"), case != "plain")
    return None if plan is None else plan[1]


def _test_cases():
    """CASES of tests/test_gpu.py (loaded from the file), else the fallback copy."""
    try:
        spec = importlib.util.spec_from_file_location(
            "_fs_test_gpu", REPO_ROOT / "tests" / "test_gpu.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return [dict(c) for c in mod.CASES]
    except Exception as exc:  # noqa: BLE001 (pytest missing, file changed: use the copy)
        print(f"precompile: tests/test_gpu.py CASES not read ({type(exc).__name__}: {exc}); "
              "using the fallback copy", flush=True)
        return [dict(c) for c in TEST_CASES_FALLBACK]


def specs(dry: bool) -> list:
    """The specialisations to compile, most wanted first: one call per distinct
    specialisation of the benchmark's fused_sampler calls (float32 first), then the GPU
    tests' calls.  Each is a JSON-able dict a worker turns into a call."""
    grid = DRY_GRID if dry else GPU_GRID
    vocabs = grid["v_first"] + grid["v_later"]
    dtypes = ("float32",) if dry else grid["dtypes"]
    cases = ("plain", "top_k_top_p") if dry else tuple(wl.CASES)
    out, seen = [], set()
    for dtype in dtypes:
        for case in cases:
            for V in ((1000,) if dry else vocabs):
                for B in grid["batch"]:
                    key = (dtype, case, _b_class(B), _v_class(V), _split_class(B, V, case))
                    if key in seen:
                        continue
                    seen.add(key)
                    out.append(dict(name=f"bench {case} {dtype} B{B}" + (
                        f" V{V}" if V != vocabs[0] and not dry else ""), group="bench",
                        B=B, V=V, dtype=dtype, case=case))
        if dtype == "float32" and not dry:
            out += _test_specs()
    return out


def _test_specs() -> list:
    cases = _test_cases()
    out = [dict(name="test cuda_graph_capture", group="test", B=32, V=32000,
                dtype="float32", params=dict(top_k=50, top_p=0.9), temperature_rows=0.7,
                offset_rows=True, validate=False)]
    out.append(dict(name="test never_syncs warm-up top_p", group="test", B=4, V=5000,
                    dtype="float32", params=dict(top_p=0.9), validate=False))
    for i, c in enumerate(cases):
        out.append(dict(name=f"test never_syncs case{i}", group="test", B=4, V=5000,
                        dtype="float32", params=c, validate=False, return_logprobs=True))
    for i, c in enumerate(cases):
        out.append(dict(name=f"test same_tokens case{i}", group="test", B=16, V=5000,
                        dtype="float32", params=c, offset=11, seed_scale=7))
    return out


def _call_kwargs(spec: dict, device, seeds) -> dict:
    """Keyword arguments of fs.sample for ``spec`` (the benchmark's own call for a bench
    spec: see bench.workloads._fused_sampler)."""
    if spec["group"] == "bench":
        params = dict(wl.CASES[spec["case"]])
        return dict(params, seed=seeds, validate=False)
    kw = dict(spec["params"])
    B = spec["B"]
    if "temperature_rows" in spec:
        kw["temperature"] = torch.full((B,), spec["temperature_rows"], device=device)
    if spec.get("offset_rows"):
        kw["offset"] = torch.zeros(B, dtype=torch.int64, device=device)
    elif "offset" in spec:
        kw["offset"] = spec["offset"]
    kw["seed"] = seeds
    kw["validate"] = spec.get("validate", True)
    if spec.get("return_logprobs"):
        kw["return_logprobs"] = True
    return kw


_WORKER_READY = {}


@triton.jit
def _touch(p):
    tl.store(p, 1)


def _worker_init() -> None:
    """Per process, before any timed call: CUDA context, and one tiny Triton kernel (the
    driver's utilities and launcher machinery), so a spec's first call is its own cost."""
    t0 = time.perf_counter()
    device = "cuda" if cuda_ok() else "cpu"
    x = torch.zeros(1, dtype=torch.int32, device=device)
    if device == "cuda" or os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        _touch[(1,)](x)
    sync()
    _WORKER_READY["init_s"] = time.perf_counter() - t0


def _tokens(out):
    return out[0] if isinstance(out, tuple) else out


def run_spec(spec: dict) -> dict:
    """Compile (first call) and time one specialisation, then check its tokens against
    the reference on the same device (same call, several seed sets)."""
    import fused_sampler as fs
    from fused_sampler import reference
    if "init_s" not in _WORKER_READY:
        _worker_init()
    device = torch.device("cuda" if cuda_ok() else "cpu")
    B, V = spec["B"], spec["V"]
    res = dict(spec, pid=os.getpid(), worker_init_s=round(_WORKER_READY["init_s"], 2))
    try:
        if spec["group"] == "bench":
            x = wl.make_logits(B, V, spec["dtype"], device)
        else:
            g = torch.Generator(device=device).manual_seed(V)
            x = (torch.randn(B, V, device=device, generator=g) * 3).to(wl.DTYPES[spec["dtype"]])
        seeds = torch.arange(B, dtype=torch.int64, device=device) * spec.get("seed_scale", 1)
        if spec["group"] == "bench":
            seeds = seeds + wl.SEED
        kw = _call_kwargs(spec, device, seeds)
        t0 = time.perf_counter()
        _tokens(fs.sample(x, **kw))
        sync()
        t1 = time.perf_counter()
        _tokens(fs.sample(x, **kw))
        sync()
        t2 = time.perf_counter()
        res.update(first_call_s=round(t1 - t0, 3), second_call_s=round(t2 - t1, 4),
                   compile_s=round((t1 - t0) - (t2 - t1), 3))
        # tokens against the reference: three seed sets; bench specs also at every V of
        # the session grid that shares the specialisation (same compiled kernel)
        grid = DRY_GRID if not cuda_ok() else GPU_GRID
        vocabs = [V] + ([v for v in grid["v_first"] + grid["v_later"]
                         if v != V and _v_class(v) == _v_class(V)][:2]
                        if spec["group"] == "bench" else [])
        checked, bad = 0, []
        for v in vocabs:
            xv = x if v == V else wl.make_logits(B, v, spec["dtype"], device, seed=wl.SEED + 1)
            for s_i, mult in enumerate((1, 7919, 104729)):
                s = seeds * mult + s_i
                kw_s = dict(kw, seed=s)
                got = _tokens(fs.sample(xv, **kw_s))
                ref_kw = {k: v_ for k, v_ in kw_s.items() if k != "return_logprobs"}
                want = reference.sample(xv, **ref_kw)
                checked += 1
                if not torch.equal(got.cpu(), want.cpu()):
                    n = int((got.cpu() != want.cpu()).sum())
                    bad.append(f"V={v} seeds*{mult}+{s_i}: {n}/{B} rows differ")
        res.update(checked_calls=checked, matches_reference=not bad, mismatches=bad)
    except Exception as exc:  # noqa: BLE001 (report every specialisation)
        text = str(exc).strip().splitlines()
        res.update(error=f"{type(exc).__name__}: {text[0][:500] if text else ''}")
    return res


def _precompile_doc(args, jobs, started, results, pending) -> dict:
    return dict(device=torch.cuda.get_device_name() if cuda_ok() else "cpu (dry run)",
                triton_cache_dir=os.environ.get("TRITON_CACHE_DIR", "~/.triton/cache"),
                cpu_count=os.cpu_count(), jobs=jobs,
                wall_s=round(time.monotonic() - started, 1),
                note="compile_s = first call - second call, per specialisation, in one of "
                     f"{jobs} worker processes compiling at once (see 'serial' for "
                     "one-at-a-time timings); matches_reference: the same call's tokens "
                     "equal fused_sampler.reference.sample's on the same tensors",
                results=results, pending=pending)


def cmd_precompile(args) -> int:
    dry = args.dry_run or not cuda_ok()
    todo = specs(dry)
    if args.serial:
        return _serial(args, todo)
    if args.only:
        todo = [s for s in todo if s["name"] in args.only.split(",")]
    jobs = max(1, min(args.jobs or (os.cpu_count() or 2), len(todo)))
    started = time.monotonic()
    results, pending = [], [s["name"] for s in todo]
    print(f"precompile: {len(todo)} specialisations on {jobs} worker processes", flush=True)
    write_json(args.out, _precompile_doc(args, jobs, started, results, pending))
    ctx = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(jobs, mp_context=ctx) as pool:
        futures = {pool.submit(run_spec, s): s for s in todo}
        for fut in concurrent.futures.as_completed(futures):
            spec = futures[fut]
            try:
                res = fut.result()
            except Exception as exc:  # noqa: BLE001 (a worker died: keep the others)
                res = dict(spec, error=f"worker failed: {type(exc).__name__}: {exc}")
            results.append(res)
            pending.remove(spec["name"])
            write_json(args.out, _precompile_doc(args, jobs, started, results, pending))
            status = ("ERROR " + res["error"]) if "error" in res else (
                ("ok" if res["matches_reference"] else "TOKENS DIFFER " +
                 "; ".join(res["mismatches"][:2])))
            print(f"  {res.get('compile_s', float('nan')):7.2f} s compile  "
                  f"{spec['name']:40s} {status}", flush=True)
    bad = [r for r in results if "error" in r or not r.get("matches_reference")]
    print(f"precompile: {len(results)} done in {time.monotonic() - started:.0f} s, "
          f"{len(bad)} failed or differ from the reference", flush=True)
    return 1 if bad else 0


def _serial(args, todo) -> int:
    """Time a few specialisations one at a time (fresh TRITON_CACHE_DIR expected) and add
    them to the existing file under "serial"."""
    names = [n for n in (args.only.split(",") if args.only else SERIAL_DEFAULT) if n]
    chosen = [s for s in todo if s["name"] in names] or todo[:1]
    path = Path(args.out)
    doc = json.loads(path.read_text()) if path.exists() else {}
    doc["serial"] = []
    doc["serial_triton_cache_dir"] = os.environ.get("TRITON_CACHE_DIR", "~/.triton/cache")
    for spec in chosen:
        res = run_spec(spec)
        doc["serial"].append(res)
        write_json(path, doc)
        print(f"  serial {res.get('compile_s', float('nan')):7.2f} s compile  {spec['name']}"
              + (f"  ERROR {res['error']}" if "error" in res else ""), flush=True)
    return 0


# --------------------------------------------------------------------------------------
# flashinfer: import it and build its sampling module once (in the background)
# --------------------------------------------------------------------------------------

def _cuda_home():
    """Set CUDA_HOME, when unset, to a toolkit with bin/nvcc and include/cuda_runtime.h:
    FlashInfer otherwise derives it from ``which nvcc``, wrong for a wrapper script such
    as /usr/local/bin/nvcc.  Returns CUDA_HOME (or None)."""
    import shutil
    if os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH"):
        return os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    nvcc = shutil.which("nvcc")
    for home in ["/usr/local/cuda"] + ([os.path.dirname(os.path.dirname(
            os.path.realpath(nvcc)))] if nvcc else []):
        if (os.path.exists(os.path.join(home, "bin", "nvcc"))
                and os.path.exists(os.path.join(home, "include", "cuda_runtime.h"))):
            os.environ["CUDA_HOME"] = home
            return home
    return None


def _cuda_include_fallback():
    """FlashInfer's JIT compiles with ``-isystem $CUDA_HOME/include`` only, and its
    sampling.cuh includes curand.h, which a minimal toolkit lacks (this development
    machine's CUDA 13.0 does).  Where the toolkit has no curand.h, point nvcc at the
    headers of the pip CUDA wheels torch depends on (nvidia/cu13/include, or
    nvidia/curand/include for CUDA 12) through FLASHINFER_EXTRA_CUDAFLAGS.  Returns the
    directory added, or None."""
    import glob
    import shutil
    nvcc = shutil.which("nvcc")
    homes = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"]
    if nvcc:
        homes.append(os.path.dirname(os.path.dirname(os.path.realpath(nvcc))))
        homes.append(os.path.dirname(os.path.dirname(nvcc)))
    if any(h and os.path.exists(os.path.join(h, "include", "curand.h")) for h in homes):
        return None
    for entry in sys.path:
        for pattern in ("nvidia/cu13/include/curand.h", "nvidia/*/include/curand.h"):
            hits = sorted(glob.glob(os.path.join(entry, pattern)))
            if hits:
                inc = os.path.dirname(hits[0])
                flags = os.environ.get("FLASHINFER_EXTRA_CUDAFLAGS", "")
                os.environ["FLASHINFER_EXTRA_CUDAFLAGS"] = f"{flags} -isystem {inc}".strip()
                return inc
    return None


def _cuda_link_fallback(scratch: Path):
    """FlashInfer links with ``-L$CUDA_HOME/lib64/stubs -lcuda``; a minimal toolkit has
    no libcuda stub (this development machine's has none).  Where neither the toolkit
    nor the usual library folders hold an unversioned libcuda.so, link against the
    driver's libcuda.so.1 through a symlink in ``scratch`` (FLASHINFER_EXTRA_LDFLAGS).
    Returns the folder added, or None."""
    import glob
    import shutil
    nvcc = shutil.which("nvcc")
    homes = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"]
    if nvcc:
        homes.append(os.path.dirname(os.path.dirname(os.path.realpath(nvcc))))
    toolkit = [os.path.join(h, d) for h in homes if h for d in ("lib64/stubs", "lib64")]
    system = ["/usr/lib/x86_64-linux-gnu", "/usr/lib64", "/usr/lib", "/lib/x86_64-linux-gnu"]
    driver = ["/usr/local/nvidia/lib64", "/usr/local/nvidia/lib", "/usr/lib/wsl/lib"]
    if any(os.path.exists(os.path.join(d, "libcuda.so")) for d in toolkit + system):
        return None
    for d in driver:
        if os.path.exists(os.path.join(d, "libcuda.so")):
            add = d
            break
    else:
        real = next((hit for d in system + driver
                     for hit in sorted(glob.glob(os.path.join(d, "libcuda.so.1*")))), None)
        if real is None:
            return None
        add = str(scratch / "libcuda")
        os.makedirs(add, exist_ok=True)
        link = os.path.join(add, "libcuda.so")
        if not os.path.lexists(link):
            os.symlink(real, link)
    flags = os.environ.get("FLASHINFER_EXTRA_LDFLAGS", "")
    os.environ["FLASHINFER_EXTRA_LDFLAGS"] = f"{flags} -L{add}".strip()
    return add


def cmd_flashinfer(args) -> int:
    status = dict(ok=False, reason="", version=None, import_s=None, first_calls_s=None,
                  nvcc=None)
    path = Path(args.status)

    def done(ok, reason=""):
        status.update(ok=ok, reason=reason)
        write_json(path, status)
        print(f"flashinfer: {'ok' if ok else 'not usable: ' + reason}\n"
              f"flashinfer status: {json.dumps(status)}", flush=True)
        return 0 if ok else 1

    import shutil
    import subprocess
    status["nvcc"] = shutil.which("nvcc")
    if status["nvcc"]:
        try:
            status["nvcc_version"] = subprocess.run(
                [status["nvcc"], "--version"], capture_output=True, text=True,
                timeout=30).stdout.strip().splitlines()[-1]
        except (OSError, subprocess.SubprocessError, IndexError):
            pass
    status["CUDA_HOME"] = _cuda_home()
    status["curand_include_added"] = _cuda_include_fallback()
    status["libcuda_dir_added"] = _cuda_link_fallback(path.parent)
    status["FLASHINFER_EXTRA_CUDAFLAGS"] = os.environ.get("FLASHINFER_EXTRA_CUDAFLAGS")
    status["FLASHINFER_EXTRA_LDFLAGS"] = os.environ.get("FLASHINFER_EXTRA_LDFLAGS")
    t0 = time.perf_counter()
    try:
        import flashinfer
        import flashinfer.sampling as fi
    except Exception as exc:  # noqa: BLE001 (ImportError or a broken install)
        return done(False, f"import flashinfer failed: {type(exc).__name__}: {exc}")
    status["version"] = getattr(flashinfer, "__version__", "unknown")
    status["import_s"] = round(time.perf_counter() - t0, 2)
    if args.dry_run or not cuda_ok():
        return done(False, "no CUDA device (dry run)")
    x = wl.make_logits(4, 32000, "float32", "cuda")
    p = torch.softmax(x, dim=-1)
    t0 = time.perf_counter()
    try:           # the first call builds the sampling module (nvcc, ninja; MAX_JOBS)
        fi.top_k_top_p_sampling_from_logits(x, 50, 0.9, filter_apply_order="top_k_first")
        fi.top_k_top_p_sampling_from_logits(x, 50, 0.9, filter_apply_order="joint")
        fi.sampling_from_logits(x)
        fi.top_k_top_p_sampling_from_probs(p, 50, 0.9, filter_apply_order="top_k_first")
        fi.top_p_sampling_from_probs(p, 0.95)
        fi.top_k_sampling_from_probs(p, 50)
        fi.min_p_sampling_from_probs(p, 0.05)
        fi.sampling_from_probs(p)
        torch.cuda.synchronize()
    except Exception as exc:  # noqa: BLE001
        text = str(exc).strip().splitlines()
        status["first_calls_s"] = round(time.perf_counter() - t0, 1)
        return done(False, f"first FlashInfer call (JIT build of its sampling module) "
                           f"failed after {status['first_calls_s']} s: {type(exc).__name__}: "
                           f"{text[0][:300] if text else ''} (flashinfer.log has the rest)")
    status["first_calls_s"] = round(time.perf_counter() - t0, 1)
    try:           # bf16 logits (flashinfer_logits at bfloat16): recorded, not required
        fi.sampling_from_logits(x.to(torch.bfloat16))
        torch.cuda.synchronize()
        status["bf16_logits"] = "ok"
    except Exception as exc:  # noqa: BLE001
        status["bf16_logits"] = f"{type(exc).__name__}: {str(exc)[:200]}"
    return done(True)


# --------------------------------------------------------------------------------------
# bench: bench.run's measuring code over the session grid, in phases
# --------------------------------------------------------------------------------------

def phases(dry: bool) -> list:
    """(label, impls, Grid) in the order they run; FlashInfer phases may be deferred."""
    g = DRY_GRID if dry else GPU_GRID
    cases = tuple(wl.CASES)
    f32, bf16 = ("float32",), ("bfloat16",)
    both = g["dtypes"]
    mk = lambda dts, vs: wl.Grid(g["batch"], vs, dts, cases)  # noqa: E731
    small = wl.Grid(g["batch"][:3], g["v_first"][-1:], f32, ("plain", "top_k_top_p"))
    return [
        # small batches first (the second H200 session ran out of time before them): the
        # split rows fused_sampler runs there against one program per row under CUDA
        # graphs, and the host time of an eager call (eager times at small B are the host's)
        ("float32 small batches, CUDA graphs and host time", SMALL_IMPLS, small),
        # issue 11's plan: chunks a row against time, under CUDA graphs
        ("float32 small batches, chunks a row under CUDA graphs",
         tuple(f"{i}@graph" for i in wl.SWEEP_IMPLS), small),
        ("flashinfer float32 small batches, CUDA graphs", FLASHINFER_GRAPH_IMPLS, small),
        ("float32, V first", CORE_IMPLS, mk(f32, g["v_first"])),
        # the tensor-parallel path on one rank: its local steps' cost (PyTorch operations
        # and the noise launch) against fused_sampler on the same rows
        ("float32 tensor parallel, one rank", ("fused_sampler_tp1",),
         wl.Grid(small.batch_sizes[::2], small.vocab_sizes, f32, small.cases)),
        ("flashinfer float32, V first", FLASHINFER_IMPLS, mk(f32, g["v_first"])),
        ("bfloat16, V first", CORE_IMPLS, mk(bf16, g["v_first"])),
        ("flashinfer bfloat16, V first", FLASHINFER_IMPLS, mk(bf16, g["v_first"])),
        ("V later, both dtypes", CORE_IMPLS, mk(both, g["v_later"])),
        ("flashinfer V later, both dtypes", FLASHINFER_IMPLS, mk(both, g["v_later"])),
    ]


def _is_flashinfer(impls) -> bool:
    return all(i.startswith("flashinfer") for i in impls)


def _flashinfer_state(path):
    """None while the background build runs (no status file yet), else its JSON."""
    if not path:
        return {"ok": True}                   # not gated: bench.workloads tries the import
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def cmd_bench(args) -> int:
    from . import run as br

    dry = args.dry_run or not cuda_ok()
    argv = ["--out", str(args.out), "--time-budget-s", str(args.budget)]
    argv += ["--dry-run", "--no-plot", "--reps", "2"] if dry else ["--no-strict"]
    bargs = br.parse_args(argv)
    bargs.out = Path(args.out).resolve()

    class SessionRun(br.Run):
        def points(self, impl):
            pts = super().points(impl)
            if impl == "torch_reference":
                pts = [p for p in pts if p[2] <= REF_MAX_B]
            return pts

    run = SessionRun(bargs)
    start = time.monotonic()
    print(f"device: {run.results['device']}  torch {run.results['torch']}  triton "
          f"{run.results['triton']}  commit {run.results['commit']}  budget {args.budget} s",
          flush=True)
    run.measure_bandwidth()
    run.save()
    queue = phases(dry)
    fi_state, deferred_said = None, False
    while queue:
        if fi_state is None:
            fi_state = _flashinfer_state(args.flashinfer_status)
        # the first phase in order that can run now: FlashInfer's wait for its build
        pick = next((q for q in queue if not _is_flashinfer(q[1]) or fi_state is not None),
                    None)
        if pick is None:                   # only FlashInfer phases left, still building
            while fi_state is None and time.monotonic() < run.deadline:
                time.sleep(2)
                fi_state = _flashinfer_state(args.flashinfer_status)
            if fi_state is None:
                fi_state = {"ok": False, "reason": "its background build had not finished "
                                                   "when the time budget ran out"}
            continue
        if pick is not queue[0] and not deferred_said:
            print("bench: FlashInfer still building; its phases deferred", flush=True)
            deferred_said = True
        queue.remove(pick)
        label, impls, grid = pick
        if _is_flashinfer(impls) and not any(i in run.failed for i in impls):
            if not fi_state.get("ok"):
                for impl in impls:
                    run.failed[impl] = fi_state.get("reason", "unknown")
                    run.note(f"{impl}: not run: {fi_state.get('reason', 'unknown')}")
                run.save()
                continue
            # the build's environment, so that FlashInfer's build.ninja is unchanged and
            # its first call here loads the module instead of rebuilding it
            for key in ("CUDA_HOME", "FLASHINFER_EXTRA_CUDAFLAGS", "FLASHINFER_EXTRA_LDFLAGS"):
                if fi_state.get(key):
                    os.environ[key] = fi_state[key]
            if fi_state.get("version") and not fi_state.get("noted"):
                run.note(f"FlashInfer {fi_state['version']} (sampling module JIT-built with "
                         f"{fi_state.get('nvcc_version') or 'nvcc'} before timing, "
                         f"{fi_state.get('first_calls_s')} s, not timed)")
                fi_state["noted"] = True
        run.args.grid = grid
        t0 = time.monotonic()
        n0 = len(run.results["rows"])
        print(f"bench: phase {label}: {', '.join(impls)}", flush=True)
        for impl in impls:
            run.measure_impl(impl)
        print(f"bench: phase {label}: {len(run.results['rows']) - n0} rows in "
              f"{time.monotonic() - t0:.0f} s", flush=True)
    run.save()
    print(f"bench: {len(run.results['rows'])} rows in {time.monotonic() - start:.0f} s "
          f"-> {bargs.out}", flush=True)
    return 0


# --------------------------------------------------------------------------------------
# summary: a short table of what came back (printed last, so the tail carries it)
# --------------------------------------------------------------------------------------

def cmd_summary(args) -> int:
    d = Path(args.out_dir)
    lines = ["== session summary =="]

    def load(name):
        try:
            return json.loads((d / name).read_text())
        except (OSError, ValueError):
            return None
    bw = load("bandwidth.json")
    if bw and bw.get("copies"):
        lines.append("bandwidth: " + ", ".join(f"{c['bytes'] >> 20} MiB {c['GBps']:.0f} GB/s"
                                                for c in bw["copies"]))
    else:
        lines.append("bandwidth: missing")
    cc = load("compile-check.json")
    if cc and "results" not in cc:
        lines.append("precompile: no parallel results (cut before its first write)")
    if cc and "results" in cc:
        res = cc["results"]
        comp = [r["compile_s"] for r in res if "compile_s" in r]
        bad = [r["name"] for r in res if "error" in r or not r.get("matches_reference")]
        lines.append(f"precompile: {len(res)} specialisations ({len(cc.get('pending', []))} "
                     f"not reached) in {cc.get('wall_s')} s on {cc.get('jobs')} workers; "
                     + (f"compile median {statistics.median(comp):.1f} s, max {max(comp):.1f}"
                        " s; " if comp else "")
                     + (f"FAILED/DIFFER: {', '.join(bad[:6])}" if bad else
                        "all match the reference"))
    if not cc:
        lines.append("precompile: missing")
    elif cc.get("serial"):
        lines.append("serial compiles: " + ", ".join(
            f"{r['name']} {r.get('compile_s', 'error')} s" for r in cc["serial"]))
    try:
        suite = ElementTree.parse(d / "tests-gpu.xml").getroot()
        suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
        a = suite.attrib
        lines.append(f"GPU tests: {a.get('tests')} run, {a.get('failures')} failures, "
                     f"{a.get('errors')} errors, {a.get('skipped')} skipped, "
                     f"{float(a.get('time', 0)):.0f} s")
    except (OSError, ElementTree.ParseError, AttributeError):
        lines.append("GPU tests: no junit file")
    fi = None
    if args.flashinfer_status:
        try:
            fi = json.loads(Path(args.flashinfer_status).read_text())
        except (OSError, ValueError):
            fi = {"reason": "no status (its background build did not finish)"}
    for p in sorted(d.glob("*.json")):
        doc = load(p.name)
        if not (isinstance(doc, dict) and "rows" in doc):
            continue
        rows = doc["rows"]
        lines.append(f"bench {p.name}: {len(rows)} rows, copy {doc['copy_bandwidth_GBps']:.0f}"
                     f" GB/s, commit {doc['commit']}")
        by = {}
        for r in rows:
            by.setdefault((r["impl"], r["dtype"]), set()).add(r["V"])
        for (impl, dtype), vs in sorted(by.items()):
            n = sum(1 for r in rows if r["impl"] == impl and r["dtype"] == dtype)
            lines.append(f"  {impl:24s} {dtype:9s} {n:3d} rows  V {sorted(vs)}")
        key = [r for r in rows if r["impl"] == "fused_sampler" and r["case"] == "top_k_top_p"
               and r["dtype"] == "float32"]
        for r in sorted(key, key=lambda r: (r["V"], r["B"])):
            ref = [q["median_us"] for q in rows if q["impl"] == "torch_reference" and
                   all(q[k] == r[k] for k in ("B", "V", "dtype", "case"))]
            floor = wl.floor_us(r["B"], r["V"], r["dtype"], doc["copy_bandwidth_GBps"] or 1.0)
            lines.append(f"  top_k_top_p fp32 V={r['V']:6d} B={r['B']:4d}: fused "
                         f"{r['median_us']:9.1f} us  floor {floor:8.1f} us"
                         + (f"  reference {ref[0]:9.1f} us" if ref else ""))
        # small batches: fused_sampler (split rows on a GPU where B <= SMs) against one
        # program per row, eager, under CUDA graphs, and the host time of an eager call
        small = ("fused_sampler", "fused_sampler_per_row", *SMALL_IMPLS,
                 *FLASHINFER_GRAPH_IMPLS)
        t = {(r["case"], r["dtype"], r["V"], r["B"], r["impl"]): r["median_us"] for r in rows
             if r["impl"] in small}
        points = sorted({k[:4] for k in t if k[4] != "fused_sampler"})
        if points:
            lines.append("  small batches, us (split rows / one program per row):")
        for case, dtype, V, B in points:
            def pair(suffix):
                a, b = (t.get((case, dtype, V, B, f"{impl}{suffix}"))
                        for impl in ("fused_sampler", "fused_sampler_per_row"))
                return "/".join("-" if v is None else f"{v:.1f}" for v in (a, b))
            fi_graph = [f"{i.split('@')[0]} {t[(case, dtype, V, B, i)]:.1f}"
                        for i in FLASHINFER_GRAPH_IMPLS if (case, dtype, V, B, i) in t]
            lines.append(f"  {case:11s} {dtype} V={V:6d} B={B:4d}: eager {pair('')}  graph "
                         f"{pair('@graph')}  host {pair('@host')}"
                         + (f"  graph {', '.join(fi_graph)}" if fi_graph else ""))
        sweep = {(r["case"], r["V"], r["B"], r["impl"]): r["median_us"] for r in rows
                 if r["dtype"] == "float32" and r["impl"].endswith("@graph")}
        pts = sorted({k[:3] for k in sweep if k[3].startswith("fused_sampler_c")})
        if pts:
            lines.append("  chunks a row under CUDA graphs, us (fp32; c1 = one program per "
                         "row, auto = split_plan's):")
        for case, V, B in pts:
            row = [("c1", sweep.get((case, V, B, "fused_sampler_per_row@graph"))),
                   *((f"c{n}", sweep.get((case, V, B, f"fused_sampler_c{n}@graph")))
                     for n in wl.CHUNK_SWEEP),
                   ("auto", sweep.get((case, V, B, "fused_sampler@graph"))),
                   ("launch 1", sweep.get((case, V, B, f"{wl.FIRST_LAUNCH_IMPL}@graph")))]
            lines.append(f"  {case:11s} V={V:6d} B={B:4d}: " + "  ".join(
                f"{k} {'-' if v is None else f'{v:.1f}'}" for k, v in row))
        for r in sorted((r for r in rows if r["impl"] == "fused_sampler_tp1"),
                        key=lambda r: (r["case"], r["V"], r["B"])):
            one = [q["median_us"] for q in rows if q["impl"] == "fused_sampler" and
                   all(q[k] == r[k] for k in ("B", "V", "dtype", "case"))]
            lines.append(f"  tensor parallel, one rank: {r['case']:11s} V={r['V']:6d} "
                         f"B={r['B']:4d}: {r['median_us']:9.1f} us"
                         + (f"  fused_sampler {one[0]:9.1f} us" if one else ""))
    if fi:
        lines.append(f"flashinfer: {'ok' if fi.get('ok') else fi.get('reason')}")
    print("\n".join(lines), flush=True)
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.session", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("bandwidth")
    a.add_argument("--out", type=Path, required=True)
    a = sub.add_parser("precompile")
    a.add_argument("--out", type=Path, required=True)
    a.add_argument("--jobs", type=int, default=0)
    a.add_argument("--serial", action="store_true")
    a.add_argument("--only", default="", help="comma-separated spec names (--serial: default a few)")
    a = sub.add_parser("flashinfer")
    a.add_argument("--status", type=Path, required=True)
    a = sub.add_parser("bench")
    a.add_argument("--out", type=Path, required=True)
    a.add_argument("--budget", type=float, required=True)
    a.add_argument("--flashinfer-status", type=Path, default=None)
    a = sub.add_parser("summary")
    a.add_argument("--out-dir", type=Path, required=True)
    a.add_argument("--flashinfer-status", type=Path, default=None)
    for s in sub.choices.values():
        s.add_argument("--dry-run", action="store_true", help="CPU, small sizes")
    args = p.parse_args(argv)
    return {"bandwidth": cmd_bandwidth, "precompile": cmd_precompile,
            "flashinfer": cmd_flashinfer, "bench": cmd_bench, "summary": cmd_summary
            }[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
