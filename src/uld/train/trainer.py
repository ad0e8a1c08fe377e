"""The training loop of S >= 1 seeds: act, step, store, update, evaluate, checkpoint. It knows nothing about losses.

A run of one seed is the loop with S = 1. Each seed has its envs, replay, logger, checkpoints and episode
bookkeeping (`SeedRun`); the seeds' agents are one `Seeds` object (train/population.py), which acts for
every seed at once, whether the agent batches the seeds itself or the run holds one instance per seed.
The envs step in lock-step, in worker processes where that pays (uld/envs/workers.py), and their episodes
end independently. Divergence checks, logging, evaluation, checkpoint cadence and stop requests each live
in one method here.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from uld.envs.base import Env
from uld.envs.workers import reset_all, step_all
from uld.errors import UldError
from uld.replay.buffer import ReplayBuffer
from uld.train.checkpoint import Checkpointer
from uld.train.logger import Logger
from uld.train.population import PerSeed, Seeds, rng_state


def evaluation_seed(seed: int, step: int) -> int:
    """The evaluation env's seed for the evaluation at `step`: a function of (seed, step) only, so an
    evaluation never shifts the randomness of a later one (a run extended after its final evaluation
    evaluates as a straight run does)."""
    return int(np.random.SeedSequence([seed, step]).generate_state(1)[0])


def evaluate_seeds(agents: Seeds, envs: list[Env], episodes: int,
                   stop: Callable[[], bool] | None = None) -> list[list[float]] | None:
    """Undiscounted returns of `episodes` deterministic-policy episodes on each seed's env (docs/algorithm.md,
    Protocols), the envs in lock-step; a seed whose episodes are done waits for the others. `stop` is called
    before every lock-step; when it returns True the evaluation is abandoned and None returned, so that a stop
    request waits one env step, not a whole evaluation."""
    returns: list[list[float]] = [[] for _ in envs]
    obs = reset_all(envs)
    totals = [0.0] * len(envs)
    while any(len(r) < episodes for r in returns):
        if stop is not None and stop():
            return None
        active = [k for k in range(len(envs)) if len(returns[k]) < episodes]
        actions = agents.act(obs, explore=False, seeds=active)
        restart = []
        for k, (next_obs, reward, terminated, truncated, _) in zip(active, step_all([envs[k] for k in active], actions)):
            obs[k] = next_obs
            totals[k] += reward
            if terminated or truncated:
                returns[k].append(totals[k])
                totals[k] = 0.0
                if len(returns[k]) < episodes:
                    restart.append(k)
        for k, first_obs in zip(restart, reset_all([envs[k] for k in restart])):
            obs[k] = first_obs
    return returns


def evaluate(agent, env: Env, episodes: int, stop: Callable[[], bool] | None = None) -> list[float] | None:
    """evaluate_seeds for one agent (act(obs, explore)) on one env."""
    returns = evaluate_seeds(PerSeed([agent], [rng_state()]), [env], episodes, stop)
    return None if returns is None else returns[0]


@dataclass
class TrainerState:
    """Where one seed's loop stands: enough, with the parts' own states, to continue a run."""

    step: int = 0
    episode: int = 0
    episode_return: float = 0.0
    episode_length: int = 0
    wall_seconds: float = 0.0
    evaluation_due: bool = False
    """The evaluation of this step was abandoned by a stop request; a resumed run does it first."""


@dataclass(eq=False)
class SeedRun:
    """One seed's part of a run: its envs (the evaluation env is reseeded before each evaluation with
    evaluation_seed(eval_seed, step)), its replay, logger and checkpoints (None: none), and its episode."""

    seed: int
    env: Env
    eval_env: Env
    buffer: ReplayBuffer
    logger: Logger
    eval_seed: int
    checkpointer: Checkpointer | None = None
    checkpoint_tags: dict = field(default_factory=dict)
    """Entries every checkpoint of this seed carries besides the run's state (the seeds trained with it)."""
    state: TrainerState = field(default_factory=lambda: TrainerState(evaluation_due=True))  # step 0 evaluates
    obs: np.ndarray | None = None
    # The episode in progress is checkpointed as the env's RNG state at its reset plus its actions:
    # replaying them reproduces the env's state exactly, for any deterministic simulator.
    episode_start_rng: dict = field(default_factory=dict)
    episode_actions: list = field(default_factory=list)

    def store_action(self, action: np.ndarray | int) -> np.ndarray:
        """Actions enter the buffer scaled to [-1, 1], or one-hot for discrete envs (docs/algorithm.md, Replay)."""
        if self.env.spec.discrete:
            one_hot = np.zeros(self.env.spec.action_dim, dtype=np.float32)
            one_hot[int(action)] = 1.0
            return one_hot
        return action


