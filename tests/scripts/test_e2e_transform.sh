#!/usr/bin/env bash
# End-to-end: tests/e2e/test_transform.py against `proteus serve` (see that file):
# live layout changes under load, their refusals, failures and shutdown.
exec bash "$(dirname "$0")/run_e2e.sh" test_transform.py
