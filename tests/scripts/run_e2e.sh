#!/usr/bin/env bash
# Runs one tests/e2e/*.py script against `proteus serve`: run_e2e.sh NAME.py.
# Skipped (77) without the default model or the python openai package. The
# python prints "N passed, N failed" last; a crash before that is one failure.
set -u
SRC="${PROTEUS_SOURCE_DIR:-$(cd "$(dirname "$0")/../.." && pwd)}"
BIN="${PROTEUS_BINARY_DIR:-$SRC/build}/proteus"
MODEL="${PROTEUS_DEFAULT_MODEL:-$HOME/.cache/proteus/models/SmolLM2-135M-Instruct.Q4_1.gguf}"
PY="${PYTHON:-python3}"
if [ ! -f "$MODEL" ]; then echo "SKIP: default model not found at $MODEL"; exit 77; fi
if ! command -v "$PY" >/dev/null 2>&1; then echo "SKIP: $PY not found"; exit 77; fi
if ! "$PY" -c 'import openai' >/dev/null 2>&1; then echo "SKIP: python package openai not installed"; exit 77; fi
if [ ! -x "$BIN" ]; then echo "FAIL: no proteus binary at $BIN"; echo "0 passed, 1 failed"; exit 1; fi
"$PY" -u "$SRC/tests/e2e/$1" "$BIN"
rc=$?
if [ $rc -ne 0 ] && [ $rc -ne 1 ] && [ $rc -ne 77 ]; then echo "0 passed, 1 failed (python exited $rc)"; fi
exit $rc
