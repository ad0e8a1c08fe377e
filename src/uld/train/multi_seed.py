"""Many seeds in one process: S environments in lock-step, one stacked agent, S ordinary run directories.

`uld train --seeds 0-9` comes here (`--seeds 3`, one seed, is a plain single-seed run). Each seed k
keeps everything a single-seed run keeps, in the same form: its training and evaluation envs (seeded
k and k + 100), its replay, its episode bookkeeping, its Logger writing eval.csv and TensorBoard under
its own run directory (default runs/uld/<env>/seed<k>, with a config.json holding seed k), and its
checkpoints, which are single-seed checkpoints (`uld eval` and `uld report` read the directories
unchanged). Each seed is held by a `Trainer` of its own, used for its state and its checkpoint form;
the loop here steps them together and makes one batched call to the agent per step.

The environments step in lock-step and their episodes end independently. Where stepping them one
after the other would dominate the step (pixel envs render a frame per step), they run in worker
processes (uld/envs/workers.py, --env-workers) and step at the same time: every action is sent, then
every result collected; episodes that end reset at the same time too. Results are bitwise the same
with and without workers. Every seed's checkpoint is written at the same step; a resume loads the
newest step that every seed has complete, so interruption and resume are exact, as for a single run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from uld.agents.stacked import StackedULD, make_buffers
from uld.envs import make_env
from uld.envs.base import Env
from uld.envs.workers import EnvWorkers, available_cores, reset_all, step_all
from uld.errors import UldError
from uld.train import files
from uld.train.checkpoint import Checkpointer, check_run_state, write_atomically
from uld.train.config import (
    TrainConfig,
    check_positive,
    config_differences,
    config_to_dict,
    parse_seed_list,
    read_run_config,
)
from uld.train.lock import locked
from uld.train.logger import Logger
from uld.train.trainer import RunInterrupted, Trainer, evaluation_seed, rebuild_episodes, start_episodes

TOGETHER = "seeds_together"
"""The key of a seed's checkpoint that lists the seeds trained with it in one process (absent: trained alone)."""

MAX_SEEDS = 256
"""Seeds one process may train: each has two envs, a replay and a run directory of its own."""


def parse_seeds(text: str) -> list[int]:
    """'0-9' -> [0, ..., 9]; '0,3,5' -> [0, 3, 5]; '3' -> [3]; ranges and lists mix ('0-2,7'). Each seed
    once, at most MAX_SEEDS of them."""
    return parse_seed_list(text, max_count=MAX_SEEDS, repeats=False)


def seed_configs(config: TrainConfig, seeds: list[int]) -> list[TrainConfig]:
    """Each seed's resolved single-seed config: its seed, and its run directory (<out>/seed<k> when
    --out is given, else the single-seed default runs/<agent>/<env>/seed<k>)."""
    configs = []
    for seed in seeds:
        out = str(Path(config.out) / f"seed{seed}") if config.out is not None else None
        configs.append(dataclasses.replace(config, seed=seed, seeds=None, out=out).resolved())
    return configs


class _SeedView:
    """Seed k of the stacked agent, seen as the agent of that seed's Trainer: its state is seed k's
    single-seed state; a loaded state is kept until every seed's is there to be stacked."""

    def __init__(self, agent: StackedULD, k: int):
        self.agent, self.k, self.loaded = agent, k, None

    @property
    def reward_scale(self) -> float:
        return float(self.agent.reward_scale[self.k])

    def state_dict(self) -> dict:
        return self.agent.seed_state_dict(self.k)

    def load_state_dict(self, state: dict) -> None:
        self.loaded = state


def _common_step(checkpointers: list[Checkpointer]) -> int | None:
    """The newest step for which every seed has a complete checkpoint (None: there is none)."""
    common = set.intersection(*(set(checkpointer.complete_steps()) for checkpointer in checkpointers))
    return next((step for step in sorted(common, reverse=True) if all(c.verifies(step) for c in checkpointers)), None)


