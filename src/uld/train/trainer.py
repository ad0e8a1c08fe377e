"""The training loop: collect with the agent, store, update, evaluate. It knows nothing about losses."""

from __future__ import annotations

import dataclasses
import math
import random
import time
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch

from uld.envs.base import Env
from uld.envs.workers import reset_all, step_all
from uld.errors import UldError
from uld.replay.buffer import ReplayBuffer
from uld.train.checkpoint import Checkpointer
from uld.train.logger import Logger


class Agent(Protocol):
    def act(self, obs: np.ndarray, explore: bool) -> np.ndarray | int: ...
    def update(self, buffer: ReplayBuffer) -> dict[str, torch.Tensor]: ...


def evaluate(agent: Agent, env: Env, episodes: int, stop=None) -> list[float] | None:
    """Undiscounted returns of `episodes` deterministic-policy episodes (docs/algorithm.md, Protocols).

    `stop` is called before every env step; when it returns True the evaluation is abandoned and
    None returned, so that a stop request waits one env step, not a whole evaluation.
    """
    returns = []
    for _ in range(episodes):
        obs, done, total = env.reset(), False, 0.0
        while not done:
            if stop is not None and stop():
                return None
            obs, reward, terminated, truncated, _ = env.step(agent.act(obs, explore=False))
            total += reward
            done = terminated or truncated
        returns.append(total)
    return returns


def evaluation_seed(seed: int, step: int) -> int:
    """The evaluation env's seed for the evaluation at `step`: a function of (seed, step) only, so an
    evaluation never shifts the randomness of a later one (a run extended after its final evaluation
    evaluates as a straight run does)."""
    return int(np.random.SeedSequence([seed, step]).generate_state(1)[0])


@dataclass
class TrainerState:
    """Where the loop stands: enough, with the parts' own states, to continue a run."""

    step: int = 0
    episode: int = 0
    episode_return: float = 0.0
    episode_length: int = 0
    wall_seconds: float = 0.0
    evaluation_due: bool = False
    """The evaluation of this step was abandoned by a stop request; a resumed run does it first."""


