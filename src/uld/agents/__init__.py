"""Agents by name. Each agent package provides its config dataclass, the agent, and its replay."""

from __future__ import annotations

from typing import Any

from uld.envs.base import EnvSpec

AGENT_NAMES = ("uld", "alm")


def build_agent(name: str, spec: EnvSpec, config: Any, *, device, precision: str, seed: int,
                total_steps: int, compiled: bool = False, cuda_graphs: bool = True) -> tuple[Any, Any]:
    """Make the named agent and the replay buffer it learns from (on the agent's device).

    cuda_graphs: ULD on a CUDA device replays its updates as CUDA graphs (ignored elsewhere and by ALM).
    """
    if name == "uld":
        from uld.agents.uld.agent import ULDAgent, make_buffer

        agent = ULDAgent(spec, config, device=device, precision=precision, compiled=compiled, cuda_graphs=cuda_graphs)
        return agent, make_buffer(spec, config, seed, device)
    if name == "alm":
        from uld.agents.alm.agent import ALMAgent, make_buffer

        # The agent refuses discrete actions and pixels before the buffer allocates anything.
        agent = ALMAgent(spec, config, device=device, precision=precision, compiled=compiled)
        return agent, make_buffer(spec, config, seed, total_steps, device)
    raise ValueError(f"unknown agent {name!r}; the agents are {', '.join(AGENT_NAMES)}")
