"""uld train's configuration: the options, their defaults, and how a run's stored config compares with a command."""

from __future__ import annotations

import dataclasses
import functools
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

from uld.agents.registry import DEFAULT_AGENT, AgentSpec, agent_names, get_agent
from uld.envs.python import EnvFactory, factory_name
from uld.errors import UldError


@dataclass(frozen=True)
class TrainConfig:
    """Train an agent on one env with one seed or several (--seeds); budget and evaluation follow the env's protocol."""

    agent: str = DEFAULT_AGENT
    """Which agent to train; its hyperparameters are the --<agent>.* options (uld train --agent NAME --help)."""
    env: str | EnvFactory = "gym:Pendulum-v1"
    """Env name: gym:<Gymnasium id>, dmc:<domain>-<task>, dmc-pixels:<domain>-<task>, atari:<Game>, or a user's
    Gymnasium env as gym:<module>:<id>. From Python also an env factory, called as factory(seed=, evaluation=)."""
    seed: int = 0
    """Seed of the run: networks, replay sampling, exploration and the training env (evaluation env: seed + 100)."""
    seeds: str | None = None
    """Train several seeds in one process: 0-9, 0,3,5 or 0-2,7; each writes the run directory of a single-seed
    run (<out>/seed<k> when --out is given). Any agent and option; one seed is also --seed."""
    steps: int | None = None
    """Agent steps to train (default: the budget of the agent's protocol for the env, e.g. ULD on Gym 1M, ALM 300k)."""
    eval_every: int | None = None
    """Agent steps between evaluations (default: the protocol's, 5,000)."""
    eval_episodes: int | None = None
    """Episodes per evaluation (default: the agent's protocol's, e.g. ULD 10, ALM 5)."""
    out: str | None = None
    """Run directory (default: runs/<agent>/<env>/seed<seed>)."""
    device: str = "auto"
    """Torch device: auto (cuda when available), cpu or cuda[:N]."""
    precision: Literal["fp32", "bf16"] = "fp32"
    """Arithmetic of the training step: fp32, or bf16 autocast (fast on CPUs with AMX and on GPUs)."""
    compile: bool = False
    """torch.compile the networks (same results to fp32 rounding; meant for GPUs, neutral on CPUs: docs/speed.md)."""
    cuda_graphs: bool = True
    """On a CUDA device, replay the agent's updates as CUDA graphs (same algorithm, far fewer kernel launches);
    --no-cuda-graphs runs them eagerly."""
    tf32: bool = False
    """On CUDA, let fp32 matrix multiplies use TF32 tensor cores (faster, 10-bit mantissas; convolutions use TF32
    under PyTorch's default either way); off: full fp32, PyTorch's default (docs/gpu.md, TF32)."""
    threads: int | None = None
    """Torch CPU threads (default: torch's choice, one per core)."""
    env_workers: int | None = None
    """With several --seeds: worker processes that step the seeds' envs at the same time (0: none, the envs step
    one after the other in this process; default: one per seed up to one per core for pixel envs, none otherwise).
    Results are the same either way. One seed: ignored."""
    progress: bool = True
    """Show a progress bar."""
    log_every: int = 1000
    """Agent steps between training-metric records in TensorBoard."""
    wandb: bool = False
    """Also log the config, evaluations and training metrics to Weights & Biases (pip install 'uld[wandb]'); a
    resumed run continues its W&B run."""
    wandb_project: str = "uld"
    """The W&B project of --wandb."""
    small: bool = False
    """Start from the agent's reduced-size config (e.g. ULD: 128-wide networks, batch 64, 1k random steps): same
    algorithm, quick on a CPU."""
    checkpoint_minutes: float = 10.0
    """Wall-clock minutes between checkpoints (one is also written at the end and on SIGINT/SIGTERM)."""
    checkpoint_every: int | None = None
    """Also checkpoint every this many agent steps (default: by time only)."""
    resume: str | None = None
    """Continue the run in this directory with its own config.json, or every seed of a --seeds run's directory
    (only --steps, --device, --compile, --cuda-graphs, --threads, --env-workers, --progress, the checkpoint cadence
    and W&B logging may change)."""
    restart: bool = False
    """Start the run in --out over, with --seeds every seed's: its files are moved into <run>/restarted-<time>/ first
    (nothing is deleted)."""
    trust_checkpoint: str | None = None
    """Continue from this checkpoint file even though its checksum does not verify (it is still loaded weights-only);
    with --seeds, the seed whose checkpoint it is, the other seeds from their checkpoints of the same step."""
    agent_config: Any = None
    """The trained agent's hyperparameters, an instance of its registered config dataclass (default: its
    defaults, or its reduced-size config with small). Also readable as the attribute named by the agent
    (``config.uld``), and accepted as that keyword (``TrainConfig(agent="alm", alm=ALMConfig(...))``)."""

    def __post_init__(self) -> None:
        agent = get_agent(self.agent)
        if self.agent_config is None:
            object.__setattr__(self, "agent_config", agent.default_config(self.small))
        elif not isinstance(self.agent_config, agent.config):
            raise UldError(f"the {agent.name} agent's hyperparameters are a {agent.config.__name__}, "
                           f"got a {type(self.agent_config).__name__}")

    def __getattr__(self, name: str) -> Any:
        # Only reached when normal lookup fails: the trained agent's section by its name (config.alm).
        fields = self.__dict__
        if "agent" in fields and name == fields["agent"]:
            return fields["agent_config"]
        raise AttributeError(f"{type(self).__name__} has no attribute {name!r}")

    @property
    def env_name(self) -> str:
        """The env's uld name; an env factory's is python:<module>:<qualified name>."""
        return self.env if isinstance(self.env, str) else factory_name(self.env)

    def resolved(self) -> TrainConfig:
        """This config with every default that depends on the env and the agent filled in."""
        protocol = get_agent(self.agent).protocol_for(self.env_name)
        env_dir = self.env_name.replace(":", "_").replace("/", "_").replace("<", "").replace(">", "")
        out = self.out or str(Path("runs") / self.agent / env_dir / f"seed{self.seed}")
        return dataclasses.replace(
            self,
            steps=self.steps if self.steps is not None else protocol.steps,
            eval_every=self.eval_every if self.eval_every is not None else protocol.eval_every,
            eval_episodes=self.eval_episodes if self.eval_episodes is not None else protocol.eval_episodes,
            out=out,
        )