class RunInterrupted(UldError):
    """SIGINT or SIGTERM arrived; a checkpoint was saved. exit_code follows the shell convention."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


class Trainer:
    """Trains S seeds' agents in their envs for a number of agent steps, evaluating on separate envs.

    Args:
        seeds: each seed's envs, replay, logger and checkpoints.
        agents: the seeds' agents (train/population.py).
        random_steps: uniformly random actions before the agents act and train.
        eval_every, eval_episodes: evaluation cadence (first at step 0, last at the final step).
        log_every: training metrics go to TensorBoard every this many steps.
        checkpoint_seconds: wall-clock seconds between checkpoints (one is also written at the end).
        checkpoint_every: also checkpoint every this many agent steps (None: by time only).
        resume_hint: the directory that `uld train --resume` continues, named when a stop request ends the run.
    """

    def __init__(self, seeds: list[SeedRun], agents: Seeds, *, random_steps: int, eval_every: int,
                 eval_episodes: int, log_every: int = 1000, checkpoint_seconds: float = 600.0,
                 checkpoint_every: int | None = None, resume_hint: str = ""):
        self.seeds, self.agents = seeds, agents
        self.random_steps, self.eval_every, self.eval_episodes = random_steps, eval_every, eval_episodes
        self.log_every, self.checkpoint_seconds, self.checkpoint_every = log_every, checkpoint_seconds, checkpoint_every
        self.resume_hint = resume_hint
        self.stop_signal: int | None = None  # set by a signal handler; the loop checkpoints and stops

    @property
    def step(self) -> int:
        return self.seeds[0].state.step

    def train(self, total_steps: int) -> None:
        """Run every seed until `total_steps` agent steps have been taken, evaluating on the schedule."""
        self._started = self._last_checkpoint = time.perf_counter()
        start_episodes([seed for seed in self.seeds if seed.obs is None])
        if any(seed.state.evaluation_due for seed in self.seeds):  # step 0's, or one a stop request abandoned
            self._evaluate()
            if self.step > 0 or self.stop_signal is not None:
                self._maybe_checkpoint(final=self.step >= total_steps)
        everyone = list(range(len(self.seeds)))
        while self.step < total_steps:
            if self.step < self.random_steps:
                actions = [seed.env.sample_action() for seed in self.seeds]
            else:
                actions = self.agents.act([seed.obs for seed in self.seeds], explore=True, seeds=everyone)
                self._check_actions(actions)  # before an env sees one: a simulator fed NaN fails, or silently
            results = step_all([seed.env for seed in self.seeds], actions)
            ended = [self._store(seed, action, result) for seed, action, result in zip(self.seeds, actions, results)]
            step = self.step

            if step > self.random_steps and all(seed.buffer.can_sample for seed in self.seeds):
                self.agents.update([seed.buffer for seed in self.seeds])
                if step % self.log_every == 0:
                    self._log_metrics()

            finished = [seed for seed, done in zip(self.seeds, ended) if done]
            for seed in finished:
                s = seed.state
                seed.logger.episode(s.step, s.episode_return, s.episode_length)
                s.episode += 1
                s.episode_return, s.episode_length = 0.0, 0
            start_episodes(finished)

            for seed in self.seeds:
                seed.logger.step()
            if step % self.eval_every == 0 or step == total_steps:
                self._evaluate()
            self._maybe_checkpoint(final=step == total_steps)

    def _store(self, seed: SeedRun, action, result: tuple) -> bool:
        """Store one transition of `seed`; whether its episode ended."""
        next_obs, reward, terminated, truncated, _ = result
        seed.episode_actions.append(action)
        seed.buffer.add(seed.obs, seed.store_action(action), reward, next_obs, terminated, truncated)
        seed.obs = next_obs
        s = seed.state
        s.episode_return += reward
        s.episode_length += 1
        s.step += 1
        return terminated or truncated

    # ---- divergence, logging, evaluation, checkpoints: each in one place --------------------------

    def _check_finite(self, k: int) -> dict[str, float]:
        """Seed k's latest metrics as floats; UldError when one is not finite."""
        values = {name: float(value) for name, value in self.agents.metrics(k).items()}
        bad = [name for name, value in values.items() if not math.isfinite(value)]
        if bad:
            self._diverged(k, bad)
        return values

    def _check_actions(self, actions: list) -> None:
        for k, action in enumerate(actions):
            if not np.all(np.isfinite(action)):
                self._check_finite(k)
                self._diverged(k, ["the policy's action"])

    def _diverged(self, k: int, names: list[str]) -> None:
        checkpointer = self.seeds[k].checkpointer
        steps = checkpointer.complete_steps() if checkpointer is not None else []
        kept = f"the checkpoint of step {steps[0]} is kept" if steps else "no checkpoint was written"
        raise UldError(f"training diverged at step {self.step}: {', '.join(names)} of seed {self.seeds[k].seed} "
                       f"became non-finite; {kept}; lower the learning rates or check the env's rewards")

    def _log_metrics(self) -> None:
        for k, seed in enumerate(self.seeds):
            values = self._check_finite(k)
            values["train/reward_scale"] = self.agents.reward_scale(k)
            values["train/buffer_transitions"] = len(seed.buffer)
            seed.logger.scalars(seed.state.step, values)

    def _wall_seconds(self, seed: SeedRun) -> float:
        return seed.state.wall_seconds + time.perf_counter() - self._started

    def _evaluate(self) -> None:
        """Evaluate every seed at this step; a stop request abandons it, leaving evaluation_due set."""
        eval_seeds = []
        for k, seed in enumerate(self.seeds):
            self._check_finite(k)
            seed.state.evaluation_due = True
            # The env and torch (ALM samples its latent when acting) draw from (seed, step) alone.
            eval_seeds.append(evaluation_seed(seed.eval_seed, seed.state.step))
            seed.eval_env.reseed(eval_seeds[-1])
        with self.agents.evaluating(eval_seeds):
            returns = evaluate_seeds(self.agents, [seed.eval_env for seed in self.seeds], self.eval_episodes,
                                     stop=lambda: self.stop_signal is not None)
        if returns is None:
            return
        for seed, seed_returns in zip(self.seeds, returns):
            seed.logger.evaluation(seed.state.step, seed_returns, self._wall_seconds(seed))
            seed.state.evaluation_due = False

    def _maybe_checkpoint(self, final: bool) -> None:
        due = (time.perf_counter() - self._last_checkpoint >= self.checkpoint_seconds
               or (self.checkpoint_every and self.step % self.checkpoint_every == 0))
        saving = any(seed.checkpointer is not None for seed in self.seeds)
        if saving and (final or due or self.stop_signal is not None):
            for k, seed in enumerate(self.seeds):  # every seed's checkpoint at this step, or none is resumed
                self._check_finite(k)
                seed.checkpointer.save({**self.state_dict(k), **seed.checkpoint_tags}, self.step)
            self._last_checkpoint = time.perf_counter()
        evaluation_due = any(seed.state.evaluation_due for seed in self.seeds)
        if self.stop_signal is None or (saving and final and not evaluation_due):
            return  # a stop request that arrives once the run is complete has nothing left to stop
        if not saving:
            raise RunInterrupted(f"interrupted at step {self.step}", 128 + self.stop_signal)
        if evaluation_due:
            raise RunInterrupted(
                f"interrupted during the evaluation at step {self.step}; a checkpoint was saved for every seed: run "
                f"the same command again, or uld train --resume {self.resume_hint}, to evaluate and continue",
                128 + self.stop_signal)
        raise RunInterrupted(
            f"interrupted at step {self.step}; a checkpoint was saved for every seed: run the same command again, "
            f"or uld train --resume {self.resume_hint}, to continue", 128 + self.stop_signal)

    # ---- checkpoint state ---------------------------------------------------------------------

    def state_dict(self, k: int) -> dict:
        """Seed k's whole run: loop counters, agent, replay, every RNG, the episode in progress, log offsets."""
        seed = self.seeds[k]
        trainer = dataclasses.asdict(seed.state)
        trainer["wall_seconds"] = self._wall_seconds(seed)
        return {
            "trainer": trainer,
            "agent": self.agents.state_dict(k),
            "buffer": seed.buffer.state_dict(),
            "metrics": dict(self.agents.metrics(k)),
            "rng": self.agents.rng_state(k),
            "env": {"episode_start": seed.episode_start_rng, "current": seed.env.rng_state(),
                    "actions": [np.asarray(a) for a in seed.episode_actions]},
            "eval_env": seed.eval_env.rng_state(),
            "logger": seed.logger.state_dict(),
        }

    def load_state_dicts(self, states: list[dict]) -> None:
        """Restore every seed's progress and logs from its state_dict; the episodes in progress are replayed
        together. The replays and agents are restored before (train/run.py does that first, so that a checkpoint
        that does not fit them is refused before the run's files are written)."""
        for seed, state in zip(self.seeds, states):
            seed.state = TrainerState(**state["trainer"])
            seed.logger.load_state_dict(state["logger"])
        rebuild_episodes(self.seeds, states)


