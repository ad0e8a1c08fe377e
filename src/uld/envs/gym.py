"""Gymnasium envs with vector observations, continuous or discrete actions (docs/algorithm.md, Protocols: Gym).

Protocol: no preprocessing, the env's registered time limit (1000 steps for the MuJoCo locomotion
tasks). The only changes uld makes are its conventions: continuous actions in [-1, 1] mapped
affinely onto the env's bounds, discrete actions as integer indices 0..n-1, float32 observations.
"""

from __future__ import annotations

import difflib
from typing import TYPE_CHECKING, Any

import numpy as np

from uld.envs.base import RENDER_HELP, Env, EnvSpec, unit_to_bounds
from uld.envs.protocol import Protocol
from uld.envs.registry import Domain, Normalization, register_domain
from uld.errors import UldError

if TYPE_CHECKING:
    import gymnasium

DEFAULT_TIME_LIMIT = 1000
"""Episode cap for an env registered without one (docs/algorithm.md, Protocols: Gym protocol, time limit 1000)."""

def _check_supported(name: str, env: gymnasium.Env) -> None:
    """Refuse spaces this env type does not handle (one place, so a later issue can lift it)."""
    from gymnasium import spaces

    action_space, obs_space = env.action_space, env.observation_space
    if not isinstance(action_space, spaces.Discrete) and (
        not isinstance(action_space, spaces.Box) or len(action_space.shape) != 1
    ):
        raise UldError(
            f"{name} has a {type(action_space).__name__} action space; uld supports flat continuous "
            "(Box) and Discrete action spaces, such as those of gym:HalfCheetah-v5 and gym:CartPole-v1."
        )
    if isinstance(obs_space, spaces.Box) and (len(obs_space.shape) >= 2 or obs_space.dtype == np.uint8):
        raise UldError(
            f"{name} has image observations of shape {obs_space.shape}; uld takes pixels from the "
            "atari: and dmc-pixels: envs, so choose one of those or a gym: env with vector observations."
        )
    if not isinstance(obs_space, spaces.Box):
        raise UldError(
            f"{name} has a {type(obs_space).__name__} observation space; uld supports only flat vector "
            "(Box) observations, such as those of gym:HalfCheetah-v5."
        )


class GymEnv:
    """A Gymnasium env behind uld's Env interface (see uld.envs.base.Env)."""

    def __init__(self, name: str, env: gymnasium.Env, seed: int, max_episode_steps: int) -> None:
        from gymnasium import spaces

        self._env = env
        self._seed: int | None = seed
        self._rng = np.random.default_rng(seed)
        action_space = env.action_space  # Discrete or a flat Box (_check_supported)
        discrete = isinstance(action_space, spaces.Discrete)
        if isinstance(action_space, spaces.Discrete):
            self._action_map = None
            self._action_start = int(action_space.start)  # uld's index 0 is the space's first action
            action_dim = int(action_space.n)
        else:
            assert isinstance(action_space, spaces.Box)
            self._action_map = unit_to_bounds(action_space.low, action_space.high)
            action_dim = action_space.shape[0]
        self.spec = EnvSpec(
            name=name,
            obs_shape=tuple(env.observation_space.shape),
            action_dim=action_dim,
            discrete=discrete,
            max_episode_steps=max_episode_steps,
        )

    def reset(self) -> np.ndarray:
        """Start an episode; the first reset seeds the env, later ones continue its RNG."""
        obs, _ = self._env.reset(seed=self._seed)
        self._seed = None
        return obs.astype(np.float32, copy=False)

    def step(self, action: np.ndarray | int) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        """Apply an action in [-1, 1]^A, or an index 0..n-1; return (obs, reward, terminated, truncated, info)."""
        if self.spec.discrete:
            action = int(action) + self._action_start
        elif self._action_map is not None:
            action = action * self._action_map[0] + self._action_map[1]
        obs, reward, terminated, truncated, info = self._env.step(action)
        return obs.astype(np.float32, copy=False), float(reward), bool(terminated), bool(truncated), info

    def sample_action(self) -> np.ndarray | int:
        """A uniform action in [-1, 1]^A, or a uniform index, from the generator seeded with the env's seed."""
        if self.spec.discrete:
            return int(self._rng.integers(self.spec.action_dim))
        return self._rng.uniform(-1.0, 1.0, size=self.spec.action_dim).astype(np.float32)

    def rng_state(self) -> dict[str, Any]:
        """The env's reset RNG (once seeded) and the sample_action generator, as plain data."""
        state: dict[str, Any] = {"pending_seed": self._seed, "sample": self._rng.bit_generator.state}
        if self._seed is None:
            state["env"] = self._env.unwrapped.np_random.bit_generator.state
        return state

    def reseed(self, seed: int) -> None:
        """The next reset seeds the env with ``seed``; sample_action restarts from it too."""
        self._seed = seed
        self._rng = np.random.default_rng(seed)

    def set_rng_state(self, state: dict[str, Any]) -> None:
        """Restore what rng_state returned."""
        self._seed = state["pending_seed"]
        self._rng.bit_generator.state = state["sample"]
        if "env" in state:
            self._env.unwrapped.np_random.bit_generator.state = state["env"]

    def render(self) -> np.ndarray:
        """The current frame as an (H, W, 3) uint8 array, at the env's default render size."""
        from gymnasium.error import DependencyNotInstalled

        try:
            frame = self._env.render()
        except DependencyNotInstalled as err:  # a non-MuJoCo env's renderer (pygame) is missing
            raise UldError(f"{self.spec.name} could not render: {err}.") from err
        except Exception as err:  # noqa: BLE001 - every OpenGL backend fails with its own type
            raise UldError(f"{self.spec.name} could not render ({err}); {RENDER_HELP}.") from err
        return np.asarray(frame)

    def close(self) -> None:
        """Release the env and its renderer."""
        self._env.close()


