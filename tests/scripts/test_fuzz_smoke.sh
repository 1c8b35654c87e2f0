#!/usr/bin/env bash
# Fuzz smoke test (name says it: it only proves "no crash"): builds every
# libFuzzer harness of tests/fuzz with clang (-fsanitize=fuzzer,address,
# undefined) and runs each for a few seconds on its committed seed corpus,
# the regression inputs of past crashes included. Any crash, leak, timeout
# or failed harness check fails the test. Skipped (77) where clang cannot
# build a libFuzzer program. Long runs: scripts/fuzz.sh (tests/fuzz/README.md).
set -u
SRC="${PROTEUS_SOURCE_DIR:?}"
BUILD="${PROTEUS_BINARY_DIR:?}/fuzz-smoke"
SECONDS_EACH="${FUZZ_SMOKE_SECONDS:-2}"
TARGETS="http_chat http_completions oai_chat oai_completions tokenizer gguf safetensors tokenizer_json config trace bench_client"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

CLANG="${FUZZ_CC:-clang}"
printf 'int LLVMFuzzerTestOneInput(const unsigned char *d, unsigned long n) { return 0; }\n' >"$tmp/probe.c"
if ! command -v "$CLANG" >/dev/null 2>&1 ||
    ! "$CLANG" -fsanitize=fuzzer,address,undefined "$tmp/probe.c" -o "$tmp/probe" >/dev/null 2>&1; then
    echo "skipped: $CLANG cannot build a libFuzzer program"
    exit 77
fi

# The sanitizer build's ctest environment must not reach the harnesses' own runtime.
unset ASAN_OPTIONS UBSAN_OPTIONS LSAN_OPTIONS
if ! cmake -S "$SRC" -B "$BUILD" -DCMAKE_C_COMPILER="$CLANG" -DPROTEUS_FUZZ=ON -DPROTEUS_CUDA=OFF \
    -DCMAKE_BUILD_TYPE=Debug >"$tmp/cmake.log" 2>&1; then
    cat "$tmp/cmake.log" >&2
    echo "FAIL: configure" >&2
    exit 1
fi
if ! cmake --build "$BUILD" -j"${FUZZ_SMOKE_JOBS:-2}" --target fuzz_all >"$tmp/build.log" 2>&1; then
    tail -40 "$tmp/build.log" >&2
    echo "FAIL: build" >&2
    exit 1
fi

fail=0
for t in $TARGETS; do
    dict=()
    case "$t" in
        http_*) dict=("-dict=$SRC/tests/fuzz/http.dict") ;;
        oai_*) dict=("-dict=$SRC/tests/fuzz/oai.dict") ;;
        *) [ -f "$SRC/tests/fuzz/$t.dict" ] && dict=("-dict=$SRC/tests/fuzz/$t.dict") ;;
    esac
    # New inputs go to a scratch directory, never into the committed seeds.
    mkdir -p "$tmp/new/$t" "$tmp/art/$t"
    if "$BUILD/fuzz_$t" "${dict[@]}" -max_total_time="$SECONDS_EACH" -timeout=10 -rss_limit_mb=4096 \
        -artifact_prefix="$tmp/art/$t/" "$tmp/new/$t" "$SRC/tests/fuzz/corpus/$t" >"$tmp/$t.log" 2>&1; then
        echo "fuzz_$t: $(grep -oE 'Done [0-9]+ runs' "$tmp/$t.log")"
    else
        echo "FAIL: fuzz_$t" >&2
        grep -E "ERROR|SUMMARY|check failed|runtime error" "$tmp/$t.log" | head -5 >&2
        for a in "$tmp/art/$t"/*; do [ -f "$a" ] && echo "  input (base64): $(base64 -w0 "$a" | head -c 2000)" >&2; done
        fail=1
    fi
done
exit $fail