def _first_save_interrupted(seeds: list[int], checkpointers: list[Checkpointer]) -> bool:
    """Whether the seeds' first checkpoint was cut short: some seeds have no checkpoint file, and the others
    have one each, of one step, that verifies and was written by this seed list. The seeds' previous state
    is then a run with no checkpoint, which starts over (the files are moved aside, not deleted)."""
    steps = [c.steps() for c in checkpointers]
    saved = [(c, s[0]) for c, s in zip(checkpointers, steps) if s]
    if not saved or len(saved) == len(checkpointers) or any(len(s) > 1 for s in steps):
        return False
    if len({step for _, step in saved}) > 1 or not all(c.verifies(step) for c, step in saved):
        return False
    return all(torch.load(c.path(step), weights_only=True, map_location="cpu").get(TOGETHER) == seeds
               for c, step in saved)


def evaluate_seeds(agent: StackedULD, envs: list, episodes: int,
                   stop: Callable[[], bool] | None = None) -> list[list[float]] | None:
    """`episodes` deterministic episodes on each seed's evaluation env, stepped in lock-step with one
    batched action per step (docs/algorithm.md, Protocols); a seed whose episodes are done waits for the others.
    Envs in workers step, and reset, at the same time. `stop` is called before every lock-step; when it
    returns True the evaluation is abandoned and None returned (as trainer.evaluate does for one seed)."""
    returns: list[list[float]] = [[] for _ in envs]
    obs = reset_all(envs)
    totals = [0.0] * len(envs)
    while any(len(r) < episodes for r in returns):
        if stop is not None and stop():
            return None
        actions = agent.act(np.stack(obs), explore=False).numpy()
        active = [k for k in range(len(envs)) if len(returns[k]) < episodes]
        restart = []
        for k, (next_obs, reward, terminated, truncated, _) in zip(
                active, step_all([envs[k] for k in active], [actions[k] for k in active])):
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


def env_worker_count(env_workers: int | None, seeds: int, pixels: bool) -> int:
    """Worker processes for the envs of `seeds` seeds: --env-workers, at most one per seed (a seed's training
    and evaluation envs never step at the same time, so they share one); by default one per seed up to one
    per core for pixel envs, whose rendering dominates a step, and none for state envs, whose steps take
    microseconds (a round trip to a worker would cost more)."""
    if env_workers is None:
        return min(seeds, available_cores()) if pixels and seeds > 1 else 0
    return min(env_workers, seeds)


def make_seed_envs(configs: list[TrainConfig], env_workers: int | None,
                   closing: contextlib.ExitStack) -> tuple[list[Env], list[Env]]:
    """Each seed's training and evaluation envs (seeded k and k + 100), in this process or, seed k's two on
    worker k % N, in N worker processes; `closing` closes them and ends the workers."""
    first = make_env(configs[0].env, seed=configs[0].seed)  # here: an unknown name fails before workers start
    count = env_worker_count(env_workers, len(configs), first.spec.pixels)
    if count == 0:
        envs: list[Env] = [closing.enter_context(contextlib.closing(first))]
        envs += [closing.enter_context(contextlib.closing(make_env(c.env, seed=c.seed))) for c in configs[1:]]
        eval_envs: list[Env] = [closing.enter_context(contextlib.closing(make_env(c.env, seed=c.seed + 100,
                                                                                  evaluation=True)))
                                for c in configs]
        return envs, eval_envs
    first.close()
    workers = closing.enter_context(EnvWorkers(count))
    made = workers.make_envs([(c.env, c.seed, False, k) for k, c in enumerate(configs)]
                             + [(c.env, c.seed + 100, True, k) for k, c in enumerate(configs)])
    for env in made:
        closing.callback(env.close)
    envs, eval_envs = made[:len(configs)], made[len(configs):]
    return envs, eval_envs


