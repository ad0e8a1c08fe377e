"""A whole training run, assembled from parts that do not know each other."""

from __future__ import annotations

import dataclasses
import json
import os
import random
import signal
import sys
import threading
import time
from collections.abc import Callable, Collection
from pathlib import Path

import numpy as np
import torch

from uld.agents import build_agent, get_agent
from uld.envs import make_env
from uld.errors import UldError
from uld.train import files
from uld.train.checkpoint import Checkpointer, check_run_state, write_atomically
from uld.train.config import (
    RESUMABLE_CHANGES,
    TrainConfig,
    check_positive,
    config_differences,
    config_to_dict,
    config_to_resume,
    read_run_config,
)
from uld.train.lock import locked
from uld.train.logger import Logger
from uld.train.trainer import Trainer
from uld.train.validation import check_buffer_memory, check_config, check_out, resume_disagreements

RUN_FILES = ("eval.csv", "config.json", "tb", "checkpoints", "wandb_id")
"""What uld train writes in a run directory; --restart moves these aside, never deletes them."""


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UldError(f"device {name!r} was asked for but torch sees no CUDA GPU; use --device cpu")
    if name.startswith("cuda:") and int(name[5:]) >= torch.cuda.device_count():
        raise UldError(f"device {name!r} was asked for but torch sees {torch.cuda.device_count()} CUDA GPUs; "
                       "pass cuda:0 to cuda:N-1 or --device auto")
    if name == "mps" and not torch.backends.mps.is_available():
        raise UldError("device 'mps' was asked for but torch has no MPS backend here; use --device cpu")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def train_until_stopped(trainer, steps: int) -> None:
    """trainer.train(steps), with SIGINT and SIGTERM turned into stop requests (the trainer checkpoints, then
    raises RunInterrupted); the previous handlers come back however it ends. `trainer`: a Trainer, or the
    many-seed trainer. Python lets only the main thread install signal handlers: from another thread the
    run trains without them (a signal then acts as the process's own handlers say)."""
    def request_stop(signum, frame):  # noqa: ARG001
        trainer.stop_signal = signum

    main_thread = threading.current_thread() is threading.main_thread()
    previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGINT, signal.SIGTERM)} if main_thread else {}
    try:
        trainer.train(steps)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _options_given(config: TrainConfig) -> set[str]:
    """For train() called from Python: the options that differ from their defaults count as given."""
    given = set()
    defaults = TrainConfig(agent=config.agent, small=config.small)
    for field in dataclasses.fields(config):
        value, default = getattr(config, field.name), getattr(defaults, field.name)
        if field.name == "agent_config":  # the trained agent's section, by the agent's name
            given |= {f"{config.agent}.{f.name}" for f in dataclasses.fields(value)
                      if getattr(value, f.name) != getattr(default, f.name)}
        elif value != default:
            given.add(field.name)
    return given


def move_aside(run_dir: Path) -> Path | None:
    """Move the files of an earlier run into <run_dir>/restarted-<UTC time>/; the folder, or None if none."""
    present = [name for name in RUN_FILES if os.path.lexists(run_dir / name)]
    if not present:
        return None
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    aside, n = run_dir / f"restarted-{stamp}", 1
    while aside.exists():
        n += 1
        aside = run_dir / f"restarted-{stamp}-{n}"
    aside.mkdir()
    for name in present:
        os.replace(run_dir / name, aside / name)
    return aside


def train(config: TrainConfig, explicit: Collection[str] | None = None, *,
          on_allocated: Callable[[], object] | None = None) -> Path | list[Path]:
    """Train as configured and return the run directory (with `seeds` naming several seeds: theirs).

    A run directory that already holds a checkpoint of the same configuration is resumed: the result
    is bitwise the same as an uninterrupted run on the same machine. ``config.env`` may be an env
    factory. One that holds a run's files
    but no checkpoint that verifies is refused, never overwritten: `restart` moves its files aside,
    `trust_checkpoint` continues from a checkpoint whose checksum does not verify.

    Args:
        config: the options of uld train.
        explicit: with `config.resume`, the options the command gave (uld train passes those of its
            command line); a given option that disagrees with the run is refused. None: those that
            differ from their defaults.
        on_allocated: called once the replay buffer and the loaded checkpoint exist. Process-wide
            settings (torch's thread count, the allocator) are left to the caller; `uld train` tunes
            glibc's malloc here (train/allocator.py).
    """
    if config.seeds is not None and config.seed != 0:
        raise UldError("--seed and --seeds both name seeds; pass one of them")
    if config.seeds is not None:  # several seeds train in one process (train/multi_seed.py)
        from uld.train.multi_seed import parse_seeds, train_seeds

        seeds = parse_seeds(config.seeds)
        if len(seeds) > 1:
            return train_seeds(config, seeds, on_allocated=on_allocated)
        # One seed is a single-seed run, written where --seeds writes each seed's (<out>/seed<k>), so that a list
        # of one and a longer list never put a run inside another's directory.
        out = str(Path(config.out) / f"seed{seeds[0]}") if config.out is not None else None
        config = dataclasses.replace(config, seed=seeds[0], seeds=None, out=out)
    if config.resume is not None:
        stored = read_run_config(config.resume)
        given = set(explicit) if explicit is not None else _options_given(config)
        disagreements = resume_disagreements(stored, config, given, RESUMABLE_CHANGES)
        if disagreements:
            raise UldError(f"--resume {config.resume}: this command disagrees with the run on "
                           f"{'; '.join(disagreements)}; drop those options (a resumed run keeps its own), "
                           "or start a new run with another --out")
        config = config_to_resume(config)
    check_positive(config)
    cfg = config.resolved()
    check_config(cfg)
    check_out(cfg.out)
    if cfg.restart and cfg.trust_checkpoint:
        raise UldError("--restart and --trust-checkpoint exclude each other; pass one of them")
    with locked(cfg.out, "the run directory"):  # one writer per run directory (train/lock.py)
        files.check_run_directory(Path(cfg.out))
        return _train_locked(cfg, on_allocated)


