"""dm_control suite tasks, proprioceptive or from pixels (docs/algorithm.md, Protocols: DMC, DMC visual).

Protocol: action repeat 2 with rewards summed, 500 agent steps per episode (= 1000 env steps,
dm_control's own time limit), actions in [-1, 1] mapped onto the action spec's bounds, task seeded
with the run seed. Observations: ``dmc:`` flattens all observation entries, in order, into one
float32 vector; ``dmc-pixels:`` renders an 84x84 RGB frame after every agent step (camera 0,
quadruped camera 2) and returns the last 3 frames stacked channel-first, (9, 84, 84) uint8.
dm_control is imported only when an env is made, so ``import uld`` stays fast.
"""

from __future__ import annotations

import difflib
import os
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import numpy as np

from uld.envs.base import RENDER_HELP, Env, EnvSpec, FrameHistory, unit_to_bounds
from uld.envs.protocol import Protocol
from uld.envs.registry import Domain, Normalization, register_domain
from uld.errors import UldError

if TYPE_CHECKING:
    from dm_control.rl.control import Environment

ACTION_REPEAT = 2
"""Env steps per agent step (docs/algorithm.md, Protocols: DMC protocol, action repeat 2)."""

MAX_EPISODE_STEPS = 500
"""Agent steps per episode (docs/algorithm.md, Protocols: DMC protocol); also caps tasks without a time limit (LQR)."""

DMC_SUITE_28 = (
    "acrobot-swingup",
    "ball_in_cup-catch",
    "cartpole-balance",
    "cartpole-balance_sparse",
    "cartpole-swingup",
    "cartpole-swingup_sparse",
    "cheetah-run",
    "dog-run",
    "dog-stand",
    "dog-trot",
    "dog-walk",
    "finger-spin",
    "finger-turn_easy",
    "finger-turn_hard",
    "fish-swim",
    "hopper-hop",
    "hopper-stand",
    "humanoid-run",
    "humanoid-stand",
    "humanoid-walk",
    "pendulum-swingup",
    "quadruped-run",
    "quadruped-walk",
    "reacher-easy",
    "reacher-hard",
    "walker-run",
    "walker-stand",
    "walker-walk",
)
"""The 28 tasks of the DMC benchmark (docs/algorithm.md, Protocols: DMC), as ``domain-task`` names."""

_CAMERA_BY_DOMAIN = {"quadruped": 2}
"""Render camera per domain, 0 otherwise (docs/algorithm.md, Protocols: DMC visual protocol)."""

PIXEL_SIZE = 84
"""Side of the rendered square frame (docs/algorithm.md, Protocols: DMC visual protocol, 84x84 RGB)."""

PIXEL_HISTORY = 3
"""Frames per pixel observation (docs/algorithm.md, Protocols: DMC visual protocol, 3-frame history)."""

_GL_AT_RESET = {"dmc:quadruped-escape"}
"""Tasks whose reset opens an OpenGL context (dm_control uploads the new terrain to the renderer)."""


def _import_suite():
    """``dm_control.suite``; a MUJOCO_GL backend that cannot load becomes a UldError saying what to set."""
    try:
        from dm_control import suite
    except (ImportError, AttributeError, RuntimeError, OSError) as err:  # PyOpenGL fails in several ways
        if isinstance(err, ModuleNotFoundError) and (err.name or "").split(".")[0] == "dm_control":
            raise  # dm_control itself is missing: not a rendering problem
        raise UldError(f"dm_control could not load its OpenGL backend MUJOCO_GL={os.environ.get('MUJOCO_GL')} "
                       f"({err}); {RENDER_HELP}.") from err
    return suite


def list_dmc_tasks() -> list[str]:
    """Every dm_control suite task as a ``domain-task`` name, in the suite's order."""
    return [f"{domain}-{task}" for domain, task in _import_suite().ALL_TASKS]


def _flatten(observation: dict[str, Any]) -> np.ndarray:
    """All observation entries raveled and concatenated in order, as one float32 vector."""
    return np.concatenate([np.ravel(value) for value in observation.values()], dtype=np.float32)


def _concatenate(observation: dict[str, Any]) -> np.ndarray:
    """``_flatten`` for tasks whose entries are all vectors already: skips the ravels (1 us a step)."""
    return np.concatenate(list(observation.values()), dtype=np.float32)


