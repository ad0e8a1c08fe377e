"""Test-wide settings: one torch thread (tests run beside other jobs on 2 cores) and headless GL; the
`numerics` marker names the tests whose bounds depend on the kernels chosen (.ci/run reruns them under other
kernel choices)."""

import os

os.environ.setdefault("MUJOCO_GL", "egl")

import torch  # noqa: E402

torch.set_num_threads(1)


import pytest  # noqa: E402


@pytest.fixture(scope="session")
def two_seed_straight_run(tmp_path_factory):
    """tests/test_multi_seed.py's tiny two-seed run (seeds 1 and 4) straight to 300 steps, evaluated every 150:
    trained once and only read by the tests of test_multi_seed.py and test_env_workers.py that compare with it."""
    from test_multi_seed import _config
    from uld.train.run import train

    return train(_config(tmp_path_factory.mktemp("two_seed_straight") / "straight", 300, eval_every=150))


def pytest_configure(config):
    config.addinivalue_line("markers", "numerics: floating-point comparisons across kernels; bounds from the "
                                       "numerics (tests/numerics.py), rerun by .ci/run under other kernel choices")