def _accept_agent_sections(init):
    """TrainConfig(agent="alm", alm=ALMConfig(...)): the trained agent's section by its name, as config.json
    stores it. The section of an agent other than the trained one is ignored, as it always was."""

    @functools.wraps(init)
    def __init__(self, *args, **kwargs):
        sections = {name: kwargs.pop(name) for name in list(kwargs) if name not in _FIELDS}
        unknown = [name for name in sections if name not in agent_names()]
        if unknown:
            raise TypeError(f"TrainConfig got an unexpected keyword argument {unknown[0]!r}")
        agent = kwargs.get("agent", args[0] if args else DEFAULT_AGENT)
        if agent in sections and kwargs.get("agent_config") is None:
            kwargs["agent_config"] = sections[agent]
        init(self, *args, **kwargs)

    return __init__


_FIELDS = frozenset(f.name for f in dataclasses.fields(TrainConfig))
TrainConfig.__init__ = _accept_agent_sections(TrainConfig.__init__)  # type: ignore[method-assign]


# Options that may change between the start of a run and its resumption; every other one is part of
# what the run is, and a command that disagrees with the run directory on it is refused.
RESUMABLE_CHANGES = ("steps", "out", "resume", "device", "compile", "cuda_graphs", "threads", "env_workers",
                     "progress", "checkpoint_minutes", "checkpoint_every", "restart", "trust_checkpoint", "wandb",
                     "wandb_project")


def config_to_dict(config: TrainConfig) -> dict:
    """The config.json form of a TrainConfig: its options, and the trained agent's hyperparameters as the
    section named by the agent (``"uld": {...}``)."""
    data = {f.name: getattr(config, f.name) for f in dataclasses.fields(TrainConfig) if f.name != "agent_config"}
    data["env"] = config.env_name
    data[config.agent] = dataclasses.asdict(config.agent_config)
    return data


def config_from_dict(data: dict, source: str = "config.json") -> TrainConfig:
    """A TrainConfig from its config.json form; UldError naming the first option uld does not know.

    Runs written before config.json held only the trained agent's section carry a section for every
    agent ("uld" and "alm"); the sections of agents other than the trained one are ignored.
    """
    known = _FIELDS - {"agent_config"}
    unknown = sorted(set(data) - known - set(agent_names()))
    agent_name = data.get("agent", DEFAULT_AGENT)
    if agent_name not in agent_names():
        raise UldError(f"{source} names the agent {agent_name!r}, which this uld does not have (its agents: "
                       f"{', '.join(agent_names())}); restore the file uld train wrote")
    agent = get_agent(agent_name)
    section = data.get(agent.name)
    if section is not None and not isinstance(section, dict):
        raise UldError(f"{source} has {agent.name} as {section!r}, not a mapping of options; "
                       "restore the file uld train wrote")
    if section is not None:
        options = {f.name for f in dataclasses.fields(agent.config)}
        unknown += [f"{agent.name}.{k}" for k in sorted(set(section) - options)]
    if unknown:
        raise UldError(f"{source} has options this uld does not know ({', '.join(unknown)}); "
                       "it was written by another uld version or edited: restore it, or use that version")
    values = {k: v for k, v in data.items() if k in known}
    if section is not None:
        values["agent_config"] = agent.config(**section)
    return TrainConfig(**values)


