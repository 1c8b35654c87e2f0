#!/usr/bin/env bash
# Set-up, then the whole test suite: once on the Release build, once on the
# AddressSanitizer + UndefinedBehaviorSanitizer build. GPU tests are skipped
# (reported as such) where no GPU is present.
set -euo pipefail
cd "$(dirname "$0")/.."
SANITIZE=1 WITH_TEST_DEPS=1 scripts/setup.sh
export PROTEUS_DEFAULT_MODEL="${PROTEUS_MODEL_DIR:-$HOME/.cache/proteus/models}/SmolLM2-135M-Instruct.Q4_1.gguf"
JOBS="${JOBS:-$(nproc)}"
status=0
echo "== Release build"
ctest --test-dir build --output-on-failure -j "$JOBS" || status=1
echo "== ASan + UBSan build"
# protect_shadow_gap=0: on a machine with a GPU, the CUDA driver maps memory
# where ASan's shadow gap would be (harmless without one).
export ASAN_OPTIONS="detect_leaks=1:abort_on_error=1:protect_shadow_gap=0"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
ctest --test-dir build-asan --output-on-failure -j "$JOBS" || status=1
exit $status
