"""uld train's configuration: the options, their defaults, and how a run's stored config compares with a command."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from uld.agents.alm.config import ALMConfig, alm_protocol
from uld.agents.uld.config import ULDConfig
from uld.envs.protocol import protocol_for
from uld.errors import UldError


@dataclass(frozen=True)
class TrainConfig:
    """Train an agent on one env with one seed; budget and evaluation default to the env's protocol."""

    agent: Literal["uld", "alm"] = "uld"
    """Which agent to train; its hyperparameters are the --<agent>.* options."""
    env: str = "gym:Pendulum-v1"
    """Env name: gym:<Gymnasium id>, dmc:<domain>-<task>, dmc-pixels:<domain>-<task> or atari:<Game>."""
    seed: int = 0
    """Seed of the run: networks, replay sampling, exploration and the training env (evaluation env: seed + 100)."""
    seeds: str | None = None
    """Train several seeds in one process (ULD): 0-9, 0,3,5 or 0-2,7; each writes the run directory of a single-seed run (<out>/seed<k> when --out is given). One seed is --seed."""
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
    compile: bool = False
    """torch.compile the networks (same results to fp32 rounding; measured neutral on a 2-core CPU, meant for GPUs)."""
    cuda_graphs: bool = True
    """On a CUDA device, replay ULD's updates as CUDA graphs (same algorithm, far fewer kernel launches); --no-cuda-graphs runs them eagerly."""
    threads: int | None = None
    """Torch CPU threads (default: torch's choice, one per core)."""
    progress: bool = True
    """Show a progress bar."""
    log_every: int = 1000
    """Agent steps between training-metric records in TensorBoard."""
    small: bool = False
    """Start from the reduced-size agent (ULD: 128-wide networks, batch 64, 1k random steps; ALM likewise): same algorithm, quick on a CPU."""
    checkpoint_minutes: float = 10.0
    """Wall-clock minutes between checkpoints (one is also written at the end and on SIGINT/SIGTERM)."""
    checkpoint_every: int | None = None
    """Also checkpoint every this many agent steps (default: by time only)."""
    resume: str | None = None
    """Continue the run in this directory with its own config.json (only --steps, --device, --compile, --cuda-graphs, --threads, --progress and the checkpoint cadence may change)."""
    uld: ULDConfig = field(default_factory=ULDConfig)
    """ULD hyperparameters (spec/ULD.md)."""
    alm: ALMConfig = field(default_factory=ALMConfig)
    """ALM hyperparameters (spec/ALM.md)."""

    def resolved(self) -> TrainConfig:
        """This config with every default that depends on the env and the agent filled in."""
        protocol = alm_protocol(self.env) if self.agent == "alm" else protocol_for(self.env)
        env_dir = self.env.replace(":", "_").replace("/", "_")
        out = self.out or str(Path("runs") / self.agent / env_dir / f"seed{self.seed}")
        return dataclasses.replace(
            self,
            steps=self.steps if self.steps is not None else protocol.steps,
            eval_every=self.eval_every if self.eval_every is not None else protocol.eval_every,
            eval_episodes=self.eval_episodes if self.eval_episodes is not None else protocol.eval_episodes,
            out=out,
        )


def check_positive(config: TrainConfig) -> None:
    for name in ("steps", "eval_every", "eval_episodes"):
        value = getattr(config, name)
        if value is not None and value <= 0:
            raise UldError(f"--{name.replace('_', '-')} must be a positive integer, got {value}")
    # The agent's sizes, horizons and periods too (a random phase may be empty).
    agent_config = getattr(config, config.agent)
    for option in dataclasses.fields(agent_config):
        value = getattr(agent_config, option.name)
        if type(value) is int and option.name != "random_steps" and value <= 0:
            raise UldError(f"--{config.agent}.{option.name.replace('_', '-')} must be a positive integer, got {value}")


# Options that may change between the start of a run and its resumption; every other one is part of
# what the run is, and a command that disagrees with the run directory on it is refused.
RESUMABLE_CHANGES = ("steps", "out", "resume", "device", "compile", "cuda_graphs", "threads", "progress", "checkpoint_minutes",
                     "checkpoint_every")


def config_from_dict(data: dict) -> TrainConfig:
    """A TrainConfig from its config.json form."""
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    nested = {"uld": ULDConfig, "alm": ALMConfig}
    values = {k: (nested[k](**v) if k in nested else v) for k, v in data.items() if k in known}
    return TrainConfig(**values)


def config_to_resume(config: TrainConfig) -> TrainConfig:
    """For `--resume DIR`: the run's own config.json, with the options that may change on resumption
    (RESUMABLE_CHANGES) taken from this command."""
    stored = Path(config.resume) / "config.json"
    if not stored.exists():
        raise UldError(f"{config.resume} is not a run directory (it has no config.json); pass the directory "
                       "that uld train wrote")
    base = config_from_dict(json.loads(stored.read_text()))
    from_command = {name: getattr(config, name) for name in RESUMABLE_CHANGES if name not in ("steps", "out", "resume")}
    return dataclasses.replace(base, out=config.resume, steps=config.steps or base.steps, **from_command)


def config_differences(stored: dict, current: dict) -> list[str]:
    """Names and values of the options on which two resolved configs disagree.

    Only the section of the agent being trained counts (an ALM run ignores the `uld` options). An
    option missing from the stored config was added to uld after the run started: it agrees when the
    current value is that option's default, which keeps the behaviour the run was started with (an
    added option whose default depends on the env would not match, and the run is refused: safe).
    """
    return _differences(stored, current, dataclasses.asdict(TrainConfig()), prefix="")


def _differences(stored: dict, current: dict, defaults: dict, *, prefix: str) -> list[str]:
    differences = []
    for key in sorted(set(stored) | set(current)):
        if not prefix and (key in RESUMABLE_CHANGES or (key in ("uld", "alm") and key != current.get("agent"))):
            continue
        a, b = stored.get(key), current.get(key)
        if key not in stored and b == defaults.get(key):
            continue
        if isinstance(a, dict) and isinstance(b, dict):
            differences += _differences(a, b, defaults.get(key, {}), prefix=prefix + key + ".")
        elif a != b:
            differences.append(f"{prefix}{key} (run: {a!r}, this command: {b!r})")
    return differences


def parse_train_args(argv: list[str]) -> TrainConfig:
    """uld train's options as a TrainConfig (uld sweep checks the options it passes on with it too)."""
    import tyro

    from uld.agents.alm.config import reduced_config as reduced_alm
    from uld.agents.uld.config import reduced_config as reduced_uld

    # --small changes the defaults that the other flags override, so it is read before parsing.
    default = TrainConfig(small=True, uld=reduced_uld(), alm=reduced_alm()) if "--small" in argv else TrainConfig()
    return tyro.cli(TrainConfig, args=argv, default=default, prog="uld train", description=TrainConfig.__doc__)