class MultiSeedTrainer:
    """Steps S seeds' Trainers together: one batched act and one stacked update per step."""

    def __init__(self, seeds: list[Trainer], agent: StackedULD, bar: tqdm | None = None):
        self.seeds, self.agent, self.bar = seeds, agent, bar
        self.stop_signal: int | None = None
        first = seeds[0]
        self.random_steps, self.eval_every = first.random_steps, first.eval_every
        self.eval_episodes = first.eval_episodes
        self.log_every = first.log_every
        self.checkpoint_seconds, self.checkpoint_every = first.checkpoint_seconds, first.checkpoint_every
        self.env_seconds = self.update_seconds = 0.0  # how a step's time splits (benchmarks/seeds.py)
        self._metrics: dict = {}  # the latest value of every metric, (S,) each

    def _share_metrics(self) -> None:
        """Give each seed's Trainer its slice of the latest metrics. They stay stacked between the points that
        read them (logging, evaluation, checkpoints, a non-finite action), so a step slices nothing."""
        for k, trainer in enumerate(self.seeds):
            trainer._metrics.update({name: value[k] for name, value in self._metrics.items()})

    @property
    def step(self) -> int:
        return self.seeds[0].state.step

    def load_state_dicts(self, states: list[dict]) -> None:
        for trainer, state in zip(self.seeds, states):
            trainer.load_state_dict(state, rebuild_episode=False)
        rebuild_episodes(self.seeds, states)  # every seed's episode replayed at once (its envs may be in workers)
        views = [trainer.agent for trainer in self.seeds]
        assert all(isinstance(view, _SeedView) for view in views)
        self.agent.load_seed_state_dicts([view.loaded for view in views])  # type: ignore[attr-defined]
        for view in views:
            view.loaded = None  # type: ignore[attr-defined]

    def _evaluate(self) -> None:
        """Evaluate every seed at this step; a stop request abandons it, leaving each seed's evaluation_due set
        (a resume evaluates first, as a single-seed run does)."""
        self._share_metrics()
        for trainer in self.seeds:
            trainer._check_finite(trainer._metrics)
            trainer.state.evaluation_due = True
            # Each seed's evaluation env draws from (its evaluation seed, step) alone, as in a single-seed run.
            trainer.eval_env.reseed(evaluation_seed(trainer.eval_seed, trainer.state.step))
        returns = evaluate_seeds(self.agent, [t.eval_env for t in self.seeds], self.eval_episodes,
                                 stop=lambda: self.stop_signal is not None)
        if returns is None:
            return
        for trainer, seed_returns in zip(self.seeds, returns):
            trainer.logger.evaluation(trainer.state.step, seed_returns, trainer._wall_seconds())
            trainer.state.evaluation_due = False

    @property
    def evaluation_due(self) -> bool:
        return any(trainer.state.evaluation_due for trainer in self.seeds)

    def train(self, total_steps: int) -> None:
        """Run every seed to `total_steps` agent steps, evaluating and checkpointing all seeds together."""
        now = time.perf_counter()
        for trainer in self.seeds:
            trainer._started = now
        self._last_checkpoint = now
        start_episodes([trainer for trainer in self.seeds if trainer.obs is None])
        if self.evaluation_due:  # step 0's evaluation, or one a stop request abandoned
            self._evaluate()
            if self.step > 0 or self.stop_signal is not None:
                self._maybe_checkpoint(final=self.step >= total_steps)
        while self.step < total_steps:
            started = time.perf_counter()
            if self.step < self.random_steps:
                actions = [trainer.env.sample_action() for trainer in self.seeds]
            else:
                actions = list(self.agent.act(np.stack([t.obs for t in self.seeds]), explore=True).numpy())
                if self.agent.spec.discrete:
                    actions = [int(action) for action in actions]  # indices, as a single-seed run keeps them
                for trainer, action in zip(self.seeds, actions):  # before any env sees a non-finite action
                    if not np.all(np.isfinite(action)):
                        self._share_metrics()
                        trainer._check_finite(trainer._metrics)
                        trainer._diverged(["the policy's action"])
            done = []
            results = step_all([trainer.env for trainer in self.seeds], actions)
            for trainer, action, (next_obs, reward, terminated, truncated, _) in zip(self.seeds, actions, results):
                trainer._episode_actions.append(action)
                trainer.buffer.add(trainer.obs, trainer._store_action(action), reward, next_obs, terminated, truncated)
                trainer.obs = next_obs
                s = trainer.state
                s.episode_return += reward
                s.episode_length += 1
                s.step += 1
                done.append(terminated or truncated)
            stepped = time.perf_counter()
            self.env_seconds += stepped - started

            step = self.step
            if step > self.random_steps and all(t.buffer.can_sample for t in self.seeds):
                self._metrics.update(self.agent.update([t.buffer for t in self.seeds]))
                if step % self.log_every == 0:
                    self._share_metrics()
                    for trainer in self.seeds:
                        trainer._log_metrics(trainer._metrics)
            self.update_seconds += time.perf_counter() - stepped

            finished = [trainer for trainer, ended in zip(self.seeds, done) if ended]
            for trainer in finished:
                s = trainer.state
                trainer.logger.episode(s.step, s.episode_return, s.episode_length)
                s.episode += 1
                s.episode_return, s.episode_length = 0.0, 0
            start_episodes(finished)
            if self.bar is not None:
                self.bar.update(1)
                if any(done):
                    last = [t.logger.last_episode_return for t in self.seeds]
                    known = [r for r in last if not math.isnan(r)]
                    self.bar.set_postfix(mean_return=f"{sum(known) / len(known):.1f}", seeds=len(self.seeds),
                                         refresh=False)
            if step % self.eval_every == 0 or step == total_steps:
                self._evaluate()
            self._maybe_checkpoint(final=step == total_steps)

    def _maybe_checkpoint(self, final: bool) -> None:
        due = (time.perf_counter() - self._last_checkpoint >= self.checkpoint_seconds
               or (self.checkpoint_every and self.step % self.checkpoint_every == 0))
        if not (final or due or self.stop_signal is not None):
            return
        self._share_metrics()
        for trainer in self.seeds:  # every seed's checkpoint at this step, or none is counted on resume
            trainer._check_finite(trainer._metrics)
            state = trainer.state_dict()
            state[TOGETHER] = list(self.agent.seeds)
            trainer.checkpointer.save(state, self.step)
        self._last_checkpoint = time.perf_counter()
        if self.stop_signal is None or (final and not self.evaluation_due):
            return  # a stop request that arrives once the run is complete has nothing left to stop
        if self.evaluation_due:
            raise RunInterrupted(
                f"interrupted during the evaluation at step {self.step}; a checkpoint of every seed was saved: "
                "run the same command again to evaluate and continue", 128 + self.stop_signal)
        raise RunInterrupted(
            f"interrupted at step {self.step}; a checkpoint of every seed was saved: run the same command "
            "again to continue", 128 + self.stop_signal)


