"""Each domain's reference protocol: training budget and evaluation cadence (spec/ULD.md, Domains)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Protocol:
    """Budget and evaluation cadence of a domain, in agent steps."""

    steps: int
    eval_every: int
    eval_episodes: int


PROTOCOLS: dict[str, Protocol] = {
    "gym": Protocol(steps=1_000_000, eval_every=5_000, eval_episodes=10),
    "dmc": Protocol(steps=500_000, eval_every=5_000, eval_episodes=10),
    "dmc-pixels": Protocol(steps=500_000, eval_every=5_000, eval_episodes=10),
    "atari": Protocol(steps=2_500_000, eval_every=100_000, eval_episodes=10),
}


def domain_of(env_name: str) -> str:
    """The domain prefix of a uld env name ("dmc:cheetah-run" -> "dmc")."""
    return env_name.split(":", 1)[0]


def protocol_for(env_name: str) -> Protocol:
    """The reference protocol of the env's domain (Gym's for unknown prefixes, which make_env rejects)."""
    return PROTOCOLS.get(domain_of(env_name), PROTOCOLS["gym"])
