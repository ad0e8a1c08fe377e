"""Agents by name (uld/agents/registry.py): each agent package registers its config, builder and protocol."""

from __future__ import annotations

from typing import Any

from uld.agents.registry import AgentSpec, BuildContext, agent_names, get_agent, register_agent
from uld.envs.base import EnvSpec

__all__ = ["AgentSpec", "BuildContext", "agent_names", "build_agent", "get_agent", "register_agent"]


def build_agent(name: str, spec: EnvSpec, config: Any, *, device, precision: str, seed: int,
                total_steps: int, compiled: bool = False, cuda_graphs: bool = True) -> tuple[Any, Any]:
    """Make the named agent and the replay buffer it learns from, on the agent's device; UldError when it
    cannot act in ``spec``. cuda_graphs: on a CUDA device, replay the updates as CUDA graphs where the
    agent can."""
    agent = get_agent(name)
    agent.check_supports(spec)
    context = BuildContext(device=device, precision=precision, seed=seed, total_steps=total_steps, compiled=compiled,
                           cuda_graphs=cuda_graphs)
    return agent.build(spec, config, context)