def _check_nothing_newer(seeds: list[int], checkpointers: list[Checkpointer], step: int) -> None:
    """Refuse to go back to the seeds' common `step` when a seed has a newer checkpoint that this seed list did
    not write together (the seed went on alone, or with other seeds): continuing together would redo its newer
    steps and overwrite them. A newer checkpoint that this seed list wrote (the process stopped while it saved
    every seed's) is redone exactly, so that is allowed."""
    for seed, checkpointer in zip(seeds, checkpointers):
        # Only checkpoints newer than `step` are hashed here (complete_steps is newest first); `step`'s were.
        newest = next((s for s in checkpointer.complete_steps() if s > step and checkpointer.verifies(s)), None)
        if newest is None:
            continue
        together = torch.load(checkpointer.path(newest), weights_only=True, map_location="cpu").get(TOGETHER)
        if together == seeds:
            continue
        others = ",".join(str(s) for s in seeds if s != seed)
        how = "alone" if together is None else f"with seeds {','.join(map(str, together))}"
        raise UldError(f"seed {seed} went on {how} to step {newest}, past step {step} where the other seeds stand; "
                       f"training them together again would redo and overwrite its newer steps, so nothing was "
                       f"changed: continue the others without it (--seeds {others}), or seed {seed} on its own "
                       f"(--seed {seed})")


