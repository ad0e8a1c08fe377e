"""Envs made by a Python function: ``python:<module>:<function>`` (uld's name for an env factory).

``train`` records a factory passed from Python under this name, so that the run resumes, and
``uld.load`` rebuilds the env, wherever the module can be imported. The function is called as
``function(seed=..., evaluation=...)`` and returns a uld Env or a Gymnasium env, which is wrapped with
uld's conventions (actions in [-1, 1] or indices, float32 observations).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from uld.envs.base import Env
from uld.envs.protocol import DEFAULT_PROTOCOL
from uld.envs.registry import Domain, register_domain
from uld.errors import UldError

EnvFactory = Callable[..., Any]
"""``factory(seed=int, evaluation=bool)`` -> a uld Env or a gymnasium.Env."""


def factory_name(factory: EnvFactory) -> str:
    """The uld env name of a factory: ``python:<module>:<qualified name>``."""
    return f"python:{factory.__module__}:{factory.__qualname__}"


def env_from_factory(factory: EnvFactory, seed: int, evaluation: bool, name: str | None = None) -> Env:
    """Call ``factory``; wrap what it returns when it is a Gymnasium env."""
    env = factory(seed=seed, evaluation=evaluation)
    if hasattr(env, "spec") and hasattr(env, "sample_action"):  # a uld Env already
        return env
    import gymnasium

    if isinstance(env, gymnasium.Env):
        from uld.envs.gym import wrap_gym_env

        return wrap_gym_env(env, name or factory_name(factory), seed)
    raise UldError(f"the env factory {factory_name(factory)} returned a {type(env).__name__}; it must return "
                   "a gymnasium.Env or an env with uld's interface (uld.envs.base.Env)")


def _make(env_id: str, seed: int, evaluation: bool) -> Env:
    module_name, _, qualname = env_id.partition(":")
    try:
        target: Any = importlib.import_module(module_name)
        for part in qualname.split("."):
            target = getattr(target, part)
    except (ImportError, AttributeError) as err:
        raise UldError(f"python:{env_id} cannot be found ({err}); a factory defined inside a function or as a "
                       "lambda cannot be found again by name, so pass it to train() again") from err
    return env_from_factory(target, seed, evaluation, name=f"python:{env_id}")


register_domain(Domain(prefix="python", make=_make, protocol=DEFAULT_PROTOCOL, title="Python",
                       example="python:my_package.envs:make_env"))
