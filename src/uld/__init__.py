"""uld: deep reinforcement learning with model-based representations (ULD / MR.Q and ALM)."""

from __future__ import annotations

__version__ = "0.1.0"


def load(run_dir):
    """Load the trained agent of a run directory: ``uld.load("runs/uld/dmc_cheetah-run/seed0").act(obs)``."""
    from uld.train.playback import load as _load

    return _load(run_dir)