class RunInterrupted(UldError):
    """SIGINT or SIGTERM arrived; a checkpoint was saved. exit_code follows the shell convention."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


class Trainer:
    """Runs an agent in an env for a number of agent steps, evaluating on a separate env.

    Args:
        env, eval_env: training and evaluation envs (the latter seeded with seed + 100).
        agent: anything with act(obs, explore), update(buffer) and state_dict/load_state_dict.
        buffer: the replay buffer the agent learns from.
        logger: where evaluations, episode returns and training metrics go.
        random_steps: uniformly random actions before the agent acts and trains.
        eval_every, eval_episodes: evaluation cadence (first at step 0, last at the final step).
        log_every: training metrics go to TensorBoard every this many steps.
        checkpointer: where checkpoints go (None: no checkpoints).
        checkpoint_seconds: wall-clock seconds between checkpoints (one is also written at the end).
        checkpoint_every: also checkpoint every this many agent steps (None: by time only).
        eval_seed: the evaluation env is reseeded before each evaluation with evaluation_seed(eval_seed,
            step) (None: it continues its own random state).
    """

    def __init__(self, env: Env, eval_env: Env, agent: Agent, buffer: ReplayBuffer, logger: Logger, *,
                 random_steps: int, eval_every: int, eval_episodes: int, log_every: int = 1000,
                 checkpointer: Checkpointer | None = None, checkpoint_seconds: float = 600.0,
                 checkpoint_every: int | None = None, eval_seed: int | None = None):
        self.env, self.eval_env, self.agent, self.buffer, self.logger = env, eval_env, agent, buffer, logger
        self.random_steps, self.eval_every, self.eval_episodes = random_steps, eval_every, eval_episodes
        self.log_every, self.eval_seed = log_every, eval_seed
        self.checkpointer, self.checkpoint_seconds, self.checkpoint_every = checkpointer, checkpoint_seconds, checkpoint_every
        self.state = TrainerState(evaluation_due=True)  # a new run evaluates at step 0 first
        self.obs: np.ndarray | None = None
        self.stop_signal: int | None = None  # set by a signal handler; the loop checkpoints and stops
        self._metrics: dict[str, torch.Tensor] = {}
        # The episode in progress is checkpointed as the env's RNG state at its reset plus its actions:
        # replaying them reproduces the env's state exactly, for any deterministic simulator.
        self._episode_start_rng: dict = {}
        self._episode_actions: list = []

    def _store_action(self, action: np.ndarray | int) -> np.ndarray:
        """Actions enter the buffer scaled to [-1, 1], or one-hot for discrete envs (docs/algorithm.md, Replay)."""
        if self.env.spec.discrete:
            one_hot = np.zeros(self.env.spec.action_dim, dtype=np.float32)
            one_hot[int(action)] = 1.0
            return one_hot
        return action

    def _reset(self) -> None:
        start_episodes([self])

    def _evaluate(self) -> None:
        """Evaluate at this step; a stop request abandons it, leaving state.evaluation_due set."""
        self._check_finite(self._metrics)
        self.state.evaluation_due = True
        stop = lambda: self.stop_signal is not None  # noqa: E731
        if self.eval_seed is None:
            returns = evaluate(self.agent, self.eval_env, self.eval_episodes, stop=stop)
        else:
            # The env and torch (ALM samples its latent when acting) draw from (seed, step) alone; the
            # training's torch generator is left as it was.
            seed = evaluation_seed(self.eval_seed, self.state.step)
            self.eval_env.reseed(seed)
            devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
            with torch.random.fork_rng(devices=devices):
                torch.manual_seed(seed)
                returns = evaluate(self.agent, self.eval_env, self.eval_episodes, stop=stop)
        if returns is not None:
            self.logger.evaluation(self.state.step, returns, self._wall_seconds())
            self.state.evaluation_due = False

    def _wall_seconds(self) -> float:
        return self.state.wall_seconds + time.perf_counter() - self._started

    def train(self, total_steps: int) -> None:
        """Run until `total_steps` agent steps have been taken, evaluating on the schedule."""
        s = self.state
        self._started = time.perf_counter()
        self._last_checkpoint = time.perf_counter()
        if self.obs is None:
            self._reset()
        if s.evaluation_due:
            self._evaluate()
            if s.step > 0 or self.stop_signal is not None:
                self._maybe_checkpoint(final=s.step >= total_steps)
        while s.step < total_steps:
            if s.step < self.random_steps:
                action = self.env.sample_action()
            else:
                action = self.agent.act(self.obs, explore=True)
                # Before the env sees it: a simulator fed NaN fails with its own error, or silently.
                if not np.all(np.isfinite(action)):
                    self._check_finite(self._metrics)
                    self._diverged(["the policy's action"])
            next_obs, reward, terminated, truncated, _ = self.env.step(action)
            self._episode_actions.append(action)
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
                self._reset()

            self.logger.step()
            if s.step % self.eval_every == 0 or s.step == total_steps:
                self._evaluate()
            self._maybe_checkpoint(final=s.step == total_steps)

    def _maybe_checkpoint(self, final: bool) -> None:
        if self.checkpointer is None:
            if self.stop_signal is not None:
                raise RunInterrupted(f"interrupted at step {self.state.step}", 128 + self.stop_signal)
            return
        due = (time.perf_counter() - self._last_checkpoint >= self.checkpoint_seconds
               or (self.checkpoint_every and self.state.step % self.checkpoint_every == 0))
        if not (final or due or self.stop_signal is not None):
            return
        self._check_finite(self._metrics)
        self.checkpointer.save(self.state_dict(), self.state.step)
        self._last_checkpoint = time.perf_counter()
        if self.stop_signal is None or (final and not self.state.evaluation_due):
            return  # a stop request that arrives once the run is complete has nothing left to stop
        if self.state.evaluation_due:
            raise RunInterrupted(
                f"interrupted during the evaluation at step {self.state.step}; a checkpoint was saved: run the same "
                f"command again, or uld train --resume {self.logger.run_dir}, to evaluate and continue",
                128 + self.stop_signal)
        raise RunInterrupted(
            f"interrupted at step {self.state.step}; a checkpoint was saved: run the same command again, "
            f"or uld train --resume {self.logger.run_dir}, to continue", 128 + self.stop_signal)

    # ---- checkpoint state ---------------------------------------------------------------------

    def state_dict(self) -> dict:
        """The whole run: loop counters, agent, replay, every RNG, the episode in progress, log offsets."""
        trainer = dataclasses.asdict(self.state)
        trainer["wall_seconds"] = self._wall_seconds()
        return {
            "trainer": trainer,
            "agent": self.agent.state_dict(),
            "buffer": self.buffer.state_dict(),
            "metrics": dict(self._metrics),
            "rng": {"python": random.getstate(), "numpy": list(np.random.get_state()),
                    "torch": torch.get_rng_state(),
                    "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []},
            "env": {"episode_start": self._episode_start_rng, "current": self.env.rng_state(),
                    "actions": [np.asarray(a) for a in self._episode_actions]},
            "eval_env": self.eval_env.rng_state(),
            "logger": self.logger.state_dict(),
        }

    def load_state_dict(self, state: dict, rebuild_episode: bool = True) -> None:
        """Restore the whole run; rebuild_episode=False leaves the envs to `rebuild_episodes` (several seeds at once)."""
        self.state = TrainerState(**state["trainer"])
        self.agent.load_state_dict(state["agent"])
        self.buffer.load_state_dict(state["buffer"])
        self._metrics = dict(state["metrics"])
        rng = state["rng"]
        random.setstate(_as_tuple(rng["python"]))
        kind, keys, pos, has_gauss, cached = rng["numpy"]
        np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
        torch.set_rng_state(rng["torch"])
        if rng["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])
        self.logger.load_state_dict(state["logger"])
        if rebuild_episode:
            rebuild_episodes([self], [state])

    def _check_finite(self, metrics: dict[str, torch.Tensor]) -> dict[str, float]:
        values = {name: float(value) for name, value in metrics.items()}
        bad = [name for name, value in values.items() if not math.isfinite(value)]
        if bad:
            self._diverged(bad)
        return values

    def _diverged(self, names: list[str]) -> None:
        steps = self.checkpointer.complete_steps() if self.checkpointer is not None else []
        kept = f"the checkpoint of step {steps[0]} is kept" if steps else "no checkpoint was written"
        raise UldError(f"training diverged at step {self.state.step}: {', '.join(names)} became non-finite; "
                       f"{kept}; lower the learning rates or check the env's rewards")

    def _log_metrics(self, metrics: dict[str, torch.Tensor]) -> None:
        values = self._check_finite(metrics)
        values["train/reward_scale"] = float(getattr(self.agent, "reward_scale", math.nan))
        values["train/buffer_transitions"] = len(self.buffer)
        self.logger.scalars(self.state.step, values)


def _as_tuple(value):
    """Python's random state, which a checkpoint stores with lists, back to nested tuples."""
    return tuple(_as_tuple(v) for v in value) if isinstance(value, (list, tuple)) else value