def make_gym_env(env_id: str, seed: int) -> Env:
    """Make the registered Gymnasium env ``env_id`` (e.g. "HalfCheetah-v5") with uld's conventions.

    ``env_id`` may name the module that registers it, Gymnasium's ``module:id`` convention
    ("my_package.envs:MyEnv-v0"): the module is imported first. Raises UldError, naming the closest
    registered ids, when ``env_id`` is unknown or its module cannot be imported; and when the env has
    image observations or an action space other than a flat Box or Discrete.
    """
    import gymnasium

    import uld.envs.truncated  # noqa: F401
    from uld.envs.user_code import import_user_module

    module, _, registered_id = env_id.rpartition(":")
    if module:
        try:
            import_user_module(module, f"gym:{env_id}")
        except ImportError as err:
            raise UldError(f"gym:{env_id} names the module {module}, which cannot be imported ({err}); "
                           "install it or put it on PYTHONPATH") from err
    if registered_id not in gymnasium.registry:
        close = difflib.get_close_matches(registered_id, list(gymnasium.registry), n=3)
        where = f" after importing {module}" if module else ""
        hint = f"did you mean {', '.join('gym:' + c for c in close)}?" if close else "see gymnasium.registry."
        raise UldError(f"Unknown Gymnasium env id '{registered_id}'{where}; {hint}")
    registered_limit = gymnasium.registry[registered_id].max_episode_steps
    max_episode_steps = registered_limit if registered_limit is not None else DEFAULT_TIME_LIMIT
    # rgb_array costs nothing per step: Gymnasium only opens its renderer on the first render(). An env
    # that does not render (a user's, often) is made without it.
    render = {"render_mode": "rgb_array"} if _renders_rgb(gymnasium.registry[registered_id]) else {}
    try:
        env = gymnasium.make(registered_id, max_episode_steps=max_episode_steps, **render)
    except (ImportError, gymnasium.error.Error) as err:
        raise UldError(f"gym:{env_id} cannot be created here: {err}") from err
    return wrap_gym_env(env, f"gym:{env_id}", seed, max_episode_steps)


def _renders_rgb(spec: gymnasium.envs.registration.EnvSpec) -> bool:
    """Whether the registered env declares rgb_array among its render modes."""
    from gymnasium.envs.registration import load_env_creator
    from gymnasium.error import Error

    try:
        creator = spec.entry_point if callable(spec.entry_point) else load_env_creator(spec.entry_point)
    except (ImportError, AttributeError, ValueError, TypeError, Error):  # Error: e.g. DependencyNotInstalled
        return True  # let gymnasium.make report what is wrong with the entry point
    return "rgb_array" in getattr(creator, "metadata", {}).get("render_modes", ())


def wrap_gym_env(env: gymnasium.Env, name: str, seed: int, max_episode_steps: int | None = None) -> Env:
    """A Gymnasium env instance behind uld's interface, called ``name``.

    Episodes are cut at ``max_episode_steps``: by default the env's own time limit, or DEFAULT_TIME_LIMIT
    when it has none. Closes the env and raises UldError when its spaces are not supported.
    """
    import gymnasium

    if max_episode_steps is None:
        limit = env.spec.max_episode_steps if env.spec is not None else None
        layer = env
        while limit is None and isinstance(layer, gymnasium.Wrapper):  # an env made without gymnasium.make
            if isinstance(layer, gymnasium.wrappers.TimeLimit):
                limit = layer._max_episode_steps
            layer = layer.env
        max_episode_steps = limit if limit is not None else DEFAULT_TIME_LIMIT
        if limit is None:
            env = gymnasium.wrappers.TimeLimit(env, max_episode_steps)
    try:
        _check_supported(name, env)
    except UldError:
        env.close()
        raise
    return GymEnv(name, env, seed, max_episode_steps)


def _make(env_id: str, seed: int, evaluation: bool) -> Env:  # noqa: ARG001 - one protocol for both envs
    return make_gym_env(env_id, seed)


def _registered_ids() -> list[str]:
    import gymnasium

    import uld.envs.truncated  # noqa: F401

    return list(gymnasium.registry)


def _gym_task(env_id: str) -> str:
    """"HalfCheetah-v4" -> "HalfCheetah"."""
    return env_id.rsplit("-v", 1)[0]


def td3_normalized(env_id: str, score: float | np.ndarray) -> float | np.ndarray:
    """A Gym MuJoCo return with the random policy at 0 and TD3 after 1M steps at 1 (as MR.Q reports Gym)."""
    from uld.analysis.reference_scores import GYM_RANDOM_TD3

    random, td3 = GYM_RANDOM_TD3[_gym_task(env_id)]
    return (np.asarray(score) - random) / (td3 - random)


def _normalization(ids: list[str]) -> Normalization | None:
    """TD3-normalized when every task has a TD3 score (the five locomotion tasks)."""
    from uld.analysis.reference_scores import GYM_RANDOM_TD3

    if not all(_gym_task(env_id) in GYM_RANDOM_TD3 for env_id in ids):
        return None
    return Normalization("TD3-normalized score", True,
                         lambda env, returns: td3_normalized(env.partition(":")[2], returns))


register_domain(Domain(
    prefix="gym", make=_make, protocol=Protocol(steps=1_000_000, eval_every=5_000, eval_episodes=10), title="Gym",
    example="gym:HalfCheetah-v5", names=_registered_ids, reference_prefix="Gym-", normalization=_normalization,
))
