#!/usr/bin/env bash
# Runs bench_transform as recorded in bench/README.md ("Live TP
# transformation"): SmolLM2-135M (the default GGUF model, f32 KV, real
# prefill, 5 repetitions) and synthetic:llama3-8b (q4_0 weights, f16 KV,
# pages filled directly, 3 repetitions), each at 1K, 4K and 16K tokens of KV
# over 8 sequences, on two CPU virtual devices of one thread each.
#
#   bench/bench_transform.sh [OUT_DIR]      (default out/bench_transform)
#
# Environment: BUILD_DIR (default build), PROTEUS_DEFAULT_MODEL, MODELS
# ("smollm2 llama3-8b" by default; either one alone), EXTRA_ARGS (appended,
# so they win: e.g. "--sizes 256 --reps 1" for a quick check).
# llama3-8b needs ~21 GB of memory at its peak (the model's 4.5 GB, the
# sources' and the targets' weights side by side, ~3 GB of KV).
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD_DIR="${BUILD_DIR:-build}"
OUT="${1:-out/bench_transform}"
MODELS="${MODELS:-smollm2 llama3-8b}"
mkdir -p "$OUT"
cmake -B "$BUILD_DIR" -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build "$BUILD_DIR" --target bench_transform -j"$(nproc)" >/dev/null

echo "# $(date -u '+%Y-%m-%d %H:%M UTC'), $(git rev-parse --short HEAD), $(nproc) CPUs, load: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
for m in $MODELS; do
    case "$m" in
    smollm2) args=(--sizes 1024,4096,16384 --seqs 8 --reps 5 -t 1 --kv f32 --fill prefill) ;;
    llama3-8b) args=(-m synthetic:llama3-8b --sizes 1024,4096,16384 --seqs 8 --reps 3 -t 1 --kv f16 --fill fast) ;;
    *) echo "unknown model '$m' (smollm2, llama3-8b)" >&2; exit 2 ;;
    esac
    # shellcheck disable=SC2206
    args+=(${EXTRA_ARGS:-})
    echo "+ $BUILD_DIR/bench_transform ${args[*]}" >&2
    "$BUILD_DIR/bench_transform" "${args[@]}" >"$OUT/$m.json" 2> >(tee "$OUT/$m.txt" >&2)
done
