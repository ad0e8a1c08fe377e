"""Each seed's training and evaluation envs, in this process or in worker processes.

`uld train --seeds 0-9` trains the seeds in one process (train/run.py assembles the run, train/trainer.py
is its loop); each seed k keeps everything a single-seed run keeps, in the same form: its training and
evaluation envs (seeded k and k + 100), its replay, its Logger writing eval.csv and TensorBoard under its
own run directory (default runs/<agent>/<env>/seed<k>, with a config.json holding seed k), and its
checkpoints, which are single-seed checkpoints (`uld eval` and `uld report` read the directories unchanged).

Where stepping the envs one after the other would dominate the step (pixel envs render a frame per step),
they run in worker processes (uld/envs/workers.py, --env-workers) and step at the same time. Results are
bitwise the same with and without workers.
"""

from __future__ import annotations

import contextlib

from uld.envs import make_env
from uld.envs.base import Env
from uld.envs.workers import EnvWorkers, available_cores
from uld.train.config import TrainConfig


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
