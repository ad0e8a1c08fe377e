"""Test-wide settings: one torch thread (tests run beside other jobs on 2 cores) and headless GL; the
`numerics` marker names the tests whose bounds depend on the kernels chosen (.ci/run reruns them under other
kernel choices)."""

import os

os.environ.setdefault("MUJOCO_GL", "egl")

import torch  # noqa: E402

torch.set_num_threads(1)


def pytest_configure(config):
    config.addinivalue_line("markers", "numerics: floating-point comparisons across kernels; bounds from the "
                                       "numerics (tests/numerics.py), rerun by .ci/run under other kernel choices")
