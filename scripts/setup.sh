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
stamp=$(sha256sum pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)
if [ ! -f "$VENV/.stamp-$stamp" ]; then
  log "python environment at $VENV"
  [ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
  # DeepSpeed builds without isolation below, so the venv itself needs current build tools.
  "$VENV/bin/pip" install -q --upgrade pip setuptools wheel
  "$VENV/bin/pip" install -q torch==2.15.0
  # DeepSpeed's setup imports torch, so it builds against the torch installed above.
  DS_BUILD_OPS=0 "$VENV/bin/pip" install -q --no-build-isolation deepspeed==0.19.8
  "$VENV/bin/pip" install -q -e ".[operator,trainer,dev]"
  rm -f "$VENV"/.stamp-* && touch "$VENV/.stamp-$stamp"
fi
# The venv is shared between checkouts: point its editable install at this one.
"$VENV/bin/pip" install -q --no-deps -e .
log "python environment ready"

"$VENV/bin/distillery" dev-cluster build
log "control-plane binaries ready under $CACHE/bin"