def seed_run_dirs(run_dir: str | Path) -> list[int]:
    """The seeds whose run directories <run_dir>/seed<k> a many-seed run wrote (uld train --seeds --out
    run_dir), in increasing order; [] when run_dir is one seed's run directory or holds none."""
    if (Path(run_dir) / "config.json").is_file():
        return []
    names = [path.parent.name[4:] for path in Path(run_dir).glob("seed*/config.json")]
    return sorted(int(name) for name in names if name.isdigit())


def read_run_config(run_dir: str | Path) -> dict:
    """The config.json of a run directory as a dict; UldError when it is missing, not JSON, or unknown."""
    path = Path(run_dir) / "config.json"
    if not path.is_file():
        seeds = seed_run_dirs(run_dir)
        if seeds:  # the parent directory of a many-seed run (uld train --seeds --out DIR)
            names = [f"seed{seed}" for seed in seeds]
            raise UldError(f"{run_dir} holds the runs of several seeds ({', '.join(names[:5])}"
                           f"{', ...' if len(names) > 5 else ''}), not one run; pass one seed's directory, "
                           f"e.g. {Path(run_dir) / names[0]}")
        raise UldError(f"{run_dir} is not a run directory (it has no config.json); pass the directory "
                       "that uld train wrote")
    try:
        data = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as error:
        raise UldError(f"{path} is not valid JSON ({error}); restore it, or continue the run with "
                       "--trust-checkpoint <a checkpoint> and the run's options, which rewrites it") from None
    if not isinstance(data, dict):
        raise UldError(f"{path} holds a {type(data).__name__}, not a run's options; restore the file uld train wrote")
    config_from_dict(data, str(path))  # unknown options
    return data


def resumed_config_source(resume: str | Path) -> Path:
    """The run directory whose config.json a `--resume` of `resume` starts from: `resume` itself, or for a
    many-seed run's directory its first seed's."""
    seeds = seed_run_dirs(resume)
    return Path(resume) / f"seed{seeds[0]}" if seeds else Path(resume)


def config_to_resume(config: TrainConfig) -> TrainConfig:
    """For `--resume DIR`: the run's own config.json, with the options that may change on resumption
    (RESUMABLE_CHANGES) taken from this command. DIR may be a many-seed run's directory (<DIR>/seed<k>):
    then every seed found there is resumed, from the first one's options."""
    base = config_from_dict(read_run_config(resumed_config_source(config.resume)))
    from_command = {name: getattr(config, name) for name in RESUMABLE_CHANGES if name not in ("steps", "out", "resume")}
    if base.wandb and not config.wandb:  # a run that logged to W&B goes on logging to the same W&B run
        from_command.update(wandb=True, wandb_project=base.wandb_project)
    seeds = seed_run_dirs(config.resume)
    if seeds:
        from_command.update(seeds=",".join(map(str, seeds)), seed=0)
    return dataclasses.replace(base, out=config.resume, steps=config.steps or base.steps, **from_command)


def config_differences(stored: dict, current: dict) -> list[str]:
    """Names and values of the options on which two resolved configs disagree.

    Only the section of the agent being trained counts (an ALM run ignores the `uld` options). An
    option missing from the stored config was added to uld after the run started: it agrees when the
    current value is that option's default, which keeps the behaviour the run was started with (an
    added option whose default depends on the env would not match, and the run is refused: safe).
    """
    defaults = config_to_dict(TrainConfig(agent=current.get("agent", DEFAULT_AGENT)))
    return _differences(stored, current, defaults, prefix="")


def _differences(stored: dict, current: dict, defaults: dict, *, prefix: str) -> list[str]:
    differences = []
    for key in sorted(set(stored) | set(current)):
        if not prefix and (key in RESUMABLE_CHANGES or (key in agent_names() and key != current.get("agent"))):
            continue
        a, b = stored.get(key), current.get(key)
        if key not in stored and b == defaults.get(key):
            continue
        if isinstance(a, dict) and isinstance(b, dict):
            differences += _differences(a, b, defaults.get(key, {}), prefix=prefix + key + ".")
        elif a != b:
            differences.append(f"{prefix}{key} (run: {a!r}, this command: {b!r})")
    return differences


