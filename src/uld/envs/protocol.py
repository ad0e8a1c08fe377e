"""The reference protocol of a run: training budget and evaluation cadence (docs/algorithm.md, Protocols).

Each domain declares its own in its registration (uld/envs/registry.py); an agent may override it
with its paper's (uld/agents/registry.py).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Protocol:
    """Budget and evaluation cadence of a domain, in agent steps."""

    steps: int
    eval_every: int
    eval_episodes: int


DEFAULT_PROTOCOL = Protocol(steps=1_000_000, eval_every=5_000, eval_episodes=10)
"""For envs of no registered domain (unknown prefixes, which make_env rejects)."""


def domain_of(env_name: str) -> str:
    """The domain prefix of a uld env name ("dmc:cheetah-run" -> "dmc")."""
    return env_name.split(":", 1)[0]


def protocol_for(env_name: str) -> Protocol:
    """The reference protocol of the env's domain."""
    from uld.envs.registry import find_domain

    domain = find_domain(env_name)
    return domain.protocol if domain is not None else DEFAULT_PROTOCOL