class DmcEnv:
    """A dm_control suite task behind uld's Env interface (see uld.envs.base.Env)."""

    def __init__(self, name: str, env: Environment, seed: int, camera_id: int) -> None:
        self._env = env
        self._camera_id = camera_id
        self._rng = np.random.default_rng(seed)
        self._steps = 0
        action_spec = env.action_spec()
        self._action_map = unit_to_bounds(action_spec.minimum, action_spec.maximum)
        obs_specs = env.observation_spec().values()
        obs_dim = sum(int(np.prod(spec.shape)) for spec in obs_specs)
        self._flatten = _concatenate if all(len(spec.shape) == 1 for spec in obs_specs) else _flatten
        self.spec = EnvSpec(
            name=f"dmc:{name}",
            obs_shape=(obs_dim,),
            action_dim=int(action_spec.shape[0]),
            discrete=False,
            max_episode_steps=MAX_EPISODE_STEPS,
        )

    def reset(self) -> np.ndarray:
        """Start an episode; initial states come from the task's RNG, seeded once at creation."""
        self._steps = 0
        try:
            time_step = self._env.reset()
        except Exception as err:  # noqa: BLE001 - every OpenGL backend fails with its own type
            if self.spec.name not in _GL_AT_RESET:
                raise
            raise UldError(f"{self.spec.name} needs OpenGL even without rendering ({err}); {RENDER_HELP}.") from err
        return self._flatten(time_step.observation)

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        """Apply an action in [-1, 1]^A for ACTION_REPEAT env steps; rewards are summed.

        dm_control ends every episode by its time limit, which is a truncation; ``terminated`` is
        True only when the task ends the episode with discount 0.
        """
        if self._action_map is not None:
            action = action * self._action_map[0] + self._action_map[1]
        reward = 0.0
        for _ in range(ACTION_REPEAT):
            time_step = self._env.step(action)
            reward += time_step.reward
            if time_step.last():
                break
        self._steps += 1
        terminated = bool(time_step.last() and time_step.discount == 0.0)
        truncated = not terminated and (time_step.last() or self._steps >= MAX_EPISODE_STEPS)
        return self._flatten(time_step.observation), float(reward), terminated, truncated, {}

    def sample_action(self) -> np.ndarray:
        """A uniform action in [-1, 1]^A from the generator seeded with the env's seed."""
        return self._rng.uniform(-1.0, 1.0, size=self.spec.action_dim).astype(np.float32)

    def rng_state(self) -> dict[str, Any]:
        """The task's RandomState (initial states, noise) and the sample_action generator, as plain data."""
        kind, keys, pos, has_gauss, cached = self._env.task.random.get_state()
        return {"task": {"kind": kind, "keys": keys, "pos": int(pos), "has_gauss": int(has_gauss),
                         "cached_gaussian": float(cached)},
                "sample": self._rng.bit_generator.state}

    def reseed(self, seed: int) -> None:
        """Seed the task's RandomState and the sample_action generator with ``seed``."""
        self._env.task.random.seed(seed)
        self._rng = np.random.default_rng(seed)

    def set_rng_state(self, state: dict[str, Any]) -> None:
        """Restore what rng_state returned."""
        task = state["task"]
        self._env.task.random.set_state((task["kind"], np.asarray(task["keys"], dtype=np.uint32), task["pos"],
                                         task["has_gauss"], task["cached_gaussian"]))
        self._rng.bit_generator.state = state["sample"]

    def render(self, height: int = 84, width: int = 84, camera_id: int | None = None) -> np.ndarray:
        """The current frame as a (height, width, 3) uint8 array; camera 0 (quadruped: 2) by default."""
        camera_id = self._camera_id if camera_id is None else camera_id
        try:
            return self._env.physics.render(height, width, camera_id=camera_id)
        except Exception as err:  # noqa: BLE001 - every OpenGL backend fails with its own type
            raise UldError(f"{self.spec.name} could not render ({err}); {RENDER_HELP}.") from err

    def close(self) -> None:
        """Release the physics (and its renderer)."""
        self._env.close()


