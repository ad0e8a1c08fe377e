"""Test-wide settings: one torch thread (tests run beside other jobs on 2 cores) and headless GL."""

import os

os.environ.setdefault("MUJOCO_GL", "egl")

import torch  # noqa: E402

torch.set_num_threads(1)
