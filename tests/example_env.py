"""A user's own Gymnasium env, as the README shows it: importing this module registers ``Corridor-v0``,
and ``uld train --env gym:example_env:Corridor-v0`` imports it and trains on it."""

from __future__ import annotations

import gymnasium
import numpy as np
from gymnasium import spaces


class Corridor(gymnasium.Env):
    """Walk along a line towards the goal at +1: the reward is minus the distance to it.

    Actions in [-0.2, 0.2] move the walker; 50 steps an episode; the start is uniform in [-1, 0].
    """

    def __init__(self) -> None:
        self.observation_space = spaces.Box(-np.inf, np.inf, (1,), np.float32)
        self.action_space = spaces.Box(-0.2, 0.2, (1,), np.float32)
        self.position = 0.0

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self.position = float(self.np_random.uniform(-1.0, 0.0))
        return np.array([self.position], dtype=np.float32), {}

    def step(self, action):
        self.position += float(np.clip(action[0], -0.2, 0.2))
        return np.array([self.position], dtype=np.float32), -abs(self.position - 1.0), False, False, {}


def make_corridor(seed: int, evaluation: bool) -> gymnasium.Env:  # noqa: ARG001 - one env for both
    """An env factory, as train() takes from Python: a Corridor with a 50-step time limit."""
    return gymnasium.wrappers.TimeLimit(Corridor(), max_episode_steps=50)


if "Corridor-v0" not in gymnasium.registry:
    gymnasium.register(id="Corridor-v0", entry_point=Corridor, max_episode_steps=50)
