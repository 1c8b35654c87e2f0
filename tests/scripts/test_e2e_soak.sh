#!/usr/bin/env bash
# End-to-end: a short soak (tests/e2e/soak.py, ~35 s of mixed load with layout
# changes) against `proteus serve`; `python3 tests/e2e/soak.py build/proteus
# --seconds 600` runs a long one by hand.
exec bash "$(dirname "$0")/run_e2e.sh" soak.py
