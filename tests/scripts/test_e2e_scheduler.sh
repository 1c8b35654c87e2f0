#!/usr/bin/env bash
# End-to-end: tests/e2e/test_scheduler.py against `proteus serve --policy dynamic`
# (see that file): a long request held, a merge, the same tokens as a static
# TP2 server, a split back after the hysteresis.
exec bash "$(dirname "$0")/run_e2e.sh" test_scheduler.py
