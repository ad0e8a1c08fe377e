"""Agents by name: what `uld train`, `uld sweep` and `uld.load` need to know about an agent, in one place.

An agent package registers one ``AgentSpec`` (see ``uld/agents/uld/__init__.py``); the trainer, the
CLI, the sweep and the run directory's config.json then know it by name. The built-in agents are
registered the first time the registry is read, so that ``import uld`` stays light, and so are the
modules that installed packages declare under the entry-point group ``uld.agents``: that is how an
agent of another package reaches the `uld` command (and the `uld train` processes of a sweep). From
Python, calling ``register_agent`` before training is enough.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from uld.errors import UldError
from uld.plugins import load_plugins

if TYPE_CHECKING:
    import torch

    from uld.envs.base import EnvSpec
    from uld.envs.protocol import Protocol

BUILTIN_AGENTS = ("uld.agents.uld", "uld.agents.drq", "uld.agents.alm")
"""Packages whose import registers the agents that ship with uld, in the order `uld train --help` lists them."""

DEFAULT_AGENT = "uld"
"""The agent `uld train` trains when --agent is not given."""


@dataclass(frozen=True)
class BuildContext:
    """What a run tells an agent's builder besides the env and the hyperparameters."""

    device: torch.device | str = "cpu"
    precision: str = "fp32"
    """fp32, or bf16 autocast of the training step."""
    seed: int = 0
    """The run's seed (replay sampling; networks are seeded by the run before the builder is called)."""
    total_steps: int = 0
    """The run's budget in agent steps (a replay may size itself by it)."""
    compiled: bool = False
    """torch.compile the networks."""
    cuda_graphs: bool = True
    """On a CUDA device, replay the updates as CUDA graphs (agents that have no graphed path ignore it)."""


@dataclass(frozen=True)
class AgentSpec:
    """One agent as uld's run machinery sees it.

    The config dataclass is the agent's whole hyperparameter set: `uld train --agent NAME` offers its
    fields as --NAME.* options, config.json stores it as the section NAME, and it must have an int
    field ``random_steps`` (uniformly random actions before training starts).
    """

    name: str
    """The --agent value, the run directory's runs/<name>/..., and the config.json section."""
    config: type
    """The hyperparameter dataclass (frozen); its defaults are the published ones."""
    build: Callable[[EnvSpec, Any, BuildContext], tuple[Any, Any]]
    """(env spec, config, context) -> (agent, replay buffer). The agent has act(obs, explore), update(buffer)
    -> metrics, state_dict() and load_state_dict(); the buffer has add(obs, action, reward, next_obs,
    terminated, truncated), can_sample, len(), state_dict() and load_state_dict(). States hold tensors,
    numpy arrays, numbers, strings and containers only (checkpoints load without unpickling)."""
    small: Callable[[], Any] | None = None
    """The reduced-size config of `uld train --small` (default: the full one)."""
    protocol: Callable[[str], Protocol] | None = None
    """Env name -> the budget and evaluation cadence the agent's paper uses (default: the env domain's)."""
    title: str = ""
    """The agent's name in messages and reports (default: ``name``)."""
    description: str = ""
    """One line for `uld train --help`."""
    discrete_actions: bool = True
    """Whether the agent handles discrete action spaces."""
    pixels: bool = True
    """Whether the agent handles pixel observations."""
    design_study: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    """Named variants for `uld sweep --design-study`: variant -> the config fields it changes."""
    build_seeds: Callable[[EnvSpec, Any, BuildContext, list[int]], tuple[Any, list] | None] | None = None
    """How a run of several seeds holds this agent. None: one instance per seed (made by `build`), stepped in
    turn, which works for any agent. Else the agent batches the seeds itself: (env spec, config, context,
    seeds) -> (one agent for all the seeds, one replay per seed), or None where this config or these seeds
    are better served one instance per seed. Such an agent has act(obs (S, ...), explore) -> (S, ...) actions,
    update(replays) -> (S,) metrics, a (S,) reward_scale, seed_state_dict(k) in `build`'s agent's state form
    and load_seed_state_dicts(states). `stacked_uld` is this for any agent whose config is a ULDConfig."""

    def default_config(self, small: bool = False) -> Any:
        """The config a run starts from: the reduced-size one with ``small``."""
        return self.small() if small and self.small is not None else self.config()

    def protocol_for(self, env_name: str) -> Protocol:
        """The budget and evaluation cadence of a run of this agent on ``env_name``."""
        if self.protocol is not None:
            return self.protocol(env_name)
        from uld.envs.protocol import protocol_for

        return protocol_for(env_name)

    def check_supports(self, spec: EnvSpec) -> None:
        """UldError, naming what to do instead, when this agent cannot act in an env like ``spec``."""
        others = [name for name, agent in _registry().items()
                  if (agent.discrete_actions or not spec.discrete) and (agent.pixels or not spec.pixels)]
        instead = f"use --agent {' or '.join(others)}" if others else "no registered agent can"
        if spec.discrete and not self.discrete_actions:
            raise UldError(f"{self.title or self.name} needs continuous actions but {spec.name} has discrete ones; "
                           f"{instead}, or an env with a Box action space such as gym:HalfCheetah-v5.")
        if spec.pixels and not self.pixels:
            raise UldError(f"{self.title or self.name} needs vector observations but {spec.name} has pixel "
                           f"observations; {instead}, or an env with vector observations such as gym:HalfCheetah-v5.")

    def variant_args(self, variant: str) -> list[str]:
        """The `uld train` options that select a design-study variant (e.g. ["--uld.value-model", "linear"])."""
        if variant not in self.design_study:
            raise UldError(f"unknown design-study variant {variant!r}; the variants are {', '.join(self.design_study)}")
        args = []
        for name, value in self.design_study[variant].items():
            flag = f"--{self.name}.{name.replace('_', '-')}"
            if isinstance(value, bool):
                args.append(flag if value else f"--{self.name}.no-{name.replace('_', '-')}")
            else:
                args += [flag, str(value)]
        return args


