#!/usr/bin/env bash
# End-to-end: tests/e2e/test_layout.py against `proteus serve` (see that file).
exec bash "$(dirname "$0")/run_e2e.sh" test_layout.py