class DmcPixelEnv(DmcEnv):
    """A dm_control task seen through its camera: (9, 84, 84) uint8 stacks of the last 3 RGB frames.

    One frame is rendered per agent step, after both repeated env steps (docs/algorithm.md, Protocols).
    The RNG state is the task's and sample_action's, as for DmcEnv: rendering draws no random numbers.
    """

    def __init__(self, name: str, env: Environment, seed: int, camera_id: int) -> None:
        super().__init__(name, env, seed, camera_id)
        self._history = FrameHistory(PIXEL_HISTORY, (3, PIXEL_SIZE, PIXEL_SIZE))
        self.spec = replace(self.spec, name=f"dmc-pixels:{name}", obs_shape=(3 * PIXEL_HISTORY, PIXEL_SIZE, PIXEL_SIZE),
                            pixels=True, frame_history=PIXEL_HISTORY)

    def _frame(self) -> np.ndarray:
        return self.render(PIXEL_SIZE, PIXEL_SIZE).transpose(2, 0, 1)

    def reset(self) -> np.ndarray:
        """Start an episode; its first frame fills the whole history."""
        super().reset()
        return self._history.reset(self._frame())

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        """DmcEnv.step, then render the new frame onto the history."""
        _, reward, terminated, truncated, info = super().step(action)
        return self._history.push(self._frame()), reward, terminated, truncated, info


def make_dmc_env(domain: str, task: str, seed: int, pixels: bool = False) -> Env:
    """Make the dm_control suite task ``domain``-``task`` (e.g. "cheetah", "run") with the DMC protocol.

    ``pixels`` selects the DMC visual protocol; the renderer is tried once here, so a machine that
    cannot render fails now, with a UldError naming the MUJOCO_GL setting, not at the first reset.
    Raises UldError, naming the closest suite tasks, when the task does not exist.
    """
    suite = _import_suite()
    prefix = "dmc-pixels" if pixels else "dmc"
    if (domain, task) not in suite.ALL_TASKS:
        name = f"{domain}-{task}"
        close = difflib.get_close_matches(name, list_dmc_tasks(), n=3)
        suggestions = ", ".join(f"{prefix}:{c}" for c in close)
        hint = f"did you mean {suggestions}?" if close else "see uld.envs.list_dmc_tasks()."
        raise UldError(f"Unknown dm_control task '{name}'; {hint}")
    env = suite.load(domain, task, task_kwargs={"random": seed})
    camera_id = _CAMERA_BY_DOMAIN.get(domain, 0)
    if not pixels:
        return DmcEnv(f"{domain}-{task}", env, seed, camera_id=camera_id)
    pixel_env = DmcPixelEnv(f"{domain}-{task}", env, seed, camera_id=camera_id)
    try:
        pixel_env.render(PIXEL_SIZE, PIXEL_SIZE)
    except UldError:
        pixel_env.close()
        raise
    return pixel_env


def _maker(pixels: bool):
    def make(env_id: str, seed: int, evaluation: bool) -> Env:  # noqa: ARG001 - one protocol for both envs
        domain, _, task = env_id.partition("-")  # the domain ends at the first "-"
        return make_dmc_env(domain, task, seed, pixels=pixels)

    return make


def dmc_normalized(score: float | np.ndarray) -> float | np.ndarray:
    """A DMC return (0 to 1000 per episode) on the 0-1 scale."""
    return np.asarray(score) / 1000.0


def _normalization(ids: list[str]) -> Normalization:  # noqa: ARG001 - every task's returns lie in [0, 1000]
    return Normalization("return / 1000", True, lambda env, returns: dmc_normalized(returns))


register_domain(Domain(
    prefix="dmc", make=_maker(pixels=False), protocol=Protocol(steps=500_000, eval_every=5_000, eval_episodes=10),
    title="DMC", example="dmc:walker-walk", names=list_dmc_tasks, reference_prefix="Dmc-", normalization=_normalization,
))
register_domain(Domain(
    prefix="dmc-pixels", make=_maker(pixels=True), protocol=Protocol(steps=500_000, eval_every=5_000, eval_episodes=10),
    title="DMC visual", example="dmc-pixels:walker-walk", names=list_dmc_tasks, reference_prefix="Dmc-visual-",
    normalization=_normalization,
))
