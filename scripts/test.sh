#!/usr/bin/env bash
# Set up, lint and type-check, then run the default test suite (slow learning checks are excluded; add
# -m slow for them).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
python3 -m ruff check src tests
python3 -m mypy
export MUJOCO_GL="${MUJOCO_GL:-egl}" OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
python3 -m pytest -q -m "not slow" --timeout 900 "$@"
