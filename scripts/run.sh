#!/usr/bin/env bash
# Set-up, then the main job on the default model. Arguments go to
# `proteus generate`; without any, it answers one chat message.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
if (($# == 0)); then
    set -- --chat "What is the capital of France? Answer in one sentence." -n 64
fi
exec build/proteus generate -m default "$@"
