"""uld: deep reinforcement learning with model-based representations (ULD / MR.Q and ALM).

The library in four names::

    import uld

    run_dir = uld.train(uld.TrainConfig(agent="uld", env="dmc:cheetah-run", small=True))
    policy = uld.load(run_dir)
    env = uld.make_env("dmc:cheetah-run", seed=100, evaluation=True)
    action = policy.act(env.reset())

``import uld`` stays light: torch, the simulators and the training code load on first use.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from uld.errors import UldError

if TYPE_CHECKING:
    import torch

    from uld.envs.base import Env
    from uld.envs.python import EnvFactory
    from uld.train.config import TrainConfig
    from uld.train.playback import TrainedAgent

__version__ = "0.1.0"

__all__ = ["TrainConfig", "UldError", "__version__", "load", "make_env", "train"]


def make_env(name: str | EnvFactory, seed: int, evaluation: bool = False) -> Env:
    """The env called ``name`` (e.g. "gym:HalfCheetah-v5", "dmc:cheetah-run", "atari:Pong"), seeded with
    ``seed``, with uld's conventions: actions in [-1, 1] or integer indices, numpy observations
    (see uld.envs.make_env). ``evaluation`` selects the evaluation env's protocol where it differs."""
    from uld.envs import make_env as _make_env

    return _make_env(name, seed, evaluation)


def load(run_dir: str | Path, device: str | torch.device = "cpu") -> TrainedAgent:
    """The trained agent of a run directory, from its newest complete checkpoint, on ``device``.

    ``uld.load("runs/uld/dmc_cheetah-run/seed0").act(obs)`` is the deterministic policy. Raises
    uld.errors.UldError when the directory holds no run or no checkpoint.
    """
    from uld.train.playback import load as _load

    return _load(run_dir, device=device)


def __getattr__(name: str) -> Any:
    # Imported on first use, like the functions' modules. ``uld.train`` is the package uld/train, which
    # is callable: ``uld.train(config) -> Path`` trains and returns the run directory (uld/train/__init__.py).
    if name == "TrainConfig":
        from uld.train.config import TrainConfig

        return TrainConfig
    if name == "train":
        import uld.train

        return uld.train
    raise AttributeError(f"module 'uld' has no attribute {name!r}")
