"""Gymnasium envs with vector observations, continuous or discrete actions (spec/ULD.md, "Domains": Gym).

Protocol: no preprocessing, the env's registered time limit (1000 steps for the MuJoCo locomotion
tasks). The only changes uld makes are its conventions: continuous actions in [-1, 1] mapped
affinely onto the env's bounds, discrete actions as integer indices 0..n-1, float32 observations.
"""

from __future__ import annotations

import difflib
from typing import TYPE_CHECKING, Any

import numpy as np

from uld.envs.base import Env, EnvSpec
from uld.errors import UldError

if TYPE_CHECKING:
    import gymnasium

UNBOUNDED = 1e6
"""Bounds at or beyond this magnitude mean "no bound" (dm_control's LQR declares ±1e10)."""

DEFAULT_TIME_LIMIT = 1000
"""Episode cap for an env registered without one (spec: Gym protocol, time limit 1000)."""

RENDER_HELP = (
    "set MUJOCO_GL=egl (needs libEGL, e.g. apt install libegl1) or MUJOCO_GL=osmesa "
    "(needs apt install libosmesa6) before starting Python"
)
"""What to do when MuJoCo cannot open an OpenGL context (headless machines)."""


def unit_to_bounds(low: np.ndarray, high: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """Scale and offset of the affine map from [-1, 1] onto [low, high]: ``a * scale + offset``.

    -1 maps to ``low``, 1 to ``high``, 0 to the midpoint. A dimension whose bound is infinite or at
    least ``UNBOUNDED`` in magnitude passes through unchanged. Returns None when the whole map is the
    identity, so callers can skip it.
    """
    low = np.asarray(low, dtype=np.float64)
    high = np.asarray(high, dtype=np.float64)
    unbounded = ~(np.isfinite(low) & np.isfinite(high)) | (np.abs(low) >= UNBOUNDED) | (np.abs(high) >= UNBOUNDED)
    low, high = np.where(unbounded, -1.0, low), np.where(unbounded, 1.0, high)
    scale, offset = (high - low) / 2.0, (high + low) / 2.0
    if np.all(scale == 1.0) and np.all(offset == 0.0):
        return None
    return scale, offset


def _check_supported(env_id: str, env: gymnasium.Env) -> None:
    """Refuse spaces this env type does not handle (one place, so a later issue can lift it)."""
    from gymnasium import spaces

    action_space, obs_space = env.action_space, env.observation_space
    if not isinstance(action_space, spaces.Discrete) and (
        not isinstance(action_space, spaces.Box) or len(action_space.shape) != 1
    ):
        raise UldError(
            f"gym:{env_id} has a {type(action_space).__name__} action space; uld supports flat continuous "
            "(Box) and Discrete action spaces, such as those of gym:HalfCheetah-v5 and gym:CartPole-v1."
        )
    if isinstance(obs_space, spaces.Box) and (len(obs_space.shape) >= 2 or obs_space.dtype == np.uint8):
        raise UldError(
            f"gym:{env_id} has image observations of shape {obs_space.shape}; uld takes pixels from the "
            "atari: and dmc-pixels: envs, so choose one of those or a gym: env with vector observations."
        )
    if not isinstance(obs_space, spaces.Box):
        raise UldError(
            f"gym:{env_id} has a {type(obs_space).__name__} observation space; uld supports only flat vector "
            "(Box) observations, such as those of gym:HalfCheetah-v5."
        )


class GymEnv:
    """A Gymnasium env behind uld's Env interface (see uld.envs.base.Env)."""

    def __init__(self, env_id: str, env: gymnasium.Env, seed: int, max_episode_steps: int) -> None:
        from gymnasium import spaces

        self._env = env
        self._seed: int | None = seed
        self._rng = np.random.default_rng(seed)
        discrete = isinstance(env.action_space, spaces.Discrete)
        if discrete:
            self._action_map = None
            self._action_start = int(env.action_space.start)  # uld's index 0 is the space's first action
            action_dim = int(env.action_space.n)
        else:
            self._action_map = unit_to_bounds(env.action_space.low, env.action_space.high)
            action_dim = env.action_space.shape[0]
        self.spec = EnvSpec(
            name=f"gym:{env_id}",
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

    Raises UldError, naming the closest registered ids, when ``env_id`` is unknown; and when the
    env has image observations or an action space other than a flat Box or Discrete.
    """
    import gymnasium
    import uld.envs.truncated  # noqa: F401

    if env_id not in gymnasium.registry:
        close = difflib.get_close_matches(env_id, list(gymnasium.registry), n=3)
        hint = f"did you mean {', '.join('gym:' + c for c in close)}?" if close else "see gymnasium.registry."
        raise UldError(f"Unknown Gymnasium env id '{env_id}'; {hint}")
    registered_limit = gymnasium.registry[env_id].max_episode_steps
    max_episode_steps = registered_limit if registered_limit is not None else DEFAULT_TIME_LIMIT
    try:
        # rgb_array costs nothing per step: Gymnasium only opens its renderer on the first render().
        env = gymnasium.make(env_id, render_mode="rgb_array", max_episode_steps=max_episode_steps)
    except (ImportError, gymnasium.error.Error) as err:
        raise UldError(f"gym:{env_id} cannot be created here: {err}") from err
    try:
        _check_supported(env_id, env)
    except UldError:
        env.close()
        raise
    return GymEnv(env_id, env, seed, max_episode_steps)
