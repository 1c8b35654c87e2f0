#!/usr/bin/env bash
# End-to-end: tests/e2e/test_comm_fail.py against `proteus serve` (see that
# file): PROTEUS_COMM_FAIL while serving and during live merges -- clean
# errors for the requests of a failed TP step, the other instances unharmed,
# a new comm world after it, transformations rolled back.
exec bash "$(dirname "$0")/run_e2e.sh" test_comm_fail.py
