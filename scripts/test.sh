#!/usr/bin/env bash
# The test suite: unit tests, workloads on CPU with tiny models, and the operator
# against a real local control plane (brought up and torn down by the tests).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
VENV=${DISTILLERY_VENV:-${DISTILLERY_CACHE:-$HOME/.cache/distillery}/venv}
export DS_ACCELERATOR=cpu
"$VENV/bin/ruff" check operator tests
"$VENV/bin/mypy" --cache-dir "${DISTILLERY_CACHE:-$HOME/.cache/distillery}/mypy"
# The whole suite (no arguments) names its slowest tests, so CI's log says where its time goes.
if [ $# -eq 0 ]; then
  "$VENV/bin/python" -m pytest -p no:cacheprovider --durations=30
else
  "$VENV/bin/python" -m pytest -p no:cacheprovider "$@"
fi
# The whole suite (no arguments) ends with the tier pyproject.toml deselects: the images' lock files resolved
# against the package index.
if [ $# -eq 0 ]; then
  "$VENV/bin/python" -m pytest -p no:cacheprovider -m index
fi
