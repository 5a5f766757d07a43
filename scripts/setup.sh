#!/usr/bin/env bash
# Everything Distillery needs on a fresh machine: a virtualenv with the package and
# its extras, and the control-plane binaries built from source (cached by version
# under ~/.cache/distillery, so a second run takes seconds).
set -euo pipefail
cd "$(dirname "$0")/.."
CACHE=${DISTILLERY_CACHE:-$HOME/.cache/distillery}
VENV=${DISTILLERY_VENV:-$CACHE/venv}
PY=${PYTHON:-python3}
log() { printf '[setup %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

command -v go >/dev/null || { log "Go 1.26 or newer is needed to build the control plane"; exit 1; }

# The venv is rebuilt when the dependency list changes.
stamp=$(sha256sum pyproject.toml scripts/setup.sh images/*/requirements.lock | sha256sum | cut -c1-16)
# The images' locks constrain the venv, so the tests run the versions the images ship (tests/unit/test_locks.py).
LOCKS=(-c images/trainer/requirements.lock -c images/operator/requirements.lock)
# llama-cpp-python is published as source only; built once (8 min on 2 cores) for any AVX2 x86-64 CPU, not this
# one's (-march=native), and found by pip in the cache from then on.
LLAMA_CPP_VERSION=0.3.36
WHEELS="$CACHE/wheels"
if ! ls "$WHEELS"/llama_cpp_python-"$LLAMA_CPP_VERSION"-*.whl >/dev/null 2>&1; then
  log "building llama-cpp-python $LLAMA_CPP_VERSION (once; cached in $WHEELS)"
  [ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
  CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DLLAMA_BUILD_TESTS=OFF \
    -DLLAMA_BUILD_EXAMPLES=OFF" \
    CMAKE_BUILD_PARALLEL_LEVEL=$(nproc) "$VENV/bin/pip" wheel -q --no-deps -w "$WHEELS" \
    "llama-cpp-python==$LLAMA_CPP_VERSION"
fi
LOCKS+=(--find-links "$WHEELS")
if [ ! -f "$VENV/.stamp-$stamp" ]; then
  log "python environment at $VENV"
  [ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
  # DeepSpeed builds without isolation below, so the venv itself needs current build tools.
  "$VENV/bin/pip" install -q --upgrade pip setuptools wheel
  "$VENV/bin/pip" install -q "${LOCKS[@]}" torch
  # DeepSpeed's setup imports torch, so it builds against the torch installed above.
  DS_BUILD_OPS=0 "$VENV/bin/pip" install -q "${LOCKS[@]}" --no-build-isolation deepspeed
  "$VENV/bin/pip" install -q "${LOCKS[@]}" -e ".[operator,trainer,generate,dev]"
  rm -f "$VENV"/.stamp-* && touch "$VENV/.stamp-$stamp"
fi
# The venv is shared between checkouts: point its editable install at this one.
"$VENV/bin/pip" install -q --no-deps -e .
log "python environment ready"

"$VENV/bin/distillery" dev-cluster build
log "control-plane binaries ready under $CACHE/bin"
