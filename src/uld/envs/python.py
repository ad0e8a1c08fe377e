"""Envs made by a Python function: ``python:<module>:<function>`` (uld's name for an env factory).

``train`` records a factory passed from Python under this name, so that the run resumes, and
``uld.load`` rebuilds the env, wherever the module can be imported. The function is called as
``function(seed=..., evaluation=...)`` and returns a uld Env or a Gymnasium env, which is wrapped with
uld's conventions (actions in [-1, 1] or indices, float32 observations).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from uld.envs.base import Env
from uld.envs.protocol import DEFAULT_PROTOCOL
from uld.envs.registry import Domain, register_domain
from uld.envs.user_code import import_user_module, where
from uld.errors import UldError

EnvFactory = Callable[..., Any]
"""``factory(seed=int, evaluation=bool)`` -> a uld Env or a gymnasium.Env."""


def factory_name(factory: EnvFactory) -> str:
    """The uld env name of a factory: ``python:<module>:<qualified name>``."""
    return f"python:{factory.__module__}:{factory.__qualname__}"


def env_from_factory(factory: EnvFactory, seed: int, evaluation: bool, name: str | None = None) -> Env:
    """Call ``factory``; wrap what it returns when it is a Gymnasium env. A factory that does not take
    ``seed`` and ``evaluation``, or raises, is one UldError."""
    try:
        inspect.signature(factory).bind(seed=seed, evaluation=evaluation)
    except TypeError:
        raise UldError(f"the env factory {factory_name(factory)} takes {inspect.signature(factory)}; it must take the "
                       "keyword arguments seed and evaluation, as make_env(seed=0, evaluation=False)") from None
    except ValueError:  # a builtin without a signature: called as it is
        pass
    try:
        env = factory(seed=seed, evaluation=evaluation)
    except UldError:
        raise
    except SystemExit as exit_:
        raise UldError(f"the env factory {factory_name(factory)} called sys.exit({exit_.code!r}); it must return an "
                       "env") from None
    except Exception as error:  # noqa: BLE001 - whatever user code raises is reported alike
        raise UldError(f"the env factory {factory_name(factory)} raised {type(error).__name__}: {error}"
                       f"{where(error)}; fix the factory") from None
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
        target: Any = import_user_module(module_name, f"python:{env_id}")
        for part in qualname.split("."):
            target = getattr(target, part)
    except (ImportError, AttributeError) as err:
        raise UldError(f"python:{env_id} cannot be found ({err}); a factory defined inside a function or as a "
                       "lambda cannot be found again by name, so pass it to train() again") from err
    return env_from_factory(target, seed, evaluation, name=f"python:{env_id}")


register_domain(Domain(prefix="python", make=_make, protocol=DEFAULT_PROTOCOL, title="Python",
                       example="python:my_package.envs:make_env"))
