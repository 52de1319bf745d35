#!/usr/bin/env bash
# One prepared GPU session for fused_sampler: setup, GPU tests, benchmark, plot.
#
# Run from the repository root on a machine with an NVIDIA GPU (torch + triton
# preinstalled, no network). Everything it makes goes to $OUT (default /tmp/fs_gpu_out).
#
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
# Set FS_BENCH_COMMIT=<sha> when the tree was copied without .git.
set -uo pipefail

cd "$(dirname "$0")/.."
START=$(date +%s)
OUT=${OUT:-/tmp/fs_gpu_out}
mkdir -p "$OUT"
STEP=all
QUICK=0
DTYPE=""
BUDGET=""
while [ $# -gt 0 ]; do
  case "$1" in
    all|setup|test|reliability|bench|pytest-bench) STEP=$1 ;;
    --quick) QUICK=1 ;;
    --dtype) DTYPE=$2; shift ;;
    --budget) BUDGET=$2; shift ;;
    *) echo "gpu_session: unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done

log() { echo "[gpu_session +$(( $(date +%s) - START ))s] $*"; }
elapsed() { echo $(( $(date +%s) - START )); }

setup() {
  log "setup"
  if ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
    ls .whl > "$OUT/carried-wheels.txt"
  fi
  if python3 -m pip install --no-deps --no-build-isolation --no-index -e . \
      > "$OUT/install.log" 2>&1; then
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
    nvidia-smi || echo "nvidia-smi failed"
    python3 -V
    python3 -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, '| triton', triton.__version__, '|', torch.cuda.get_device_name())"
    python3 -c "import fused_sampler, fused_sampler.kernels as k; print('fused_sampler from', fused_sampler.__file__, '| kernels from', list(k.__path__))" \
      || echo "fused_sampler.kernels does not import"
    python3 -c "import matplotlib; print('matplotlib', matplotlib.__version__)" || echo "no matplotlib (plot on the dev machine)"
    python3 -c "import pytest_benchmark; print('pytest-benchmark', pytest_benchmark.__version__)" || echo "no pytest-benchmark"
    echo "nvcc: $(command -v nvcc || echo 'not found') ${CUDA_HOME:+(CUDA_HOME=$CUDA_HOME)}"
    python3 -c "import flashinfer, flashinfer.sampling; print('flashinfer', flashinfer.__version__)" \
      || echo "flashinfer does not import"
  } 2>&1 | tee "$OUT/environment.txt"
  GPU=$(python3 -c "import re, torch; print(re.sub(r'[^a-z0-9]+', '-', torch.cuda.get_device_name().lower()).strip('-'))")
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
