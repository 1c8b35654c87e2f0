#!/usr/bin/env bash
# Set-up, then the main job: the OpenAI-compatible server on the default
# model (http://127.0.0.1:8000/v1). Arguments go to `proteus serve`
# (e.g. --port 9000, --config FILE, --api-key KEY); see README: Configuration.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec build/proteus serve -m default "$@"
