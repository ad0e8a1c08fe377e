"""Environments by name: ``make_env("gym:HalfCheetah-v5", seed)``, ``make_env("dmc:walker-walk", seed)``.

A name is ``<domain>:<id>``; each domain module applies its protocol (spec/ULD.md, "Domains").
The libraries behind the domains are imported only when an env is made.
"""

from __future__ import annotations

import difflib

from uld.envs.base import Env, EnvSpec
from uld.envs.dmc import DMC_SUITE_28, list_dmc_tasks, make_dmc_env
from uld.envs.gym import make_gym_env
from uld.errors import UldError

__all__ = [
    "DMC_SUITE_28",
    "Env",
    "EnvSpec",
    "list_dmc_tasks",
    "make_dmc_env",
    "make_env",
    "make_gym_env",
]

_NOT_YET = {
    "dmc-pixels": "pixel observations for DMC are not supported yet; use dmc:{rest} for proprioceptive observations",
    "atari": "Atari envs are not supported yet; they arrive with the pixels/discrete issue",
}
"""Name prefixes reserved for later issues, with the sentence that explains the refusal."""


def make_env(name: str, seed: int) -> Env:
    """Make the env called ``name``, seeded with ``seed``.

    Names: ``gym:<Gymnasium id>`` (e.g. ``gym:Hopper-v4``) or ``dmc:<domain>-<task>`` (e.g.
    ``dmc:ball_in_cup-catch``; the domain ends at the first "-"). Raises UldError, naming the closest
    valid names, for an unknown name, and for names reserved for envs not supported yet.
    """
    prefix, colon, rest = name.partition(":")
    if colon and prefix == "gym":
        return make_gym_env(rest, seed)
    if colon and prefix == "dmc":
        domain, _, task = rest.partition("-")
        return make_dmc_env(domain, task, seed)
    if colon and prefix in _NOT_YET:
        raise UldError(f"{name}: {_NOT_YET[prefix].format(rest=rest)}.")
    close = difflib.get_close_matches(name, _all_names(), n=3)
    hint = f"did you mean {', '.join(close)}?" if close else "names look like gym:HalfCheetah-v5 or dmc:walker-walk."
    raise UldError(f"Unknown env name '{name}'; {hint}")


def _all_names() -> list[str]:
    """Every name make_env accepts for a registered env, for suggestions (imports both libraries)."""
    import gymnasium

    return [f"gym:{env_id}" for env_id in gymnasium.registry] + [f"dmc:{task}" for task in list_dmc_tasks()]
