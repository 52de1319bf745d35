#!/usr/bin/env bash
# Fill the git-ignored .whl/ with the wheels the GPU machine lacks, and stamp .whl/COMMIT.
#
#   bash bench/fetch_wheels.sh          # before each device call: idempotent, offline once
#                                       # the wheels are there; re-stamps the commit
#   bash bench/fetch_wheels.sh --clean  # remove .whl/ first
#
# The GPU machine (python 3.12, torch 2.11 + cu130, triton 3.6, no network) already has
# pytest, pytest-benchmark, numpy, scipy, hypothesis, matplotlib, ninja, nvcc and every
# pure-python dependency of FlashInfer's sampling path (click, einops, tabulate, tqdm,
# packaging, requests, nvidia-ml-py).  It lacks only FlashInfer:
#
#   flashinfer-python 0.6.3     py3-none-any, 7.6 MB (csrc + cutlass headers; it builds its
#                               sampling module with the machine's nvcc on first use)
#   apache-tvm-ffi 0.1.15.post2 cp312 manylinux_2_28, 3.3 MB (FlashInfer's FFI)
#
# Left out on purpose: nvidia-cutlass-dsl, nvidia-cudnn-frontend, cuda-tile (not imported
# by flashinfer.sampling; checked by importing it with these two wheels alone),
# flashinfer-cubin (150 MB for 0.6.3, no sampling kernels in it) and flashinfer-jit-cache
# (not on PyPI).  Newer flashinfer-python grows past the carry limit (0.6.13: 14 MB,
# 0.7.4: 101 MB) and adds dependencies.  The device tool carries at most 64 MiB in all.
set -euo pipefail
cd "$(dirname "$0")/.."

PYV=${FS_DEVICE_PYTHON:-3.12}       # the GPU machine's python3 (KINDS.md: 3.12.3)
WHEELS=("flashinfer-python==0.6.3" "apache-tvm-ffi==0.1.15.post2")
LIMIT_MIB=48                        # of the 64 MiB the tool carries; the tree is ~3 MiB

[ "${1:-}" = "--clean" ] && rm -rf .whl
mkdir -p .whl
grep -qx '/.whl/' .gitignore 2>/dev/null || echo "warning: .gitignore does not ignore /.whl/" >&2

for spec in "${WHEELS[@]}"; do
  name=${spec%%==*}; version=${spec##*==}
  file_prefix="$(echo "$name" | tr '-' '_')-$version-"
  if ls .whl/"$file_prefix"*.whl >/dev/null 2>&1; then
    echo "have $(ls .whl/"$file_prefix"*.whl)"
    continue
  fi
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$PYV" \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
    --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d .whl "$spec" 2>&1 | grep -v "is ignored" || true
  ls .whl/"$file_prefix"*.whl >/dev/null 2>&1 || { echo "fetch_wheels: could not get $spec" >&2; exit 1; }
done

# one version of each package: two stop the whole install on the device
dups=$(ls .whl/*.whl | xargs -n1 basename | cut -d- -f1 | sort | uniq -d)
[ -z "$dups" ] || { echo "fetch_wheels: several versions of: $dups (remove all but one)" >&2; exit 1; }

# The stamp: the commit, "-dirty" with uncommitted changes, and the content hash of the
# tracked files as they are now (.whl/FILES lists them), which gpu_session.sh recomputes on
# the device: a tree changed after the stamp reads "<commit>-changed-after-stamp" there.
c=$(git rev-parse HEAD)
git diff --quiet HEAD -- 2>/dev/null || c+="-dirty"
git ls-files > .whl/FILES
tree=$(tr '\n' '\0' < .whl/FILES | xargs -0 sha1sum 2>/dev/null | sha1sum | cut -c1-40)
printf '%s\n%s\n' "$c" "$tree" > .whl/COMMIT
echo "stamped .whl/COMMIT: $c (tracked files $tree)"

total=$(du -cm .whl | tail -1 | cut -f1)
du -h .whl/*
echo "total $(du -ch .whl | tail -1 | cut -f1) (limit ${LIMIT_MIB} MiB)"
[ "$total" -le "$LIMIT_MIB" ] || { echo "fetch_wheels: .whl/ is over ${LIMIT_MIB} MiB" >&2; exit 1; }
cat <<'EOF'
device tool call:  run  command: PYTHONUNBUFFERED=1 bash bench/gpu_session.sh session
                        carry: [".whl"]   timeout_s: 480      then give_back
EOF
