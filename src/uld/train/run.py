"""A whole training run, assembled from parts that do not know each other."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import random
import signal
import sys
import threading
import time
from collections.abc import Callable, Collection, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from uld.agents import build_agent
from uld.agents.registry import AgentSpec, BuildContext, get_agent
from uld.envs.base import EnvSpec
from uld.errors import UldError, first_detail
from uld.train import files
from uld.train.checkpoint import Checkpointer, check_run_state, write_atomically
from uld.train.config import (
    RESUMABLE_CHANGES,
    TrainConfig,
    config_to_dict,
    config_to_resume,
    read_run_config,
    resumed_config_source,
    seed_configs,
)
from uld.train.lock import locked
from uld.train.logger import Logger, check_eval_offset
from uld.train.population import Batched, PerSeed, Seeds, rng_state
from uld.train.resume import TOGETHER, SeedDir, resume_states, together
from uld.train.seed_envs import make_seed_envs
from uld.train.trainer import SeedRun, Trainer, TrainerState
from uld.train.validation import check_buffer_memory, check_config, check_out, resume_disagreements

if TYPE_CHECKING:
    from uld.train.wandb_sink import WandbSink

RUN_FILES = ("eval.csv", "config.json", "tb", "checkpoints", "wandb_id")
"""What uld train writes in a run directory; --restart moves these aside, never deletes them."""


def resolve_device(name: str, *, cuda=torch.cuda, mps=torch.backends.mps) -> torch.device:
    """The device --device names (auto: CUDA when torch sees a GPU, else the CPU), or UldError when this
    machine has no such device. cuda, mps: torch's modules (seams: tests stand in for other machines)."""
    if name == "auto":
        return torch.device("cuda" if cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not cuda.is_available():
        raise UldError(f"device {name!r} was asked for but torch sees no CUDA GPU; use --device cpu")
    if device.type == "cuda" and device.index is not None and device.index >= cuda.device_count():
        raise UldError(f"device {name!r} was asked for but torch sees {cuda.device_count()} CUDA GPUs; "
                       "pass cuda:0 to cuda:N-1 or --device auto")
    if device.type == "mps" and not mps.is_available():
        raise UldError("device 'mps' was asked for but torch has no MPS backend here; use --device cpu")
    return device


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def train_until_stopped(trainer, steps: int) -> None:
    """trainer.train(steps), with SIGINT and SIGTERM turned into stop requests (the trainer checkpoints, then
    raises RunInterrupted); the previous handlers come back however it ends. Python lets only the main thread
    install signal handlers: from another thread the run trains without them (a signal then acts as the
    process's own handlers say)."""
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

    The one assembly of a run of S >= 1 seeds (`uld train` and ``uld.train(config)``): the options are
    checked once, each seed's run directory is checked and started or resumed with the same rules
    (train/resume.py), then the seeds' envs, agents, replays, loggers and checkpoints are made and handed to
    the loop (train/trainer.py). A run directory that already holds a checkpoint of the same configuration
    is resumed: the result is bitwise the same as an uninterrupted run on the same machine. ``config.env``
    may be an env factory. One that holds a run's files but no checkpoint that verifies is refused, never
    overwritten: `restart` moves its files aside, `trust_checkpoint` continues from a checkpoint whose
    checksum does not verify.

    Args:
        config: the options of uld train.
        explicit: the options the command gave (uld train passes those of its command line): with
            `config.resume`, a given option that disagrees with the run is refused; `seed` and `seeds`
            together are refused. None: those that differ from their defaults.
        on_allocated: called once the replay buffers and the loaded checkpoints exist. Process-wide
            settings (torch's thread count, the allocator) are left to the caller; `uld train` tunes
            glibc's malloc here (train/allocator.py).
    """
    given = set(explicit) if explicit is not None else _options_given(config)
    configs = _seed_configs(config, given)
    with contextlib.ExitStack() as locks:  # one writer per run directory (train/lock.py)
        for c in configs:
            locks.enter_context(locked(c.out, "the run directory"))
            files.check_run_directory(Path(c.out))
        return _train_locked(config, configs, on_allocated)


def _train_locked(config: TrainConfig, configs: list[TrainConfig],
                  on_allocated: Callable[[], object] | None) -> Path | list[Path]:
    """train() with its options checked, holding every seed's run directory lock."""
    cfg = configs[0]
    seeds = [c.seed for c in configs]
    device = resolve_device(cfg.device)
    dirs = [SeedDir(c.seed, Path(c.out), Checkpointer(Path(c.out) / "checkpoints", validate=check_run_state),
                    config_to_dict(dataclasses.replace(c, restart=False, trust_checkpoint=None))) for c in configs]
    states, start_step = resume_states(dirs, cfg.restart, cfg.trust_checkpoint)
    run_dirs = [d.run_dir for d in dirs]
    result: Path | list[Path] = run_dirs if len(run_dirs) > 1 else run_dirs[0]
    if states is not None and start_step >= cfg.steps and not any(s["trainer"].get("evaluation_due") for s in states):
        if cfg.trust_checkpoint:  # trusted from now on, so that the same command without the option is not stuck
            for d in dirs:
                d.checkpointer.adopt(cfg.trust_checkpoint)
        finished = run_dirs[0] if len(run_dirs) == 1 else f"the seeds' runs ({run_dirs[0].parent})"
        print(f"uld: {finished} already finished {start_step} steps (asked for {cfg.steps}); nothing to do",
              file=sys.stderr)
        return result

    with contextlib.ExitStack() as closing:  # envs, workers and loggers are closed on every way out
        envs, eval_envs = make_seed_envs(configs, cfg.env_workers, closing)
        agent_spec = get_agent(cfg.agent)
        agent_spec.check_supports(envs[0].spec)  # before anything is moved or written
        check_buffer_memory(cfg, envs[0].spec, replays=len(seeds))
        agents, buffers = _make_agents(agent_spec, cfg, envs[0].spec, seeds, device)
        if states is not None:
            with _refused_if_unfit(dirs, start_step):
                _load_learners(agents, buffers, states, dirs)
        # One W&B run per seed, as each seed's run directory is a single-seed run's. Started after the agents'
        # generators are restored: wandb.init draws from none of the process's generators.
        wandb_sinks = [_wandb_sink(cfg, c, d, new_run=states is None, concurrent=len(seeds) > 1,
                                   closing=closing)
                       for c, d in zip(configs, dirs)] if cfg.wandb else []
        # None of the runs' files is moved or written before here (a started W&B keeps its own under wandb/):
        # every refusal above left the run directories as they were.
        for d in dirs:
            aside = move_aside(d.run_dir) if states is None and d.run_dir.is_dir() else None
            if aside is not None:
                print(f"uld: the earlier files of {d.run_dir} were moved into {aside}; starting the run over",
                      file=sys.stderr)
            d.run_dir.mkdir(parents=True, exist_ok=True)
            write_atomically(d.run_dir / "config.json", (json.dumps(d.config, indent=2) + "\n").encode())
        tags = {TOGETHER: together(seeds)} if together(seeds) is not None else {}
        runs = []
        for k, (c, d) in enumerate(zip(configs, dirs)):
            sinks = wandb_sinks[k:k + 1]
            for sink in sinks:
                sink.save_id()
            # The progress bar follows the first seed; the others' would overwrite it.
            logger = closing.enter_context(contextlib.closing(Logger(
                d.run_dir, cfg.steps, start_step=start_step or 0, progress=cfg.progress and k == 0, sinks=sinks)))
            runs.append(SeedRun(c.seed, envs[k], eval_envs[k], buffers[k], logger, eval_seed=c.seed + 100,
                                checkpointer=d.checkpointer, checkpoint_tags=tags))
        trainer = Trainer(runs, agents, random_steps=cfg.agent_config.random_steps, eval_every=cfg.eval_every,
                          eval_episodes=cfg.eval_episodes, log_every=cfg.log_every,
                          checkpoint_seconds=60 * cfg.checkpoint_minutes, checkpoint_every=cfg.checkpoint_every,
                          resume_hint=str(config.out or run_dirs[0].parent) if len(seeds) > 1 else str(run_dirs[0]))
        if states is not None:
            with _refused_if_unfit(dirs, start_step):
                trainer.load_state_dicts(states)
            del states
        if on_allocated is not None:
            on_allocated()
        train_until_stopped(trainer, cfg.steps)
    return result


@contextlib.contextmanager
def _refused_if_unfit(dirs: list[SeedDir], start_step: int) -> Iterator[None]:
    """A checkpoint that its loading finds not to fit this run becomes one sentence with the way out."""
    try:
        yield
    except UldError:
        raise  # already one sentence with its own way out (the replay's format, eval.csv's offset)
    except (KeyError, TypeError, ValueError, RuntimeError, IndexError) as error:
        where = ", ".join(str(d.checkpointer.directory) for d in dirs)
        raise UldError(f"the checkpoint of step {start_step} in {where} does not fit this run "
                       f"({first_detail(error)}); pass another with --trust-checkpoint, or --restart to start "
                       "the run over") from None


def _load_learners(agents: Seeds, buffers: list, states: list[dict], dirs: list[SeedDir]) -> None:
    """Restore the seeds' replays, then their agents (the order the trainer restored them in, so that the
    generators end as they did), and check the rest of each state that can be found not to fit: its trainer
    counters and its eval.csv offset. Writes nothing, so a resume refused here leaves the run directories byte
    for byte as they were; the replays' and agents' parts of `states` are dropped once loaded, to free their
    memory."""
    for buffer, state, d in zip(buffers, states, dirs):
        TrainerState(**state["trainer"])
        buffer.load_state_dict(state["buffer"])
        check_eval_offset(d.run_dir / "eval.csv", state["logger"]["eval_csv_bytes"])
    agents.load_state_dicts(states)
    for state in states:
        del state["buffer"], state["agent"]


def _wandb_sink(cfg: TrainConfig, c: TrainConfig, d: SeedDir, *, new_run: bool, concurrent: bool,
                closing: contextlib.ExitStack) -> WandbSink:
    """The seed's W&B run, started before anything of the run is written (a W&B that cannot start is refused
    with the run directory as it was) and finished on every way out."""
    from uld.train.wandb_sink import WandbSink

    sink = WandbSink(d.run_dir, cfg.wandb_project, d.config, name=f"{c.agent} {c.env} seed {c.seed}",
                     concurrent=concurrent, new_run=new_run)
    closing.callback(sink.close)
    return sink


def _seed_configs(config: TrainConfig, given: set[str]) -> list[TrainConfig]:
    """Each seed's resolved config, every option checked (once, here) before anything is made or written."""
    if config.seeds is not None and "seed" in given:
        raise UldError("--seed and --seeds both name seeds; pass one of them")
    if config.resume is not None:
        stored = read_run_config(resumed_config_source(config.resume))
        disagreements = resume_disagreements(stored, config, given, RESUMABLE_CHANGES)
        if disagreements:
            raise UldError(f"--resume {config.resume}: this command disagrees with the run on "
                           f"{'; '.join(disagreements)}; drop those options (a resumed run keeps its own), "
                           "or start a new run with another --out")
        config = config_to_resume(config)
    if config.restart and config.trust_checkpoint:
        raise UldError("--restart and --trust-checkpoint exclude each other; pass one of them")
    configs = seed_configs(config)
    for c in configs:
        check_config(c)
        check_out(c.out)
    return configs


def _make_agents(agent: AgentSpec, cfg: TrainConfig, spec: EnvSpec, seeds: list[int],
                 device: torch.device) -> tuple[Seeds, list]:
    """The seeds' agents and replays: one agent batching every seed where the agent offers it for this config
    (AgentSpec.build_seeds), else one instance per seed, each built after seeding the process with its seed
    as a single-seed run is."""
    context = BuildContext(device=device, precision=cfg.precision, seed=seeds[0], total_steps=cfg.steps,
                           compiled=cfg.compile, cuda_graphs=cfg.cuda_graphs)
    seed_everything(seeds[0])
    batched = agent.build_seeds(spec, cfg.agent_config, context, seeds) if agent.build_seeds is not None else None
    if batched is not None:
        return Batched(batched[0]), batched[1]
    instances, buffers, rngs = [], [], []
    for seed in seeds:
        seed_everything(seed)
        instance, buffer = build_agent(cfg.agent, spec, cfg.agent_config, device=device, precision=cfg.precision,
                                       seed=seed, total_steps=cfg.steps, compiled=cfg.compile,
                                       cuda_graphs=cfg.cuda_graphs)
        instances.append(instance)
        buffers.append(buffer)
        rngs.append(rng_state())
    return PerSeed(instances, rngs), buffers
