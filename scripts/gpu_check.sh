#!/usr/bin/env bash
# Everything issue 5 asks to be shown on a GPU, in one command, on a GPU host
# that has nvcc and CMake but no network and no Debian packages:
#   1. unpack the Debian packages the build needs (downloaded beforehand with
#      ../shared/tools/offline-debs.sh .debs on a machine with apt) into a
#      private prefix,
#   2. build (Release; the CUDA backend and NCCL layer need nvcc, cuBLAS, NCCL),
#   3. run every GPU test: the kernels against their C references
#      (ctest -L gpu), the whole model on the GPU against the CPU engine
#      (test_cuda_engine), the NCCL layer (test_comm_nccl),
#   4. run bench_cuda (roofline, attention bandwidth, query-aware speedup and
#      accuracy, Llama-3-8B-shaped decode at batch 1 and 64).
# Logs and the bench JSON go to $OUT (the device tool's output folder) or ./out.
#
# Usage: scripts/gpu_check.sh [--debs DIR] [--quick] [STAGE...]
#   STAGE: kernels (kernel tests + NCCL), engine (test_cuda_engine), bench
#   (bench_cuda); default all three. The build (build-gpu/) is made or
#   brought up to date first. The stages together can outlast one 10-minute
#   device command: run them as separate commands, the build is kept.
set -uo pipefail
cd "$(dirname "$0")/.."
debs=.debs
quick=()
stages=()
while [ $# -gt 0 ]; do
    case "$1" in
    --debs) debs=$2; shift ;;
    --quick) quick=(--quick) ;;
    kernels | engine | bench) stages+=("$1") ;;
    *) echo "gpu_check: unknown argument '$1'" >&2; exit 2 ;;
    esac
    shift
done
[ ${#stages[@]} -gt 0 ] || stages=(kernels engine bench)
out=${OUT:-$PWD/out}
mkdir -p "$out"
log() { printf 'gpu_check: %s\n' "$*" | tee -a "$out/gpu_check.log" >&2; }

cmake_args=(-DCMAKE_BUILD_TYPE=Release)
if [ -d "$debs" ] && ls "$debs"/*.deb >/dev/null 2>&1; then
    prefix=/tmp/proteus-deps
    mkdir -p "$prefix"
    for f in "$debs"/*.deb; do dpkg -x "$f" "$prefix"; done
    cmake_args+=(-DCMAKE_PREFIX_PATH="$prefix/usr" -DLLHTTP_SRC_DIR="$prefix/usr/share/llhttp"
        -DLLHTTP_INC_DIR="$prefix/usr/share/include/llhttp")
    # The packages' .pc files say prefix=/usr: pkg-config must not be trusted
    # for them, so CMake finds headers and libraries under the prefix instead.
    cmake_args+=(-DCMAKE_DISABLE_FIND_PACKAGE_PkgConfig=ON)
    export LD_LIBRARY_PATH="$prefix/usr/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    log "dependencies unpacked from $debs into $prefix"
fi
# NCCL: the toolkit's, or the one PyTorch's wheels ship.
if [ ! -f /usr/local/cuda/include/nccl.h ]; then
    nccl=$(python3 -c 'import nvidia.nccl, os; print(list(nvidia.nccl.__path__)[0])' 2>/dev/null)
    if [ -n "$nccl" ] && [ -f "$nccl/include/nccl.h" ]; then
        lib=$(ls "$nccl"/lib/libnccl.so* 2>/dev/null | head -1)
        cmake_args+=(-DNCCL_INCLUDE_DIR="$nccl/include" -DNCCL_LIBRARY="$lib")
        export LD_LIBRARY_PATH="$nccl/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
        log "NCCL from $nccl"
    fi
fi

nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,clocks.max.mem --format=csv 2>&1 | tee -a "$out/gpu_check.log"
log "configure: ${cmake_args[*]}"
cmake -S . -B build-gpu "${cmake_args[@]}" >"$out/configure.log" 2>&1 || { log "configure failed"; tail -30 "$out/configure.log"; exit 1; }
cmake --build build-gpu -j"$(nproc)" >"$out/build.log" 2>&1 || { log "build failed"; grep -E "error" "$out/build.log" | head -30; exit 1; }
log "built"

status=0
# A GPU test must run here, not skip: ctest's skip (77) counts as a failure.
run_test() { # name, command...
    local name=$1
    shift
    log "== $name"
    "$@" >"$out/$name.log" 2>&1
    local rc=$?
    tail -25 "$out/$name.log"
    if [ $rc -ne 0 ]; then
        log "$name: exit $rc"
        status=1
    fi
}
for stage in "${stages[@]}"; do
    case $stage in
    kernels)
        for t in build-gpu/kernels/cuda/test_cuda_*; do run_test "$(basename "$t")" "$t"; done
        run_test test_comm_nccl build-gpu/test_comm_nccl
        ;;
    engine) run_test test_cuda_engine build-gpu/test_cuda_engine ;;
    bench) run_test bench_cuda build-gpu/bench_cuda "${quick[@]}" --json "$out/bench_cuda.json" ;;
    esac
done
log "done, status $status"
exit $status
