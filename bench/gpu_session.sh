#!/usr/bin/env bash
# One prepared GPU session for fused_sampler: setup, GPU tests, benchmark, plot.
#
# ---- First GPU session (one H200, 15 device-minutes in all): ONE call of the device tool
# Here, first:   bash bench/fetch_wheels.sh      (fills the git-ignored .whl/, stamps the commit)
# Then `run` with
#   command:   PYTHONUNBUFFERED=1 bash bench/gpu_session.sh session
#   carry:     [".whl"]
#   timeout_s: 480
# then give_back at once.  It ends by itself within FS_SESSION_BUDGET (450) seconds and
# returns 8 files in $OUT: session.log, environment.txt, bandwidth.json,
# compile-check.json, tests-gpu.xml, <gpu>.json + <gpu>.notes.txt (the benchmark, in the
# results schema), flashinfer.log.  Landing them: bench/README.md, "First GPU session".
# Rehearse here without a GPU (small sizes, the kernel in Triton's interpreter, ~2 min):
#   PATH=$PWD/.venv/bin:$PATH OUT=/tmp/fs_dry bash bench/gpu_session.sh session
# ----
#
# Run from the repository root on a machine with an NVIDIA GPU (torch + triton
# preinstalled, no network). Everything it makes goes to $OUT (default /tmp/fs_gpu_out).
#
#   bash bench/gpu_session.sh session                    # env, bandwidth, compile+check,
#                                                        # GPU tests, bench: < 450 s
#   bash bench/gpu_session.sh all   [--quick]            # everything, under ~25 minutes
#   bash bench/gpu_session.sh setup                      # install + environment report
#   bash bench/gpu_session.sh test                       # setup + GPU tests + full suite
#   bash bench/gpu_session.sh reliability                # setup + GPU fuzz + B=4096 sizes
#   bash bench/gpu_session.sh bench [--quick] [--dtype float32|bfloat16] [--budget S]
#   bash bench/gpu_session.sh pytest-bench               # setup + pytest-benchmark (quick grid)
#
# Where one command may run at most 10 minutes, run `test`, then `bench --dtype float32`,
# then `bench --dtype bfloat16` as three commands, and merge the two JSON files afterwards
# with `python -m bench --merge A.json B.json --out bench/results/<gpu>.json`.
# The commit recorded is .whl/COMMIT, stamped by bench/fetch_wheels.sh just before the call
# and checked here against the tracked files' content; FS_BENCH_COMMIT=<sha> overrides it.
# `session` environment: FS_SESSION_BUDGET (seconds, default 450), FS_DRY_RUN=1 (CPU
# rehearsal; automatic without CUDA), FS_KEEP_TRITON_CACHE=1 (reuse compiled kernels on a
# rerun instead of timing their compilation again).
set -uo pipefail

cd "$(dirname "$0")/.."
START=$(date +%s)
OUT=${OUT:-/tmp/fs_gpu_out}
mkdir -p "$OUT"
AUX=$OUT        # where setup's install log and wheel list go (the session keeps them aside)
STEP=all
QUICK=0
DTYPE=""
BUDGET=""
while [ $# -gt 0 ]; do
  case "$1" in
    all|setup|test|reliability|bench|pytest-bench|session|small) STEP=$1 ;;
    --quick) QUICK=1 ;;
    --dtype) DTYPE=$2; shift ;;
    --budget) BUDGET=$2; shift ;;
    *) echo "gpu_session: unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done

log() { echo "[gpu_session +$(( $(date +%s) - START ))s] $*"; }
elapsed() { echo $(( $(date +%s) - START )); }

# A CPU rehearsal: FS_DRY_RUN=1, or no CUDA device (the GPU-only parts are skipped and
# recorded; the rest runs on small sizes).
DRY=${FS_DRY_RUN:-}
if [ -z "$DRY" ]; then
  if timeout 60 python3 -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" \
      2>/dev/null; then DRY=0; else DRY=1; fi
fi

