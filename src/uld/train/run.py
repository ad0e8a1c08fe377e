"""A whole training run, assembled from parts that do not know each other."""

from __future__ import annotations

import dataclasses
import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from uld.agents import build_agent
from uld.agents.alm.config import ALMConfig, alm_protocol
from uld.agents.uld.config import ULDConfig
from uld.envs import make_env
from uld.envs.protocol import protocol_for
from uld.errors import UldError
from uld.train.logger import Logger
from uld.train.trainer import Trainer


@dataclass(frozen=True)
class TrainConfig:
    """Train an agent on one env with one seed; budget and evaluation default to the env's protocol."""

    agent: Literal["uld", "alm"] = "uld"
    """Which agent to train; its hyperparameters are the --<agent>.* options."""
    env: str = "gym:Pendulum-v1"
    """Env name: gym:<Gymnasium id> or dmc:<domain>-<task>."""
    seed: int = 0
    """Seed of the run: networks, replay sampling, exploration and the training env (evaluation env: seed + 100)."""
    steps: int | None = None
    """Agent steps to train (default: the protocol's budget: ULD Gym 1M, DMC 500k; ALM 300k, Ant/Humanoid 500k)."""
    eval_every: int | None = None
    """Agent steps between evaluations (default: the protocol's, 5,000)."""
    eval_episodes: int | None = None
    """Episodes per evaluation (default: the protocol's: ULD 10, ALM 5)."""
    out: str | None = None
    """Run directory (default: runs/<agent>/<env>/seed<seed>)."""
    device: str = "auto"
    """Torch device: auto (cuda when available), cpu or cuda[:N]."""
    precision: Literal["fp32", "bf16"] = "fp32"
    """Arithmetic of the training step: fp32, or bf16 autocast (fast on CPUs with AMX and on GPUs)."""
    threads: int | None = None
    """Torch CPU threads (default: torch's choice, one per core)."""
    progress: bool = True
    """Show a progress bar."""
    log_every: int = 1000
    """Agent steps between training-metric records in TensorBoard."""
    small: bool = False
    """Start from the reduced-size agent (128-wide networks, batch 64, 1k random steps): same algorithm, quick on a CPU."""
    uld: ULDConfig = field(default_factory=ULDConfig)
    """ULD hyperparameters (spec/ULD.md)."""
    alm: ALMConfig = field(default_factory=ALMConfig)
    """ALM hyperparameters (spec/ALM.md)."""

    def resolved(self) -> TrainConfig:
        """This config with every default that depends on the env and the agent filled in."""
        protocol = alm_protocol(self.env) if self.agent == "alm" else protocol_for(self.env)
        out = self.out or str(Path("runs") / self.agent / self.env.replace(":", "_").replace("/", "_") / f"seed{self.seed}")
        return dataclasses.replace(
            self,
            steps=self.steps if self.steps is not None else protocol.steps,
            eval_every=self.eval_every if self.eval_every is not None else protocol.eval_every,
            eval_episodes=self.eval_episodes if self.eval_episodes is not None else protocol.eval_episodes,
            out=out,
        )


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


def check_positive(config: TrainConfig) -> None:
    for name in ("steps", "eval_every", "eval_episodes"):
        value = getattr(config, name)
        if value is not None and value <= 0:
            raise UldError(f"--{name.replace('_', '-')} must be a positive integer, got {value}")


def train(config: TrainConfig) -> Path:
    """Train as configured and return the run directory."""
    check_positive(config)
    cfg = config.resolved()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = resolve_device(cfg.device)
    env, eval_env = make_env(cfg.env, seed=cfg.seed), make_env(cfg.env, seed=cfg.seed + 100, evaluation=True)
    run_dir = Path(cfg.out)
    if (run_dir / "eval.csv").exists():
        raise UldError(f"{run_dir} already holds a run; pass another --out or remove it")
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.json").write_text(json.dumps(dataclasses.asdict(cfg), indent=2) + "\n")

    seed_everything(cfg.seed)
    agent_config = getattr(cfg, cfg.agent)
    agent, buffer = build_agent(cfg.agent, env.spec, agent_config, device=device, precision=cfg.precision,
                                seed=cfg.seed, total_steps=cfg.steps)
    logger = Logger(run_dir, cfg.steps, progress=cfg.progress)
    trainer = Trainer(env, eval_env, agent, buffer, logger, random_steps=agent_config.random_steps,
                      eval_every=cfg.eval_every, eval_episodes=cfg.eval_episodes, log_every=cfg.log_every)
    try:
        trainer.train(cfg.steps)
    finally:
        logger.close()
        env.close()
        eval_env.close()
    return run_dir
