"""What every environment in uld looks like to the trainer and the agents.

An env in uld always takes actions scaled to [-1, 1] (continuous) or an integer index (discrete),
and returns observations as numpy arrays. Each domain module (gym.py, dmc.py, ...) adapts its
library to this one interface and applies its domain's protocol (docs/algorithm.md, Protocols).
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


UNBOUNDED = 1e6
"""Bounds at or beyond this magnitude mean "no bound" (dm_control's LQR declares ±1e10)."""

RENDER_HELP = (
    "set MUJOCO_GL=egl (needs libEGL, e.g. apt install libegl1) or MUJOCO_GL=osmesa "
    "(needs apt install libosmesa6) before starting Python"
)
"""What to do when MuJoCo cannot open an OpenGL context (headless machines)."""


def unit_to_bounds(low: np.ndarray, high: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """Scale and offset of the affine map from [-1, 1] onto [low, high]: ``a * scale + offset``.

    -1 maps to ``low``, 1 to ``high``, 0 to the midpoint. A dimension whose bound is infinite or at
    least ``UNBOUNDED`` in magnitude passes through unchanged. Returns None when the whole map is the
    identity, so callers can skip it.
    """
    low = np.asarray(low, dtype=np.float64)
    high = np.asarray(high, dtype=np.float64)
    unbounded = ~(np.isfinite(low) & np.isfinite(high)) | (np.abs(low) >= UNBOUNDED) | (np.abs(high) >= UNBOUNDED)
    low, high = np.where(unbounded, -1.0, low), np.where(unbounded, 1.0, high)
    scale, offset = (high - low) / 2.0, (high + low) / 2.0
    if np.all(scale == 1.0) and np.all(offset == 0.0):
        return None
    return scale, offset


class FrameHistory:
    """The last ``length`` frames of an episode as one channel-first uint8 stack, oldest frame first.

    A (C, H, W) frame pushed onto a history of length h gives an (h * C, H, W) observation. At reset
    the first frame fills every position (docs/algorithm.md, DMC visual and Atari, first frame repeated at
    reset), which is also what uld.replay.frames.FrameStackBuffer rebuilds from stored frames.
    """

    def __init__(self, length: int, frame_shape: tuple[int, int, int]) -> None:
        self._frames = np.zeros((length, *frame_shape), dtype=np.uint8)

    def reset(self, frame: np.ndarray) -> np.ndarray:
        """Start a new episode with ``frame``; return the stack of ``length`` copies of it."""
        self._frames[:] = frame
        return self._stack()

    def push(self, frame: np.ndarray) -> np.ndarray:
        """Drop the oldest frame, append ``frame``, return the new stack."""
        self._frames[:-1] = self._frames[1:]
        self._frames[-1] = frame
        return self._stack()

    def _stack(self) -> np.ndarray:
        # A copy: the caller keeps the observation while the history moves on.
        return self._frames.reshape(-1, *self._frames.shape[2:]).copy()


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
