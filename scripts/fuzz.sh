#!/usr/bin/env bash
# Builds the libFuzzer harnesses (tests/fuzz) with clang and runs them.
#
#   scripts/fuzz.sh [TARGET|all] [SECONDS]
#
# TARGET is a harness name without its fuzz_ prefix (http_chat,
# http_completions, oai_chat, oai_completions, tokenizer, gguf, safetensors,
# tokenizer_json, config, trace, bench_client) or all (the default); SECONDS
# (default 60) is how long each one runs. One process at a time, each for
# its share. New inputs a run finds go to $FUZZ_BUILD/corpus/TARGET (not the
# committed seeds under tests/fuzz/corpus/TARGET, which it reads); a crash,
# leak or timeout leaves its input in $FUZZ_BUILD/artifacts/TARGET and makes
# the script fail. Environment: FUZZ_BUILD (build directory, default
# build-fuzz), FUZZ_ARGS (more libFuzzer flags, e.g. -runs=10000000),
# FUZZ_JOBS (build parallelism, default 1), CC (default clang).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
TARGET="${1:-all}"
SECONDS_EACH="${2:-60}"
BUILD="${FUZZ_BUILD:-$ROOT/build-fuzz}"
ALL="http_chat http_completions oai_chat oai_completions tokenizer gguf safetensors tokenizer_json config trace bench_client"

if [ "$TARGET" = all ]; then targets="$ALL"; else targets="$TARGET"; fi
for t in $targets; do
    case " $ALL " in *" $t "*) ;; *) echo "fuzz.sh: unknown target '$t' (one of: $ALL)" >&2; exit 2 ;; esac
done

mkdir -p "$BUILD"
cmake -S "$ROOT" -B "$BUILD" -DCMAKE_C_COMPILER="${CC:-clang}" -DPROTEUS_FUZZ=ON -DPROTEUS_CUDA=OFF \
    -DCMAKE_BUILD_TYPE=Debug >"$BUILD/fuzz-cmake.log" 2>&1 || { cat "$BUILD/fuzz-cmake.log" >&2; exit 1; }
build_targets=()
for t in $targets; do build_targets+=("fuzz_$t"); done
cmake --build "$BUILD" -j"${FUZZ_JOBS:-1}" --target "${build_targets[@]}" >"$BUILD/fuzz-build.log" 2>&1 ||
    { tail -40 "$BUILD/fuzz-build.log" >&2; exit 1; }

status=0
for t in $targets; do
    work="$BUILD/corpus/$t" art="$BUILD/artifacts/$t"
    mkdir -p "$work" "$art"
    dict=()
    [ -f "$ROOT/tests/fuzz/$t.dict" ] && dict=("-dict=$ROOT/tests/fuzz/$t.dict")
    case "$t" in http_*) [ -f "$ROOT/tests/fuzz/http.dict" ] && dict=("-dict=$ROOT/tests/fuzz/http.dict") ;; esac
    case "$t" in oai_*) [ -f "$ROOT/tests/fuzz/oai.dict" ] && dict=("-dict=$ROOT/tests/fuzz/oai.dict") ;; esac
    echo "== fuzz_$t for ${SECONDS_EACH}s"
    # -timeout: one input taking over 10 s is a hang; -rss_limit_mb: ASan's overhead included.
    # shellcheck disable=SC2086
    if ! "$BUILD/fuzz_$t" "${dict[@]}" -max_total_time="$SECONDS_EACH" -timeout=10 -rss_limit_mb=4096 \
        -print_final_stats=1 -artifact_prefix="$art/" ${FUZZ_ARGS:-} "$work" "$ROOT/tests/fuzz/corpus/$t" \
        >"$BUILD/fuzz_$t.log" 2>&1; then
        echo "fuzz_$t FAILED: see $BUILD/fuzz_$t.log and $art/" >&2
        tail -40 "$BUILD/fuzz_$t.log" >&2
        status=1
    fi
    grep -E "^(stat::number_of_executed_units|stat::peak_rss_mb)|Done [0-9]+ runs|#[0-9]+ *DONE" "$BUILD/fuzz_$t.log" || true
done
exit $status