commit_id() {  # FS_BENCH_COMMIT, else .whl/COMMIT (bench/fetch_wheels.sh) checked against
               # the tracked files' content, else git (-dirty), else unknown.  The stamp
               # comes first: the device's copy of the tree may carry a stale .git (the
               # first H200 session read 5648dd9 from one while running c5e5c79).
  if [ -n "${FS_BENCH_COMMIT:-}" ]; then echo "$FS_BENCH_COMMIT"; return; fi
  local c
  if [ -s .whl/COMMIT ] && [ -s .whl/FILES ]; then
    c=$(sed -n 1p .whl/COMMIT)
    if [ "$(tr '\n' '\0' < .whl/FILES | xargs -0 sha1sum 2>/dev/null | sha1sum | cut -c1-40)" \
         != "$(sed -n 2p .whl/COMMIT)" ]; then c+="-changed-after-stamp"; fi
    echo "$c"
  elif c=$(git rev-parse HEAD 2>/dev/null); then
    [ -n "$(git status --porcelain --untracked-files=no 2>/dev/null)" ] && c+="-dirty"
    echo "$c"
  else echo unknown; fi
}

setup() {
  log "setup (dry run: $DRY)"
  FS_BENCH_COMMIT=$(commit_id); export FS_BENCH_COMMIT
  if ls .whl/*.whl >/dev/null 2>&1; then
    ls -la .whl > "$AUX/carried-wheels.txt"
    if [ "$DRY" = 1 ]; then
      log "dry run: carried wheels not installed (they are built for the GPU machine's python)"
    elif python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl > "$AUX/wheels-install.log" 2>&1; then
      export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
      log "carried wheels installed into /tmp/site: $(cd .whl && ls *.whl | tr '\n' ' ')"
    else
      log "carried wheels did NOT install:"; tail -5 "$AUX/wheels-install.log"
    fi
  fi
  if timeout 60 python3 -c "import fused_sampler.kernels" 2>/dev/null; then
    log "fused_sampler already importable: no install"
  elif python3 -m pip install --no-deps --no-build-isolation --no-index -e . \
      > "$AUX/install.log" 2>&1; then
    log "editable install: ok"
  else
    # No bdist_wheel in the machine's setuptools (carry setuptools>=70.1 in .whl/ to avoid
    # this), or no write access: map fused_sampler.kernels -> kernels/ with a meta-path
    # finder loaded from sitecustomize, and put the repository on the path.
    log "editable install failed (see install.log); using a path shim"
    mkdir -p /tmp/fs_shim
    cat > /tmp/fs_shim/sitecustomize.py <<EOF
import importlib.abc, importlib.machinery, importlib.util, os, sys
_KERNELS = os.path.join("$PWD", "kernels")
class _KernelsFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name != "fused_sampler.kernels":
            return None
        init = os.path.join(_KERNELS, "__init__.py")
        if os.path.exists(init):
            return importlib.util.spec_from_file_location(
                name, init, submodule_search_locations=[_KERNELS])
        spec = importlib.machinery.ModuleSpec(name, None, is_package=True)
        spec.submodule_search_locations = [_KERNELS]
        return spec
sys.meta_path.append(_KernelsFinder())
EOF
    export PYTHONPATH=/tmp/fs_shim:$PWD${PYTHONPATH:+:$PYTHONPATH}
  fi
  {
    echo "date $(date -u +%FT%TZ)  commit $FS_BENCH_COMMIT  nproc $(nproc)  step $STEP  dry run $DRY"
    nvidia-smi || echo "nvidia-smi failed"
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm,clocks.mem,power.draw,power.limit,temperature.gpu,persistence_mode \
      --format=csv 2>/dev/null
    python3 -V
    timeout 60 python3 -c "
import torch, triton
print('torch', torch.__version__, 'cuda', torch.version.cuda, '| triton', triton.__version__)
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print(torch.cuda.get_device_name(), 'capability', torch.cuda.get_device_capability(),
          '| SMs', p.multi_processor_count, '| L2', getattr(p, 'L2_cache_size', '?'),
          '| memory', p.total_memory)
else:
    print('no CUDA device')"
    timeout 60 python3 -c "import fused_sampler, fused_sampler.kernels as k; print('fused_sampler from', fused_sampler.__file__, '| kernels from', list(k.__path__))" \
      || echo "fused_sampler.kernels does not import"
    timeout 60 python3 -c "
import importlib
for m in ('pytest', 'pytest_benchmark', 'numpy', 'scipy', 'hypothesis', 'matplotlib', 'setuptools'):
    try:
        print(m, getattr(importlib.import_module(m), '__version__', '?'), end='  ')
    except Exception:
        print(m, 'MISSING', end='  ')
print()"
    echo "nvcc: $(command -v nvcc || echo 'not found') ${CUDA_HOME:+(CUDA_HOME=$CUDA_HOME)} $(nvcc --version 2>/dev/null | tail -1)"
    echo "gcc: $(gcc --version 2>/dev/null | head -1 || echo 'not found')  ninja: $(ninja --version 2>/dev/null || echo 'not found')"
    if [ "$STEP" = small ]; then
      echo "flashinfer: not used by this step"
    elif [ "$STEP" = session ]; then
      echo "flashinfer: imported and built by the session's background step (flashinfer.log)"
    else
      timeout 120 python3 -c "import flashinfer, flashinfer.sampling; print('flashinfer', flashinfer.__version__)" \
        || echo "flashinfer does not import"
    fi
    echo "memory: $(free -g 2>/dev/null | awk '/Mem:/ {print $2 " GiB total, " $7 " GiB available"}')  disk /tmp: $(df -h /tmp 2>/dev/null | awk 'NR==2 {print $4 " free"}')"
    if [ -s "$AUX/carried-wheels.txt" ]; then echo "carried wheels:"; cat "$AUX/carried-wheels.txt"; fi
  } 2>&1 | tee "$OUT/environment.txt"
  GPU=$(timeout 60 python3 -c "import re, torch; print(re.sub(r'[^a-z0-9]+', '-', torch.cuda.get_device_name().lower()).strip('-'))" 2>/dev/null) \
    || GPU=cpu-dry-run
  export GPU
  unset TRITON_INTERPRET
}

run_tests() {
  log "GPU tests: pytest tests -m gpu"
  timeout 270 python3 -m pytest tests -m gpu -q -rs 2>&1 | tee "$OUT/tests-gpu.log" | tail -25
  log "full suite, no TRITON_INTERPRET"
  timeout 270 env -u TRITON_INTERPRET python3 -m pytest tests -q -rs 2>&1 \
    | tee "$OUT/tests-full.log" | tail -25
}

run_bench() {  # $1: seconds this step may still use
  local name="$GPU" args=()
  [ "$QUICK" = 1 ] && { args+=(--quick); name+="-quick"; }
  [ -n "$DTYPE" ] && { args+=(--dtypes "$DTYPE"); name+="-$DTYPE"; }
  local budget=$(( $1 - $(elapsed) - 150 ))   # a compilation may overrun; plot after
  [ -n "$BUDGET" ] && budget=$BUDGET
  [ "$budget" -lt 60 ] && budget=60
  log "bench -> $OUT/$name.json (time budget ${budget}s)"
  env -u TRITON_INTERPRET python3 -m bench "${args[@]}" --time-budget-s "$budget" \
    --out "$OUT/$name.json" 2>&1 | grep -v '^W[0-9]' | tee "$OUT/bench-$name.log"
  cp bench/README.md "$OUT/README.md"
  python3 -m bench.plot "$OUT/$name.json" --out-dir "$OUT" --readme "$OUT/README.md" \
    2>&1 | tee -a "$OUT/bench-$name.log"
}

run_pytest_bench() {
  log "pytest-benchmark (quick grid, no torch.compile)"
  FS_BENCH_IMPLS=fused_sampler,flashinfer_top_k_first,flashinfer_joint,flashinfer_probs,flashinfer_logits,torch_reference \
    timeout 420 python3 -m pytest bench/ --benchmark-only -q \
    --benchmark-json "$OUT/pytest-benchmark-$GPU.json" 2>&1 | tee "$OUT/pytest-bench.log" | tail -40
}

run_reliability() {  # issue 4's GPU parts beyond the tests: fuzz, sizes, compile
  log "fuzz campaign on the GPU (3 min)"
  timeout 300 python3 -m tests.fuzz --device cuda --minutes 3 --out "$OUT/fuzz-gpu.json" \
    2>&1 | tail -3 | tee "$OUT/fuzz-gpu.log"
  log "sizes: B=4096, V=2^20+7, bf16"
  timeout 240 python3 scripts/size_check.py --batch 4096 --vocab 1048583 \
    2>&1 | tee "$OUT/size-gpu.md"
}

# ---- session: issue 12's one short command, most valuable first, within a hard budget.
# At most 8 files land in $OUT (the device tool returns no more than 8); each is written as
# soon as it exists, so a run killed at any point returns what it had.
TOTAL=${FS_SESSION_BUDGET:-450}
left() { echo $(( TOTAL - $(elapsed) )); }
cap() {  # cap WANT RESERVE: WANT seconds, but never into the last RESERVE/450 of the
         # budget (the reserves below are sized for the default 450 s; min 1 s)
  local want=$1 room=$(( $(left) - ${2:-0} * TOTAL / 450 ))
  [ "$room" -lt "$want" ] && want=$room
  [ "$want" -lt 1 ] && want=1
  echo "$want"
}
bounded() {  # bounded SECONDS LABEL CMD...: run CMD under timeout, log how it ended
  local t=$1 label=$2 rc; shift 2
  log "$label (limit ${t}s)"
  timeout -k 5 "$t" "$@"; rc=$?
  case $rc in
    0) log "$label: ok" ;;
    124|137) log "$label: CUT at its ${t}s limit (what it wrote so far is kept)" ;;
    *) log "$label: exit $rc" ;;
  esac
  return 0
}

run_session() {
  local scr=$AUX dry=() jobs fi_status fi_t budget
  [ "$DRY" = 1 ] && dry=(--dry-run)
  export PYTHONUNBUFFERED=1
  if [ "${FS_KEEP_TRITON_CACHE:-0}" != 1 ]; then rm -rf "$scr/triton-cache"; fi
  export TRITON_CACHE_DIR=$scr/triton-cache      # fresh: compile times are cold ones
  if [ "$DRY" = 1 ]; then
    export TRITON_INTERPRET=1                    # the kernel in Triton's interpreter on CPU
    export PYTHONWARNINGS=ignore::RuntimeWarning # its inf/nan warnings on discarded lanes
    jobs=2
  else
    jobs=$(( $(nproc) - 4 )); [ "$jobs" -lt 1 ] && jobs=1
  fi

  # 1a. FlashInfer: import it and JIT-build its sampling module (nvcc) in the background;
  #     the benchmark's FlashInfer phases wait for its status file
  fi_status=$scr/flashinfer-status.json; rm -f "$fi_status"
  fi_t=$(cap 300 60)
  log "flashinfer import + build in the background (limit ${fi_t}s) -> flashinfer.log"
  (
    MAX_JOBS=${FS_FLASHINFER_JOBS:-4} timeout -k 5 "$fi_t" nice -n 5 \
      python3 -m bench.session flashinfer --status "$fi_status" "${dry[@]}" \
      > "$OUT/flashinfer.log" 2>&1
    rc=$?
    if [ ! -s "$fi_status" ]; then
      why="ended with exit $rc"
      if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then why="timed out after ${fi_t} s"; fi
      printf '{"ok": false, "reason": "FlashInfer import/JIT build %s (flashinfer.log)"}\n' \
        "$why" > "$fi_status"
    fi
    log "flashinfer background step finished (exit $rc)"
  ) &

  # 1b. copy bandwidth
  bounded "$(cap 60 300)" "bandwidth" \
    python3 -m bench.session bandwidth --out "$OUT/bandwidth.json" "${dry[@]}"

  # 1c+3. compile every specialisation the tests and the bench launch, in parallel, timing
  #     each compile and checking its tokens against the reference on the same device
  bounded "$(cap 150 200)" "precompile + reference check ($jobs workers)" \
    python3 -m bench.session precompile --out "$OUT/compile-check.json" --jobs "$jobs" \
    "${dry[@]}"

  # 1d. GPU tests: CUDA-graph capture, no syncs with validate=False, GPU = CPU reference
  #     (skipped, and recorded as skipped, without CUDA)
  bounded "$(cap 120 150)" "GPU tests" \
    python3 -m pytest tests/test_gpu.py -q -rs -p no:cacheprovider \
    -k "cuda_graph_capture or never_syncs or same_tokens_on_gpu" \
    --junitxml="$OUT/tests-gpu.xml"

  # 2. benchmark in phases (fp32 at V 32000/128256 first); it starts no new point after
  #    its budget, and is killed 30 s after it (a point in flight), 10 s before the end
  budget=$(( $(left) - 40 ))
  if [ "$budget" -ge 10 ]; then
    bounded "$(( budget + 30 ))" "bench (budget ${budget}s)" \
      python3 -m bench.session bench --out "$OUT/$GPU.json" --budget "$budget" \
      --flashinfer-status "$fi_status" "${dry[@]}"
  else
    log "bench: skipped, ${budget}s left for it"
  fi

  # 3. compile time of two specialisations one at a time, in a fresh cache (only with
  #    time left after a benchmark that ran)
  if [ "$budget" -ge 10 ] && [ "$(left)" -ge 30 ]; then
    TRITON_CACHE_DIR=$scr/triton-serial bounded "$(cap 60 8)" "serial compile timing" \
      python3 -m bench.session precompile --serial --out "$OUT/compile-check.json" "${dry[@]}"
  else
    log "serial compile timing: skipped, $(left)s left"
  fi
  rm -rf "$scr/triton-serial"

  timeout 30 python3 -m bench.session summary --out-dir "$OUT" --flashinfer-status "$fi_status"
  log "session done in $(elapsed)s; files in $OUT:"
  ls -la "$OUT"
}

# ---- small: a second, short call (~4 min) when a session's budget ran out before its
# small-batch phases: the never_syncs test with its traceback, where an eager call's host
# time goes (scripts/host_overhead.py), then the small batches under CUDA graphs and the
# chunks-a-row sweep (no FlashInfer).  FS_SESSION_BUDGET default 250.
capa() {  # capa WANT RESERVE: WANT seconds, but never into the last RESERVE seconds
  local want=$1 room=$(( $(left) - $2 ))
  [ "$room" -lt "$want" ] && want=$room
  [ "$want" -lt 1 ] && want=1
  echo "$want"
}
run_small() {
  local jobs=$(( $(nproc) - 4 )) names
  [ "$jobs" -lt 1 ] && jobs=1
  export PYTHONUNBUFFERED=1 TRITON_CACHE_DIR=$AUX/triton-cache
  names="bench plain float32 B1,bench plain float32 B8 V128256,bench plain float32 B64"
  names+=",bench top_k_top_p float32 B1,bench top_k_top_p float32 B8"
  names+=",bench top_k_top_p float32 B64,test never_syncs warm-up top_p"
  for i in 0 1 2 3 4 5 6; do names+=",test never_syncs case$i"; done
  bounded "$(capa 60 130)" "precompile ($jobs workers)" python3 -m bench.session precompile \
    --out "$OUT/compile-check.json" --jobs "$jobs" --only "$names"
  bounded "$(capa 45 100)" "never_syncs and the shard kernel" python3 -m pytest \
    tests/test_gpu.py -k "never_syncs or shard_summaries_on_gpu" -q --tb=short \
    -p no:cacheprovider
  bounded "$(capa 60 110)" "host time profile" python3 scripts/host_overhead.py \
    --device "$([ "$DRY" = 1 ] && echo cpu || echo cuda)" --profile --calls 300
  bounded "$(capa 65 45)" "plain, small batches" python3 -m bench --no-strict \
    --dtypes float32 --cases plain --batch 1,8,64 --vocab 128256 \
    --time-budget-s "$(capa 45 65)" --out "$OUT/$GPU-small-plain.json" \
    --impls "fused_sampler@graph,fused_sampler_per_row@graph,fused_sampler@host,fused_sampler_per_row@host,$(echo fused_sampler_c{4,8,16,32,63,126}@graph | tr ' ' ,)"
  bounded "$(capa 60 5)" "top_k_top_p, small batches" python3 -m bench --no-strict \
    --dtypes float32 --cases top_k_top_p --batch 1,8,64 --vocab 128256 \
    --time-budget-s "$(capa 35 25)" --out "$OUT/$GPU-small-top_k_top_p.json" \
    --impls "fused_sampler@graph,fused_sampler_launch1@graph,fused_sampler@host,$(echo fused_sampler_c{4,8,16,32}@graph | tr ' ' ,)"
  timeout 20 python3 -m bench.session summary --out-dir "$OUT"
  log "small done in $(elapsed)s"
}

if [ "$STEP" = small ]; then
  AUX=/tmp/fs_session; mkdir -p "$AUX"
  TOTAL=${FS_SESSION_BUDGET:-250}
  { setup; run_small; } 2>&1 | tee -a "$OUT/session.log"
  exit 0
fi

if [ "$STEP" = session ]; then
  AUX=/tmp/fs_session; mkdir -p "$AUX"
  { setup; run_session; } 2>&1 | tee -a "$OUT/session.log"
  exit 0
fi

setup
case "$STEP" in
  setup) ;;
  test) run_tests ;;
  reliability) run_reliability ;;
  bench) run_bench 570 ;;
  pytest-bench) run_pytest_bench ;;
  all) run_tests; run_bench $(( 24 * 60 )) ;;
esac
log "done; files in $OUT:"
ls -la "$OUT"