def _load_seed_state(checkpointer: Checkpointer, step: int) -> dict:
    """A seed's run state at `step` (its checksum verified already), checked to be one."""
    state = torch.load(checkpointer.path(step), weights_only=True, map_location="cpu")
    try:
        check_run_state(state, step)
    except ValueError as error:
        raise UldError(f"the checkpoint of step {step} in {checkpointer.directory} is not a run's state "
                       f"({error}); continue that seed with --seed and --trust-checkpoint, or --restart") from None
    return state


def several_seeds_refusal(config: TrainConfig) -> str | None:
    """Why `config` cannot train several seeds in one process (one sentence), or None when it can.

    uld train refuses such a --seeds command; uld sweep trains such runs one seed per process.
    """
    if config.agent != "uld":
        return (f"--seeds with more than one seed trains ULD only; train {config.agent.upper()} one seed at a "
                "time with --seed")
    if not config.agent_config.model_based_representation:
        return ("training several seeds in one process needs --uld.model-based-representation (the default); "
                "train that design-study variant one seed at a time (--seed)")
    if config.compile:
        return ("--compile compiles one seed's update; with several --seeds the update runs uncompiled: drop "
                "--compile, or train one seed at a time with --seed")
    return None


def train_seeds(config: TrainConfig, seeds: list[int], *,
                on_allocated: Callable[[], object] | None = None) -> list[Path]:
    """Train every seed of `seeds` in this process (ULD); return their run directories.

    The checks of a single-seed run apply to each seed's directory: options in range, a writable
    directory, a config that agrees with the run's, and never an overwritten result (a directory
    whose checkpoints do not verify is refused; one interrupted before its first checkpoint has its
    files moved aside).
    """
    from uld.train.validation import check_config, check_out

    reason = several_seeds_refusal(config)
    if reason is not None:
        raise UldError(reason)
    if config.resume is not None:
        raise UldError("--resume takes one seed's run directory; to continue a many-seed run, run the same "
                       "uld train --seeds command again")
    if config.restart or config.trust_checkpoint:
        raise UldError("--restart and --trust-checkpoint act on one run directory; use them with --seed K on "
                       "the seed that needs them, then run the --seeds command again")
    check_positive(config)
    configs = seed_configs(config, seeds)
    for c in configs:
        check_config(c)
        check_out(c.out)
    with contextlib.ExitStack() as locks:  # one writer per run directory (train/lock.py)
        for c in configs:
            locks.enter_context(locked(c.out, "the run directory"))
            files.check_run_directory(Path(c.out))
        return _train_seeds_locked(config, seeds, configs, on_allocated)


