"""Environments by name: ``make_env("gym:HalfCheetah-v5", seed)``, ``make_env("atari:Pong", seed)``.

A name is ``<domain>:<id>``; each domain module applies its protocol (spec/ULD.md, "Domains").
The libraries behind the domains are imported only when an env is made.
"""

from __future__ import annotations

import ctypes
import difflib
import os

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


def make_env(name: str, seed: int, evaluation: bool = False) -> Env:
    """Make the env called ``name``, seeded with ``seed``.

    Names: ``gym:<Gymnasium id>`` (e.g. ``gym:Hopper-v4``, ``gym:CartPole-v1``), ``dmc:<domain>-<task>``
    (e.g. ``dmc:ball_in_cup-catch``; the domain ends at the first "-"), ``dmc-pixels:<domain>-<task>``
    (the same tasks seen through the camera) or ``atari:<Game>`` (ALE v5 names, e.g. ``atari:Pong``).
    ``evaluation`` marks the evaluation env, whose protocol may differ: Atari's takes random actions
    with probability 0.001. Raises UldError, naming the closest valid names, for an unknown name.
    """
    prefix, colon, rest = name.partition(":")
    if colon and prefix == "gym":
        return make_gym_env(rest, seed)
    if colon and prefix in ("dmc", "dmc-pixels"):
        domain, _, task = rest.partition("-")
        return make_dmc_env(domain, task, seed, pixels=prefix == "dmc-pixels")
    if colon and prefix == "atari":
        from uld.envs.atari import make_atari_env

        return make_atari_env(rest, seed, evaluation=evaluation)
    close = difflib.get_close_matches(name, _all_names(), n=3)
    examples = "gym:HalfCheetah-v5, dmc:walker-walk, dmc-pixels:walker-walk or atari:Pong"
    hint = f"did you mean {', '.join(close)}?" if close else f"names look like {examples}."
    raise UldError(f"Unknown env name '{name}'; {hint}")


def _all_names() -> list[str]:
    """Every name make_env accepts for a registered env, for suggestions (imports the libraries)."""
    import gymnasium

    from uld.envs.atari import atari_games

    tasks = list_dmc_tasks()
    names = [f"gym:{env_id}" for env_id in gymnasium.registry] + [f"dmc:{task}" for task in tasks]
    names += [f"dmc-pixels:{task}" for task in tasks]
    try:
        names += [f"atari:{game}" for game in atari_games()]
    except UldError:  # ale-py is an optional dependency
        pass
    return names