def start_episodes(trainers: list[Trainer]) -> None:
    """Start a new episode in each trainer's env, remembering the RNG state it starts from (a checkpoint
    rebuilds an episode from it); envs in worker processes (uld/envs/workers.py) reset at the same time."""
    for trainer in trainers:
        trainer._episode_start_rng = trainer.env.rng_state()
        trainer._episode_actions = []
    for trainer, obs in zip(trainers, reset_all([trainer.env for trainer in trainers])):
        trainer.obs = obs


def rebuild_episodes(trainers: list[Trainer], states: list[dict]) -> None:
    """Rebuild each trainer's episode in progress from its checkpoint: reset its env from the RNG state the
    episode started with, replay the episode's actions, then restore the envs' current RNG states.

    The trainers' envs replay in lock-step, so envs in worker processes (uld/envs/workers.py) replay at
    the same time: a resume of S pixel envs costs one episode's replay, not S of them.
    """
    episodes = [state["env"] for state in states]
    for trainer, episode in zip(trainers, episodes):
        trainer.env.set_rng_state(episode["episode_start"])
        trainer._episode_start_rng = episode["episode_start"]
        trainer._episode_actions = []
    for trainer, obs in zip(trainers, reset_all([trainer.env for trainer in trainers])):
        trainer.obs = obs
    actions = [[int(a) if t.env.spec.discrete else a for a in (np.asarray(action) for action in e["actions"])]
               for t, e in zip(trainers, episodes)]
    for i in range(max((len(a) for a in actions), default=0)):
        active = [k for k, seed_actions in enumerate(actions) if i < len(seed_actions)]
        results = step_all([trainers[k].env for k in active], [actions[k][i] for k in active])
        for k, result in zip(active, results):
            trainers[k].obs = result[0]
            trainers[k]._episode_actions.append(actions[k][i])
    for trainer, episode, state in zip(trainers, episodes, states):
        trainer.env.set_rng_state(episode["current"])
        trainer.eval_env.set_rng_state(state["eval_env"])