def start_episodes(seeds: list[SeedRun]) -> None:
    """Start a new episode in each seed's env, remembering the RNG state it starts from (a checkpoint
    rebuilds an episode from it); envs in worker processes (uld/envs/workers.py) reset at the same time."""
    for seed in seeds:
        seed.episode_start_rng = seed.env.rng_state()
        seed.episode_actions = []
    for seed, obs in zip(seeds, reset_all([seed.env for seed in seeds])):
        seed.obs = obs


def rebuild_episodes(seeds: list[SeedRun], states: list[dict]) -> None:
    """Rebuild each seed's episode in progress from its checkpoint: reset its env from the RNG state the
    episode started with, replay the episode's actions, then restore the envs' current RNG states.

    The seeds' envs replay in lock-step, so envs in worker processes (uld/envs/workers.py) replay at
    the same time: a resume of S pixel envs costs one episode's replay, not S of them.
    """
    episodes = [state["env"] for state in states]
    for seed, episode in zip(seeds, episodes):
        seed.env.set_rng_state(episode["episode_start"])
        seed.episode_start_rng = episode["episode_start"]
        seed.episode_actions = []
    for seed, obs in zip(seeds, reset_all([seed.env for seed in seeds])):
        seed.obs = obs
    actions = [[int(a) if s.env.spec.discrete else a for a in (np.asarray(action) for action in e["actions"])]
               for s, e in zip(seeds, episodes)]
    for i in range(max((len(a) for a in actions), default=0)):
        active = [k for k, seed_actions in enumerate(actions) if i < len(seed_actions)]
        results = step_all([seeds[k].env for k in active], [actions[k][i] for k in active])
        for k, result in zip(active, results):
            seeds[k].obs = result[0]
            seeds[k].episode_actions.append(actions[k][i])
    for seed, episode, state in zip(seeds, episodes, states):
        seed.env.set_rng_state(episode["current"])
        seed.eval_env.set_rng_state(state["eval_env"])
