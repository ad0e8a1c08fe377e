"""A whole training run, assembled from parts that do not know each other."""

from __future__ import annotations

import dataclasses
import json
import random
import shutil
import signal
import sys
from pathlib import Path

import numpy as np
import torch

from uld.agents import build_agent
from uld.envs import make_env
from uld.errors import UldError
from uld.train.allocator import keep_freed_memory
from uld.train.logger import Logger
from uld.train.checkpoint import Checkpointer
from uld.train.config import TrainConfig, check_positive, config_differences, config_to_resume
from uld.train.trainer import Trainer


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UldError(f"device {name!r} was asked for but torch sees no CUDA GPU; use --device cpu")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _install_signal_handlers(trainer: Trainer) -> dict:
    def request_stop(signum, frame):  # noqa: ARG001
        trainer.stop_signal = signum

    return {sig: signal.signal(sig, request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}


def train(config: TrainConfig) -> Path | list[Path]:
    """Train as configured and return the run directory (with --seeds of several seeds: theirs).

    A run directory that already holds a checkpoint of the same configuration is resumed: the result
    is bitwise the same as an uninterrupted run on the same machine.
    """
    if config.seeds is not None:  # several seeds train in one process (train/multi_seed.py)
        from uld.train.multi_seed import parse_seeds, train_seeds

        seeds = parse_seeds(config.seeds)
        if len(seeds) > 1:
            return train_seeds(config, seeds)
        config = dataclasses.replace(config, seed=seeds[0], seeds=None)
    if config.resume is not None:
        config = config_to_resume(config)
    check_positive(config)
    cfg = config.resolved()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = resolve_device(cfg.device)
    run_dir = Path(cfg.out)
    checkpointer = Checkpointer(run_dir / "checkpoints")
    loaded = checkpointer.load_latest()
    resolved = dataclasses.asdict(cfg)
    if loaded is not None:
        stored = json.loads((run_dir / "config.json").read_text())
        differences = config_differences(stored, resolved)
        if differences:
            raise UldError(f"{run_dir} holds a run with another configuration: {'; '.join(differences)}; "
                           "use another --out, or the run's own options to resume it")
    elif (run_dir / "eval.csv").exists():
        # Interrupted before its first checkpoint: nothing can be resumed, so it starts over.
        print(f"uld: {run_dir} has no complete checkpoint; starting the run over", file=sys.stderr)
        (run_dir / "eval.csv").unlink()
        shutil.rmtree(run_dir / "tb", ignore_errors=True)
    if loaded is not None and loaded[1] >= cfg.steps:
        print(f"uld: {run_dir} already finished {loaded[1]} steps (asked for {cfg.steps}); nothing to do",
              file=sys.stderr)
        return run_dir

    env, eval_env = make_env(cfg.env, seed=cfg.seed), make_env(cfg.env, seed=cfg.seed + 100, evaluation=True)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.json").write_text(json.dumps(resolved, indent=2) + "\n")
    seed_everything(cfg.seed)
    agent_config = getattr(cfg, cfg.agent)
    agent, buffer = build_agent(cfg.agent, env.spec, agent_config, device=device, precision=cfg.precision,
                                seed=cfg.seed, total_steps=cfg.steps, compiled=cfg.compile,
                                cuda_graphs=cfg.cuda_graphs)
    start_step = loaded[1] if loaded is not None else 0
    logger = Logger(run_dir, cfg.steps, start_step=start_step, progress=cfg.progress)
    trainer = Trainer(env, eval_env, agent, buffer, logger, random_steps=agent_config.random_steps,
                      eval_every=cfg.eval_every, eval_episodes=cfg.eval_episodes, log_every=cfg.log_every,
                      checkpointer=checkpointer, checkpoint_seconds=60 * cfg.checkpoint_minutes,
                      checkpoint_every=cfg.checkpoint_every)
    if loaded is not None:
        trainer.load_state_dict(loaded[0])
        del loaded
    # Now that the buffer and the loaded arrays have their own mappings: from here on, freed blocks stay
    # mapped, so each step's large temporaries cost no page faults (train/allocator.py).
    keep_freed_memory()
    previous_handlers = _install_signal_handlers(trainer)
    try:
        trainer.train(cfg.steps)
    finally:
        for sig, handler in previous_handlers.items():
            signal.signal(sig, handler)
        logger.close()
        env.close()
        eval_env.close()
    return run_dir
