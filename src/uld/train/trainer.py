"""The training loop: collect with the agent, store, update, evaluate. It knows nothing about losses."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch

from uld.envs.base import Env
from uld.errors import UldError
from uld.replay.buffer import ReplayBuffer
from uld.train.logger import Logger


class Agent(Protocol):
    def act(self, obs: np.ndarray, explore: bool) -> np.ndarray | int: ...
    def update(self, buffer: ReplayBuffer) -> dict[str, torch.Tensor]: ...


def evaluate(agent: Agent, env: Env, episodes: int) -> list[float]:
    """Undiscounted returns of `episodes` deterministic-policy episodes (spec: Evaluation)."""
    returns = []
    for _ in range(episodes):
        obs, done, total = env.reset(), False, 0.0
        while not done:
            obs, reward, terminated, truncated, _ = env.step(agent.act(obs, explore=False))
            total += reward
            done = terminated or truncated
        returns.append(total)
    return returns


@dataclass
class TrainerState:
    """Where the loop stands: enough, with the parts' own states, to continue a run."""

    step: int = 0
    episode: int = 0
    episode_return: float = 0.0
    episode_length: int = 0
    wall_seconds: float = 0.0


class Trainer:
    """Runs an agent in an env for a number of agent steps, evaluating on a separate env.

    Args:
        env, eval_env: training and evaluation envs (the latter seeded with seed + 100).
        agent: anything with act(obs, explore) and update(buffer).
        buffer: the replay buffer the agent learns from.
        logger: where evaluations, episode returns and training metrics go.
        random_steps: uniformly random actions before the agent acts and trains.
        eval_every, eval_episodes: evaluation cadence (first at step 0, last at the final step).
        log_every: training metrics go to TensorBoard every this many steps.
    """

    def __init__(self, env: Env, eval_env: Env, agent: Agent, buffer: ReplayBuffer, logger: Logger, *,
                 random_steps: int, eval_every: int, eval_episodes: int, log_every: int = 1000):
        self.env, self.eval_env, self.agent, self.buffer, self.logger = env, eval_env, agent, buffer, logger
        self.random_steps, self.eval_every, self.eval_episodes = random_steps, eval_every, eval_episodes
        self.log_every = log_every
        self.state = TrainerState()
        self.obs: np.ndarray | None = None
        self._metrics: dict[str, torch.Tensor] = {}

    def _store_action(self, action: np.ndarray | int) -> np.ndarray:
        """Actions enter the buffer scaled to [-1, 1], or one-hot for discrete envs (spec: Replay buffer)."""
        if self.env.spec.discrete:
            one_hot = np.zeros(self.env.spec.action_dim, dtype=np.float32)
            one_hot[int(action)] = 1.0
            return one_hot
        return action

    def _evaluate(self) -> None:
        returns = evaluate(self.agent, self.eval_env, self.eval_episodes)
        self.logger.evaluation(self.state.step, returns, self.state.wall_seconds + self._elapsed())

    def _elapsed(self) -> float:
        return time.perf_counter() - self._started

    def train(self, total_steps: int) -> None:
        """Run until `total_steps` agent steps have been taken, evaluating on the schedule."""
        s = self.state
        self._started = time.perf_counter()
        if s.step == 0:
            self._evaluate()
        if self.obs is None:
            self.obs = self.env.reset()
        while s.step < total_steps:
            if s.step < self.random_steps:
                action = self.env.sample_action()
            else:
                action = self.agent.act(self.obs, explore=True)
            next_obs, reward, terminated, truncated, _ = self.env.step(action)
            self.buffer.add(self.obs, self._store_action(action), reward, next_obs, terminated, truncated)
            self.obs = next_obs
            s.episode_return += reward
            s.episode_length += 1
            s.step += 1

            if s.step > self.random_steps and self.buffer.can_sample:
                # Keep the latest value of every metric: encoder metrics only come with bursts.
                self._metrics.update(self.agent.update(self.buffer))
                if s.step % self.log_every == 0:
                    self._log_metrics(self._metrics)

            if terminated or truncated:
                self.logger.episode(s.step, s.episode_return, s.episode_length)
                s.episode += 1
                s.episode_return, s.episode_length = 0.0, 0
                self.obs = self.env.reset()

            self.logger.step()
            if s.step % self.eval_every == 0 or s.step == total_steps:
                self._evaluate()
        s.wall_seconds += self._elapsed()

    def _log_metrics(self, metrics: dict[str, torch.Tensor]) -> None:
        values = {name: float(value) for name, value in metrics.items()}
        bad = [name for name, value in values.items() if not math.isfinite(value)]
        if bad:
            raise UldError(f"training diverged at step {self.state.step}: {', '.join(bad)} became non-finite; "
                           "lower the learning rates or check the environment's rewards")
        values["train/reward_scale"] = float(getattr(self.agent, "reward_scale", math.nan))
        values["train/buffer_transitions"] = len(self.buffer)
        self.logger.scalars(self.state.step, values)
