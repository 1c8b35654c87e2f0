#!/usr/bin/env bash
# End-to-end: tests/e2e/test_prefix_cache.py against `proteus serve` (see
# that file): cached prefixes through the HTTP API, the same outputs as a
# server without the cache, cache_prompt and cache_salt, the metrics.
exec bash "$(dirname "$0")/run_e2e.sh" test_prefix_cache.py
