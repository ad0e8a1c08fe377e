"""What every environment in uld looks like to the trainer and the agents.

An env in uld always takes actions scaled to [-1, 1] (continuous) or an integer index (discrete),
and returns observations as numpy arrays. Each domain module (gym.py, dmc.py, ...) adapts its
library to this one interface and applies its domain's protocol (spec/ULD.md, "Domains").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np


@dataclass(frozen=True)
class EnvSpec:
    """Shapes and protocol facts an agent and a trainer need about an env."""

    name: str
    """The uld name, e.g. "gym:HalfCheetah-v5" or "dmc:cheetah-run"."""
    obs_shape: tuple[int, ...]
    """Shape of one observation: (obs_dim,) for vectors, (C, H, W) for pixel stacks."""
    action_dim: int
    """Continuous: number of action dimensions. Discrete: number of actions."""
    discrete: bool
    """True when actions are integer indices."""
    max_episode_steps: int
    """Agent steps after which an episode is truncated."""
    pixels: bool = False
    """True when observations are uint8 images."""
    frame_history: int = 1
    """Pixel envs: frames per observation, stacked on the channel axis (obs_shape[0] = history x channels)."""


class Env(Protocol):
    """A single environment following the Gymnasium step API, with uld's action convention."""

    spec: EnvSpec

    def reset(self) -> np.ndarray:
        """Start a new episode and return its first observation."""
        ...

    def step(self, action: np.ndarray | int) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        """Apply one agent action; return (obs, reward, terminated, truncated, info)."""
        ...

    def sample_action(self) -> np.ndarray | int:
        """A uniformly random action (in [-1, 1] or an index), drawn from the env's seeded RNG."""
        ...

    def rng_state(self) -> dict[str, Any]:
        """Every random state the env draws from (reset noise, sticky actions, sample_action), as plain
        data (numbers, strings, lists, numpy arrays) that a checkpoint can store without pickling."""
        ...

    def set_rng_state(self, state: dict[str, Any]) -> None:
        """Restore what rng_state returned. Together with replaying an episode's actions from its
        reset, this reproduces the env's state exactly (how checkpoints resume mid-episode)."""
        ...

    def reseed(self, seed: int) -> None:
        """Seed every random state anew, as if the env had been made with ``seed`` (the next reset
        starts from it). Evaluations reseed before each one, from the run's seed and the step."""
        ...

    def render(self) -> np.ndarray:
        """An RGB frame (H, W, 3) uint8 of the current state, for videos."""
        ...

    def close(self) -> None: ...