def _train_seeds_locked(config: TrainConfig, seeds: list[int], configs: list[TrainConfig],
                        on_allocated: Callable[[], object] | None) -> list[Path]:
    """train_seeds() with its options checked, holding every seed's run directory lock."""
    from uld.train.run import move_aside, resolve_device, seed_everything, train_until_stopped
    from uld.train.validation import check_buffer_memory

    cfg = configs[0]
    device = resolve_device(cfg.device)
    run_dirs = [Path(c.out) for c in configs]
    checkpointers = [Checkpointer(run_dir / "checkpoints", validate=check_run_state) for run_dir in run_dirs]
    for run_dir, c, checkpointer in zip(run_dirs, configs, checkpointers):
        checkpointer.check_directory()
        if checkpointer.holds_files() and (run_dir / "config.json").exists():
            differences = config_differences(read_run_config(run_dir), config_to_dict(c))
            if differences:
                raise UldError(f"{run_dir} holds a run with another configuration: {'; '.join(differences)}; "
                               "use another --out, or the run's own options to resume it")
    step = _common_step(checkpointers)
    first_save_cut = step is None and _first_save_interrupted(seeds, checkpointers)
    if step is None and not first_save_cut and any(c.verified_step() for c in checkpointers):
        fresh = [str(seed) for seed, c in zip(seeds, checkpointers) if not c.holds_files()]
        if fresh:  # seeds added to a list whose other seeds have trained already
            raise UldError(f"seed(s) {','.join(fresh)} have not started while the other seeds have checkpoints, so "
                           f"they cannot train together; nothing was changed: train the new seeds on their own "
                           f"(--seeds {','.join(fresh)}), and the others with their own list")
        steps = ", ".join(f"seed {seed}: {c.verified_step() or 'none'}" for seed, c in zip(seeds, checkpointers))
        raise UldError(f"the seeds have no verifying checkpoint at one common step ({steps}), so they cannot "
                       "continue together; finish each seed on its own with --seed K (and --out its directory)")
    states = None
    if step is not None:
        _check_nothing_newer(seeds, checkpointers, step)
        states = [_load_seed_state(c, step) for c in checkpointers]
    if step is None:
        for checkpointer in checkpointers:
            if checkpointer.holds_files() and not first_save_cut:
                raise UldError(f"no checkpoint in {checkpointer.directory} verifies, and starting over would "
                               "overwrite the run's results; nothing was changed: continue that seed with --seed "
                               "and --trust-checkpoint, or pass --restart with --seed to move its files aside")
        for run_dir in run_dirs:  # interrupted before the first checkpoint of every seed: start over
            aside = move_aside(run_dir) if run_dir.is_dir() else None
            if aside is not None:
                print(f"uld: the earlier files of {run_dir} were moved into {aside}; starting the run over",
                      file=sys.stderr)
    elif step >= cfg.steps and not any(state["trainer"].get("evaluation_due", False) for state in states):
        print(f"uld: the seeds' runs already finished {step} steps (asked for {cfg.steps}); nothing to do",
              file=sys.stderr)
        return run_dirs

    seed_everything(seeds[0])
    with contextlib.ExitStack() as closing:  # envs, workers, loggers and the bar are closed on every way out
        envs, eval_envs = make_seed_envs(configs, config.env_workers, closing)
        for _ in seeds:  # each seed has a replay of its own
            check_buffer_memory(cfg, envs[0].spec)
        agent = StackedULD(envs[0].spec, cfg.agent_config, seeds, device, cuda_graphs=cfg.cuda_graphs,
                           precision=cfg.precision)
        buffers = make_buffers(envs[0].spec, cfg.agent_config, seeds, device)
        start_step = step or 0
        trainers = []
        for k, (c, run_dir) in enumerate(zip(configs, run_dirs)):
            run_dir.mkdir(parents=True, exist_ok=True)
            write_atomically(run_dir / "config.json", (json.dumps(config_to_dict(c), indent=2) + "\n").encode())
            sinks = []
            if cfg.wandb:  # one W&B run per seed, as each seed's run directory is a single-seed run's
                from uld.train.wandb_sink import WandbSink

                sinks.append(WandbSink(run_dir, cfg.wandb_project, config_to_dict(c),
                                       name=f"{c.agent} {c.env} seed {c.seed}", concurrent=True))
            logger = closing.enter_context(contextlib.closing(Logger(run_dir, cfg.steps, start_step=start_step,
                                                                     progress=False, sinks=sinks)))
            trainers.append(Trainer(envs[k], eval_envs[k], _SeedView(agent, k), buffers[k], logger,
                                    random_steps=cfg.agent_config.random_steps, eval_every=cfg.eval_every,
                                    eval_episodes=cfg.eval_episodes, log_every=cfg.log_every,
                                    checkpointer=checkpointers[k], checkpoint_seconds=60 * cfg.checkpoint_minutes,
                                    checkpoint_every=cfg.checkpoint_every, eval_seed=c.seed + 100))
        bar = tqdm(total=cfg.steps, initial=start_step, disable=not cfg.progress, unit="step", dynamic_ncols=True,
                   mininterval=1.0, desc=f"{len(seeds)} seeds")
        closing.callback(bar.close)
        trainer = MultiSeedTrainer(trainers, agent, bar)
        if states is not None:
            trainer.load_state_dicts(states)
            del states
        if on_allocated is not None:
            on_allocated()

        train_until_stopped(trainer, cfg.steps)
    return run_dirs