def parse_seed_list(text: str, *, max_count: int | None = None, repeats: bool = True) -> list[int]:
    """Seeds written as ranges and lists ("0-2,7" -> [0, 1, 2, 7]), for --seeds of uld train and uld sweep.

    With ``repeats`` a seed named twice counts once; without, it is refused. ``max_count`` is checked
    before a range is expanded. Raises UldError naming what is wrong.
    """
    seeds: dict[int, None] = {}
    for part in text.replace(" ", "").split(","):
        match = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
        if not match or (match.group(2) is not None and int(match.group(2)) < int(match.group(1))):
            raise UldError(f"--seeds {text!r} is not a list of seeds; write a range like 0-9, a list like "
                           "0,3,5, or one seed")
        first = int(match.group(1))
        last = int(match.group(2)) if match.group(2) is not None else first
        if last >= 2**32:
            raise UldError(f"--seeds {text!r} names a seed of 2^32 or more; seeds are below 2^32")
        if max_count is not None and len(seeds) + last - first + 1 > max_count:
            raise UldError(f"--seeds {text!r} names more than {max_count} seeds; one process trains at most "
                           f"{max_count} (uld sweep --seeds-per-process groups more)")
        for seed in range(first, last + 1):
            if seed in seeds and not repeats:
                raise UldError(f"--seeds {text!r} names a seed more than once; name each seed once")
            seeds[seed] = None
    return list(seeds)


MAX_SEEDS = 256
"""Seeds one process may train: each has two envs, a replay and a run directory of its own."""


def parse_seeds(text: str) -> list[int]:
    """'0-9' -> [0, ..., 9]; '0,3,5' -> [0, 3, 5]; '3' -> [3]; ranges and lists mix ('0-2,7'). Each seed
    once, at most MAX_SEEDS of them."""
    return parse_seed_list(text, max_count=MAX_SEEDS, repeats=False)


def seed_configs(config: TrainConfig) -> list[TrainConfig]:
    """Each seed's resolved single-seed config: its seed, and its run directory (with --seeds: <out>/seed<k>
    when --out is given, else the single-seed default runs/<agent>/<env>/seed<k>)."""
    if config.seeds is None:
        return [config.resolved()]
    configs = []
    for seed in parse_seeds(config.seeds):
        out = str(Path(config.out) / f"seed{seed}") if config.out is not None else None
        configs.append(dataclasses.replace(config, seed=seed, seeds=None, out=out).resolved())
    return configs


def parse_train_args(argv: list[str]) -> TrainConfig:
    """uld train's options as a TrainConfig (uld sweep checks the options it passes on with it too).

    The agent is read first (``--agent NAME``, default uld), so that the options offered are that agent's
    own: --NAME.* for its hyperparameters. --small, too, is read first: it changes the defaults that the
    other flags override.
    """
    from uld.train.validation import parse_options

    agent = get_agent(_option_value(argv, "--agent") or DEFAULT_AGENT)
    small = "--small" in argv
    command = _command_type(agent)
    default = command(agent=agent.name, small=small, **{agent.name: agent.default_config(small)})
    parsed = parse_options(command, argv, "uld train", default=default, description=TrainConfig.__doc__)
    values = {f.name: getattr(parsed, f.name) for f in dataclasses.fields(TrainConfig) if f.name != "agent_config"}
    return TrainConfig(**values, agent_config=getattr(parsed, agent.name))


def command_type(argv: list[str]) -> type:
    """The dataclass uld train parses `argv` into: TrainConfig with the chosen agent's options."""
    return _command_type(get_agent(_option_value(argv, "--agent") or DEFAULT_AGENT))


def _option_value(argv: list[str], option: str) -> str | None:
    """The value given to ``option`` in ``argv`` (``--agent alm`` or ``--agent=alm``), the last one counting."""
    value = None
    for i, arg in enumerate(argv):
        if arg == option and i + 1 < len(argv):
            value = argv[i + 1]
        elif arg.startswith(option + "="):
            value = arg.partition("=")[2]
    return value


def _command_type(agent: AgentSpec) -> type:
    """TrainConfig with the agent's hyperparameters as the options --<agent>.*, for tyro."""
    import tyro

    if agent.name in _FIELDS:
        raise UldError(f"an agent cannot be called {agent.name!r}: uld train has an option of that name")
    from uld.envs.registry import domains

    names = tuple(agent_names())
    help_agent = f"Which agent to train: {', '.join(names)} (uld train --agent NAME --help lists its options)."
    help_env = (f"Env name, <domain>:<id>, e.g. {', '.join(d.example for d in domains())}; a user's Gymnasium env "
                "as gym:<module>:<id>, which imports the module that registers it.")
    return dataclasses.make_dataclass("TrainCommand", [
        ("agent", Annotated[Literal[names], tyro.conf.arg(help=help_agent)], field(default=agent.name)),
        ("env", Annotated[str, tyro.conf.arg(help=help_env)], field(default=TrainConfig.env)),
        ("agent_config", tyro.conf.Suppress[Any], field(default=None)),
        (agent.name, Annotated[agent.config, tyro.conf.arg(help=f"{agent.title or agent.name} hyperparameters.")],
         field(default_factory=agent.config)),
    ], bases=(TrainConfig,), frozen=True)
