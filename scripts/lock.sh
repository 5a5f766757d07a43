#!/usr/bin/env bash
# Regenerates the images' lock files from images/*/requirements.in and pyproject.toml's extras.
# tests/unit/test_locks.py checks that each lock resolves against the index and that the dev venv
# (scripts/setup.sh installs it with these locks as constraints) runs the versions the images ship.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${DISTILLERY_VENV:-${DISTILLERY_CACHE:-$HOME/.cache/distillery}/venv}
# python:3.11-slim-bookworm has glibc 2.36: wheels up to manylinux_2_36 run there.
compile() {
  # deepspeed publishes only an sdist whose setup imports torch: its metadata is built against the venv's torch.
  "$VENV/bin/uv" pip compile --quiet --python-platform x86_64-manylinux_2_36 --no-build-isolation-package deepspeed \
    --python "$VENV/bin/python" --custom-compile-command "scripts/lock.sh" "$@"
}
# The trainer's lock first: the others are constrained by it, so packages the images share agree.
compile --python-version 3.11 pyproject.toml images/trainer/requirements.in --extra trainer --extra sources \
  -o images/trainer/requirements.lock
compile --python-version 3.11 pyproject.toml images/labeler/requirements.in --extra sources --extra generate \
  -c images/trainer/requirements.lock -o images/labeler/requirements.lock
compile --python-version 3.11 pyproject.toml images/operator/requirements.in --extra operator \
  -c images/trainer/requirements.lock -o images/operator/requirements.lock
# vllm/vllm-openai runs Python 3.12.
compile --python-version 3.12 images/vllm/requirements.in -o images/vllm/requirements.lock