def _train_locked(cfg: TrainConfig, on_allocated: Callable[[], object] | None) -> Path:
    """train() of one seed, its options checked, holding the run directory's lock."""
    device = resolve_device(cfg.device)
    run_dir = Path(cfg.out)
    checkpointer = Checkpointer(run_dir / "checkpoints", validate=check_run_state)
    resolved = config_to_dict(dataclasses.replace(cfg, restart=False, trust_checkpoint=None))
    start_over = cfg.restart
    if cfg.restart:
        loaded = None
    elif cfg.trust_checkpoint:
        loaded = checkpointer.load_trusted(cfg.trust_checkpoint)
    else:
        checkpointer.check_directory()
        loaded = checkpointer.load_latest()
        if loaded is None and checkpointer.holds_files():
            newest = checkpointer.path(checkpointer.newest_step())
            raise UldError(f"no checkpoint in {checkpointer.directory} verifies, and starting over would overwrite "
                           f"the run's results; nothing was changed: continue from one you trust with "
                           f"--trust-checkpoint {newest}, or pass --restart to move the run's files into "
                           f"{run_dir}/restarted-<time>/ and start over")
        # Interrupted before its first checkpoint: nothing can be resumed, so it starts over (its
        # files are moved aside all the same).
        start_over = loaded is None
    stored = None
    if loaded is not None:
        if not (run_dir / "config.json").is_file() and not cfg.trust_checkpoint:
            raise UldError(f"{run_dir} holds checkpoints but no config.json, so this command cannot be checked "
                           f"against the run; restore it, or continue with the run's options and --trust-checkpoint "
                           f"{checkpointer.path(loaded[1])}, which writes it again")
        try:
            stored = read_run_config(run_dir)
        except UldError:
            if not cfg.trust_checkpoint:
                raise
    if stored is not None:
        differences = config_differences(stored, resolved)
        if differences:
            raise UldError(f"{run_dir} holds a run with another configuration: {'; '.join(differences)}; "
                           "use another --out, or the run's own options to resume it")
    if loaded is not None and loaded[1] >= cfg.steps and not loaded[0]["trainer"].get("evaluation_due", False):
        if cfg.trust_checkpoint:  # trusted from now on, so that the same command without the option is not stuck
            checkpointer.adopt(cfg.trust_checkpoint)
        print(f"uld: {run_dir} already finished {loaded[1]} steps (asked for {cfg.steps}); nothing to do",
              file=sys.stderr)
        return run_dir

    env, eval_env = make_env(cfg.env, seed=cfg.seed), make_env(cfg.env, seed=cfg.seed + 100, evaluation=True)
    get_agent(cfg.agent).check_supports(env.spec)  # before anything is moved or written
    check_buffer_memory(cfg, env.spec)
    aside = move_aside(run_dir) if start_over and run_dir.is_dir() else None
    if aside is not None:
        print(f"uld: the earlier files of {run_dir} were moved into {aside}; starting the run over", file=sys.stderr)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_atomically(run_dir / "config.json", (json.dumps(resolved, indent=2) + "\n").encode())
    seed_everything(cfg.seed)
    agent_config = cfg.agent_config
    agent, buffer = build_agent(cfg.agent, env.spec, agent_config, device=device, precision=cfg.precision,
                                seed=cfg.seed, total_steps=cfg.steps, compiled=cfg.compile,
                                cuda_graphs=cfg.cuda_graphs)
    start_step = loaded[1] if loaded is not None else 0
    sinks = []
    if cfg.wandb:
        from uld.train.wandb_sink import WandbSink

        sinks.append(WandbSink(run_dir, cfg.wandb_project, resolved, name=f"{cfg.agent} {cfg.env} seed {cfg.seed}"))
    logger = Logger(run_dir, cfg.steps, start_step=start_step, progress=cfg.progress, sinks=sinks)
    trainer = Trainer(env, eval_env, agent, buffer, logger, random_steps=agent_config.random_steps,
                      eval_every=cfg.eval_every, eval_episodes=cfg.eval_episodes, log_every=cfg.log_every,
                      checkpointer=checkpointer, checkpoint_seconds=60 * cfg.checkpoint_minutes,
                      checkpoint_every=cfg.checkpoint_every, eval_seed=cfg.seed + 100)
    if loaded is not None:
        try:
            trainer.load_state_dict(loaded[0])
        except (KeyError, TypeError, ValueError, RuntimeError, IndexError) as error:
            raise UldError(f"the checkpoint of step {loaded[1]} in {run_dir} does not fit this run ({error}); "
                           "pass another with --trust-checkpoint, or --restart to start the run over") from None
        del loaded
    if on_allocated is not None:
        on_allocated()
    try:
        train_until_stopped(trainer, cfg.steps)
    finally:
        logger.close()
        env.close()
        eval_env.close()
    return run_dir
