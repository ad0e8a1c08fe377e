#!/usr/bin/env bash
# Install uld and its dependencies into the current Python (3.11). torch is pinned first so that pip
# never resolves a different (CUDA) build; mujoco stays below 4.0, which breaks dm_control.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install -q "torch==2.13.0"
python3 -m pip install -q -e ".[dev,video,atari,sweep,report,wandb,export]"
