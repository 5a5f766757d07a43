#!/usr/bin/env bash
# The main job: a local real control plane with simulated GPU node pools, the
# operator, and a sample Distillation driven to Succeeded.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec "${DISTILLERY_VENV:-${DISTILLERY_CACHE:-$HOME/.cache/distillery}/venv}/bin/distillery" demo "$@"
