"""Benchmark suites: named sets of envs sharing one protocol (docs/algorithm.md, Protocols).

Also the mapping between uld env names (``dmc:cheetah-run``) and the names the published result
files use (``Dmc-cheetah-run``; shared/reference/README.md), so that results can be compared.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass

from uld.analysis.reference_scores import ATARI_RANDOM_HUMAN
from uld.envs.dmc import DMC_SUITE_28
from uld.envs.protocol import Protocol
from uld.envs.registry import domain_from_reference_name, find_domain, get_domain, split_env_name
from uld.errors import UldError

GYM_TASKS = ("HalfCheetah", "Hopper", "Walker2d", "Ant", "Humanoid")
"""The Gym locomotion tasks of the benchmark (docs/algorithm.md, Protocols: Gym)."""


@dataclass(frozen=True)
class Suite:
    """A benchmark: its envs (uld names) and the protocol they are trained and evaluated with."""

    name: str
    envs: tuple[str, ...]
    protocol: Protocol
    description: str


SUITES: dict[str, Suite] = {
    suite.name: suite
    for suite in (
        Suite("gym", tuple(f"gym:{task}-v4" for task in GYM_TASKS), get_domain("gym").protocol,
              "Gymnasium MuJoCo locomotion, -v4 like the published curves"),
        Suite("gym-v5", tuple(f"gym:{task}-v5" for task in GYM_TASKS), get_domain("gym").protocol,
              "the same tasks in their current -v5 versions"),
        Suite("dmc", tuple(f"dmc:{task}" for task in DMC_SUITE_28), get_domain("dmc").protocol,
              "DeepMind Control, proprioceptive observations"),
        Suite("dmc-pixels", tuple(f"dmc-pixels:{task}" for task in DMC_SUITE_28), get_domain("dmc-pixels").protocol,
              "DeepMind Control from 84x84 pixels"),
        Suite("atari", tuple(f"atari:{game}" for game in ATARI_RANDOM_HUMAN), get_domain("atari").protocol,
              "Atari 2600 through ALE v5, sticky actions"),
    )
}
"""Every suite by name (docs/algorithm.md, Protocols; Atari: the 57 games of the human-normalized benchmark)."""


def get_suite(name: str) -> Suite:
    """The suite called ``name``; UldError naming the suites otherwise."""
    if name not in SUITES:
        close = difflib.get_close_matches(name, SUITES, n=1)
        hint = f"did you mean {close[0]}? " if close else ""
        raise UldError(f"unknown suite {name!r}; {hint}the suites are {', '.join(SUITES)} (uld suites lists them)")
    return SUITES[name]


def reference_name(env: str) -> str:
    """The name of a uld env in the published result files: its domain's reference prefix and suffix
    around the id (Gym-<id>, Dmc-<task>, Dmc-visual-<task>, Atari-<Game>-v5)."""
    domain = find_domain(env)
    name = domain.reference_name(split_env_name(env)[1]) if domain is not None else None
    return name if name is not None else env.replace(":", "-")


def env_from_reference_name(name: str) -> str:
    """The uld env name of a result-file name (the inverse of reference_name)."""
    found = domain_from_reference_name(name)
    return f"{found[0].prefix}:{found[1]}" if found is not None else name


def suites_table() -> str:
    """The suites with their budgets, as `uld suites` prints them."""
    header = ("suite", "tasks", "steps", "eval every", "episodes", "description")
    rows = [(s.name, str(len(s.envs)), f"{s.protocol.steps:,}", f"{s.protocol.eval_every:,}",
             str(s.protocol.eval_episodes), s.description) for s in SUITES.values()]
    widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in (header, *rows)]
    return "\n".join(lines)
