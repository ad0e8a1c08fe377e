"""Environments by name: ``make_env("gym:HalfCheetah-v5", seed)``, ``make_env("atari:Pong", seed)``.

A name is ``<domain>:<id>``; each domain module registers its prefix (uld/envs/registry.py) and applies
its protocol (docs/algorithm.md, Protocols). The libraries behind the domains are imported only when an env
is made.
"""

from __future__ import annotations

import ctypes
import difflib
import os

from uld.envs.base import Env, EnvSpec
from uld.envs.dmc import DMC_SUITE_28, list_dmc_tasks, make_dmc_env
from uld.envs.gym import make_gym_env
from uld.envs.python import EnvFactory, env_from_factory
from uld.envs.registry import domains, find_domain, split_env_name
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

_GL_LIBRARIES = (("egl", ("libEGL.so.1", "libEGL.so")), ("osmesa", ("libOSMesa.so.8", "libOSMesa.so")))
"""Headless MuJoCo backends in order of preference, with the shared-library names each one can load."""


def choose_headless_gl() -> None:
    """Pick MuJoCo's OpenGL backend on a machine without a display, before dm_control or mujoco is imported.

    Both read MUJOCO_GL once, at import. Without a display, their automatic choice (GLFW) cannot
    open a context, so this sets MUJOCO_GL=egl, or osmesa where only OSMesa is installed. When
    neither library loads it leaves MUJOCO_GL unset: vector envs still work, and a pixel env's first
    render raises UldError naming the setting and the package to install. An explicit MUJOCO_GL, or
    a DISPLAY, is left alone.
    """
    if "MUJOCO_GL" in os.environ or os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"):
        return
    for backend, libraries in _GL_LIBRARIES:
        if any(_loads(library) for library in libraries):
            os.environ["MUJOCO_GL"] = backend
            return


def _loads(library: str) -> bool:
    try:
        ctypes.CDLL(library)
    except OSError:
        return False
    return True


# At import, so that the choice precedes dm_control and mujoco whenever uld is imported first.
choose_headless_gl()


def make_env(name: str | EnvFactory, seed: int, evaluation: bool = False) -> Env:
    """Make the env called ``name``, seeded with ``seed``; ``name`` may also be an env factory, called as
    ``name(seed=seed, evaluation=evaluation)`` (see uld.envs.python).

    Names: ``gym:<Gymnasium id>`` (e.g. ``gym:Hopper-v4``, ``gym:CartPole-v1``; a user's own env as
    ``gym:<module>:<id>``, which imports the module that registers it), ``dmc:<domain>-<task>`` (e.g.
    ``dmc:ball_in_cup-catch``; the domain ends at the first "-"), ``dmc-pixels:<domain>-<task>`` (the
    same tasks seen through the camera), ``atari:<Game>`` (ALE v5 names, e.g. ``atari:Pong``), or
    ``python:<module>:<function>`` (an env factory); more with ``uld.envs.registry.register_domain``.
    ``evaluation`` marks the evaluation env, whose protocol may differ: Atari's takes random actions
    with probability 0.001. Raises UldError, naming the closest valid names, for an unknown name.
    """
    if not isinstance(name, str):
        return env_from_factory(name, seed, evaluation)
    domain = find_domain(name)
    if domain is not None:
        return domain.make(split_env_name(name)[1], seed, evaluation)
    close = difflib.get_close_matches(name, _all_names(), n=3)
    examples = ", ".join(d.example for d in domains())
    hint = f"did you mean {', '.join(close)}?" if close else f"names look like {examples}."
    raise UldError(f"Unknown env name '{name}'; {hint}")


def _all_names() -> list[str]:
    """Every name make_env accepts for a registered env, for suggestions (imports the libraries)."""
    names = []
    for domain in domains():
        try:
            names += [f"{domain.prefix}:{env_id}" for env_id in (domain.names() if domain.names else ())]
        except (UldError, ImportError):  # an optional dependency (ale-py) is missing
            pass
    return names