def stacked_uld(spec: EnvSpec, config: Any, context: BuildContext, seeds: list[int]) -> tuple[Any, list] | None:
    """The seeds of a ULD-like agent (its config a ULDConfig) as one StackedULD (uld/agents/stacked.py), with one
    replay per seed; None, for one instance per seed, for one seed (the single-seed agent stays the reference
    and is faster alone), for the design-study variant without model-based representations, which the
    stacked update does not map, and for --compile, which compiles each instance's update (docs/seeds.md)."""
    if len(seeds) < 2 or not config.model_based_representation or context.compiled:
        return None
    from uld.agents.stacked import StackedULD, make_buffers

    agent = StackedULD(spec, config, seeds, context.device, cuda_graphs=context.cuda_graphs,
                       precision=context.precision)
    return agent, make_buffers(spec, config, seeds, context.device)


_AGENTS: dict[str, AgentSpec] = {}
_builtins_loaded = False


def register_agent(agent: AgentSpec) -> AgentSpec:
    """Make ``agent`` known to `uld train`, `uld sweep` and `uld.load` under ``agent.name``.

    Registering a name again replaces the earlier agent (a module reloaded in a notebook).
    """
    if not dataclasses.is_dataclass(agent.config):
        raise TypeError(f"agent {agent.name!r}: config must be a dataclass, got {agent.config!r}")
    if "random_steps" not in {f.name for f in dataclasses.fields(agent.config)}:
        raise TypeError(f"agent {agent.name!r}: its config {agent.config.__name__} needs a random_steps field")
    _registry()
    _AGENTS[agent.name] = agent
    # Built-in packages register in whatever order imports run; list them in BUILTIN_AGENTS's, then the rest.
    rank = {module: i for i, module in enumerate(BUILTIN_AGENTS)}
    ordered = sorted(_AGENTS.values(), key=lambda known: rank.get(known.build.__module__, len(rank)))
    _AGENTS.clear()
    _AGENTS.update((known.name, known) for known in ordered)
    return agent


def _registry() -> dict[str, AgentSpec]:
    global _builtins_loaded
    if not _builtins_loaded:
        _builtins_loaded = True
        for module in BUILTIN_AGENTS:
            importlib.import_module(module)
        load_plugins("uld.agents")
    return _AGENTS


def agent_names() -> list[str]:
    """The registered agents' names."""
    return list(_registry())


def get_agent(name: str) -> AgentSpec:
    """The agent registered as ``name``; UldError naming the agents otherwise."""
    agents = _registry()
    if name not in agents:
        close = difflib.get_close_matches(name, agents, n=1)
        hint = f"did you mean {close[0]}? " if close else ""
        raise UldError(f"unknown agent {name!r}; {hint}the agents are {', '.join(agents)}")
    return agents[name]
