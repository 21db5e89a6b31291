#!/usr/bin/env bash
# ops/bench_cuda.sh: what a session with a GPU (an H100) runs to verify and measure the CUDA
# backend (docs/CUDA.md). Steps, each printed with a header:
#   1. probe       nvidia-smi and the device the build sees
#   2. build       build-cuda/ (CMAKE_CUDA_ARCHITECTURES from the device, default 90 for H100)
#   3. verify      ctest for test_cuda_api and test_cuda_kernels; a SKIP here means the GPU was not
#                  seen and is treated as a FAILURE (this script exists to run on a GPU)
#   4. bench       bench_cuda_kernels --json: copy bandwidth, paged-attention decode, bf16 GEMM,
#                  device sampling; the JSON object (last line) is saved to the results folder
# Results go to ${DUEL_BENCH_OUT:-bench-results}/cuda-<date>/ (logs + bench.json).
# Options: --quick (short benchmark), --skip-build, --arch NN (e.g. 80 for A100, 90 for H100).
# The end-to-end engine benchmark (`duel bench`) does not exist yet; when it does, add it here.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2

quick=() skip_build=0 arch=
while [ $# -gt 0 ]; do
    case $1 in
    --quick) quick=(--quick) ;;
    --skip-build) skip_build=1 ;;
    --arch) arch=${2:?--arch needs a number like 90}; shift ;;
    -h | --help) sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "ops/bench_cuda.sh: unknown option '$1' (see --help)" >&2; exit 2 ;;
    esac
    shift
done

out=${DUEL_BENCH_OUT:-bench-results}/cuda-$(date -u +%Y%m%dT%H%M%SZ)
mkdir -p "$out" || exit 2
section() { printf '\n===== %s =====\n' "$*"; }

section "1. probe"
if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi | tee "$out/nvidia-smi.txt"; then
    echo "no working nvidia-smi: this script needs a GPU machine" >&2
    exit 1
fi
if [ -z "$arch" ]; then
    cap=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -1 | tr -d ' .')
    arch=${cap:-90}
fi
echo "building for sm_$arch"

if [ "$skip_build" -eq 0 ]; then
    section "2. build (build-cuda/)"
    cmake -S . -B build-cuda -DDUEL_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES="$arch" \
        -DCMAKE_BUILD_TYPE=RelWithDebInfo >"$out/configure.log" 2>&1 || {
        tail -30 "$out/configure.log"; exit 1; }
    cmake --build build-cuda -j"$(nproc)" --target duel_cuda test_cuda_api test_cuda_kernels \
        bench_cuda_kernels 2>&1 | tee "$out/build.log" | tail -5
    [ "${PIPESTATUS[0]}" -eq 0 ] || { echo "build failed (see $out/build.log)" >&2; exit 1; }
fi

section "3. verify (every kernel against its CPU reference)"
(cd build-cuda && ctest --output-on-failure -R '^test_cuda_(api|kernels)$') 2>&1 | tee "$out/verify.log"
verify=${PIPESTATUS[0]}
if grep -q 'SKIP: no CUDA device' "$out/verify.log" || grep -qi 'skipped' "$out/verify.log"; then
    echo "FAIL: the kernel test skipped, so the GPU was not used" >&2
    verify=1
fi
[ "$verify" -eq 0 ] && echo "verify: PASS" || echo "verify: FAIL"

section "4. bench (kernel microbenchmarks)"
./build-cuda/tests/bench_cuda_kernels --json "${quick[@]}" 2>&1 | tee "$out/bench.log"
bench=${PIPESTATUS[0]}
tail -1 "$out/bench.log" >"$out/bench.json"
[ "$bench" -eq 0 ] && echo "bench: done, JSON in $out/bench.json" || echo "bench: FAIL"

section "summary"
echo "verify=$([ "$verify" -eq 0 ] && echo PASS || echo FAIL) bench=$([ "$bench" -eq 0 ] && echo OK || echo FAIL) results=$out"
[ "$verify" -eq 0 ] && [ "$bench" -eq 0 ]
