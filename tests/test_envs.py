"""Behaviour of the vector-observation envs (uld.envs): protocols, scaling, seeding, names."""

from __future__ import annotations

import os
import subprocess
import sys
from collections import OrderedDict
from pathlib import Path

import dm_env
import gymnasium
import numpy as np
import pytest
from dm_control import suite
from dm_env import specs

from uld.envs import DMC_SUITE_28, list_dmc_tasks, make_env
from uld.envs.base import unit_to_bounds
from uld.envs.dmc import DmcEnv
from uld.errors import UldError

SRC = Path(__file__).resolve().parents[1] / "src"


def _run_python(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh interpreter that imports uld from this checkout."""
    environ = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]), **env}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=environ, timeout=120)


# --- action scaling -------------------------------------------------------------------------------


def test_unit_to_bounds_maps_minus_one_zero_one_onto_low_mid_high() -> None:
    scale, offset = unit_to_bounds(np.array([-2.0, 0.0, 0.5]), np.array([2.0, 1.0, 1.5]))
    np.testing.assert_allclose(-1.0 * scale + offset, [-2.0, 0.0, 0.5])
    np.testing.assert_allclose(0.0 * scale + offset, [0.0, 0.5, 1.0])
    np.testing.assert_allclose(1.0 * scale + offset, [2.0, 1.0, 1.5])
    np.testing.assert_allclose(0.5 * scale + offset, [1.0, 0.75, 1.25])


def test_unit_to_bounds_is_none_for_unit_box_and_passes_unbounded_dims_through() -> None:
    assert unit_to_bounds(-np.ones(3), np.ones(3)) is None
    # dm_control's LQR declares ±1e10 for "no bound": scaling onto it would make 0.1 a 1e9 force.
    assert unit_to_bounds(np.full(2, -1e10), np.full(2, 1e10)) is None
    scale, offset = unit_to_bounds(np.array([-np.inf, -3.0]), np.array([np.inf, 1.0]))
    np.testing.assert_allclose(scale, [1.0, 2.0])
    np.testing.assert_allclose(offset, [0.0, -1.0])


def test_gym_pendulum_action_half_is_torque_one() -> None:
    """Pendulum's torque bounds are ±2, so uld's 0.5 must act exactly like a raw torque of 1.0."""
    env = make_env("gym:Pendulum-v1", seed=7)
    raw = gymnasium.make("Pendulum-v1")
    np.testing.assert_array_equal(env.reset(), raw.reset(seed=7)[0])
    obs, reward, *_ = env.step(np.array([0.5], dtype=np.float32))
    raw_obs, raw_reward, *_ = raw.step(np.array([1.0]))
    np.testing.assert_array_equal(obs, raw_obs)
    assert reward == raw_reward


def test_dmc_quadruped_asymmetric_bounds_are_scaled() -> None:
    """Quadruped's actuators span [-1, 1.1] and [-0.8, 0.8]: uld's +1 is the raw maximum, 0 the midpoint."""
    env = make_env("dmc:quadruped-walk", seed=3)
    raw = suite.load("quadruped", "walk", task_kwargs={"random": 3})
    spec = raw.action_spec()
    assert spec.maximum[1] == pytest.approx(1.1)
    env.reset()
    raw.reset()
    for action, raw_action in [(np.ones(12), spec.maximum), (np.zeros(12), (spec.minimum + spec.maximum) / 2)]:
        obs, *_ = env.step(action)
        for _ in range(2):
            time_step = raw.step(raw_action)
        raw_obs = np.concatenate([np.ravel(value) for value in time_step.observation.values()])
        np.testing.assert_allclose(obs, raw_obs, rtol=1e-6)


# --- DMC protocol ---------------------------------------------------------------------------------


def test_dmc_cartpole_episode_is_500_agent_steps_of_two_summed_env_steps() -> None:
    env = make_env("dmc:cartpole-balance", seed=11)
    raw = suite.load("cartpole", "balance", task_kwargs={"random": 11})
    assert env.spec.max_episode_steps == 500
    obs, time_step = env.reset(), raw.reset()
    np.testing.assert_array_equal(obs, np.concatenate(list(time_step.observation.values())).astype(np.float32))
    steps, terminated, truncated = 0, False, False
    while not (terminated or truncated):
        action = env.sample_action()
        obs, reward, terminated, truncated, _ = env.step(action)
        first, second = raw.step(action), raw.step(action)
        steps += 1
        assert reward == first.reward + second.reward
        np.testing.assert_array_equal(obs, np.concatenate(list(second.observation.values())).astype(np.float32))
    assert (steps, terminated, truncated) == (500, False, True)
    assert second.last() and second.discount == 1.0  # dm_control's own time limit: 1000 env steps


class _EndsOnThirdStep:
    """A dm_env stand-in whose episode ends with discount 0 on its third env step (reward = step index)."""

    def __init__(self) -> None:
        self.env_steps = 0

    def action_spec(self) -> specs.BoundedArray:
        return specs.BoundedArray((2,), np.float64, minimum=[-1.0, 0.0], maximum=[1.0, 4.0])

    def observation_spec(self) -> OrderedDict[str, specs.Array]:
        return OrderedDict(position=specs.Array((2, 2), np.float64), height=specs.Array((), np.float64))

    def _observation(self) -> OrderedDict[str, np.ndarray]:
        return OrderedDict(position=np.arange(4.0).reshape(2, 2) + self.env_steps, height=np.float64(-self.env_steps))

    def reset(self) -> dm_env.TimeStep:
        self.env_steps = 0
        return dm_env.restart(self._observation())

    def step(self, action: np.ndarray) -> dm_env.TimeStep:
        np.testing.assert_allclose(action, [0.5, 3.0])  # [0.5, 0.5] scaled onto [-1, 1] x [0, 4]
        self.env_steps += 1
        if self.env_steps == 3:
            return dm_env.termination(3.0, self._observation())
        return dm_env.transition(float(self.env_steps), self._observation())


def test_dmc_termination_inside_a_repeat_stops_early_and_is_terminated() -> None:
    fake = _EndsOnThirdStep()
    env = DmcEnv("fake-task", fake, seed=0, camera_id=0)  # type: ignore[arg-type]
    assert env.spec.obs_shape == (5,)
    np.testing.assert_array_equal(env.reset(), [0.0, 1.0, 2.0, 3.0, -0.0])
    action = np.array([0.5, 0.5], dtype=np.float32)
    assert env.step(action)[1:4] == (1.0 + 2.0, False, False)
    obs, reward, terminated, truncated, _ = env.step(action)
    assert (reward, terminated, truncated, fake.env_steps) == (3.0, True, False, 3)  # no fourth env step
    np.testing.assert_array_equal(obs, [3.0, 4.0, 5.0, 6.0, -3.0])


def test_dmc_cheetah_obs_is_the_17_entries_of_its_dict_in_order() -> None:
    env = make_env("dmc:cheetah-run", seed=5)
    time_step = suite.load("cheetah", "run", task_kwargs={"random": 5}).reset()
    assert list(time_step.observation) == ["position", "velocity"]
    obs = env.reset()
    assert env.spec.obs_shape == obs.shape == (17,) and obs.dtype == np.float32
    assert (env.spec.action_dim, env.spec.discrete) == (6, False)
    expected = np.concatenate([time_step.observation["position"], time_step.observation["velocity"]])
    np.testing.assert_array_equal(obs, expected.astype(np.float32))


def test_dmc_suite_28_are_all_suite_tasks() -> None:
    tasks = list_dmc_tasks()
    assert len(DMC_SUITE_28) == len(set(DMC_SUITE_28)) == 28
    assert set(DMC_SUITE_28) <= set(tasks)
    assert {"ball_in_cup-catch", "cartpole-balance_sparse", "dog-trot"} <= set(tasks)


# --- Gym protocol ---------------------------------------------------------------------------------


def test_gym_halfcheetah_is_truncated_at_1000_steps() -> None:
    env = make_env("gym:HalfCheetah-v5", seed=0)
    assert (env.spec.obs_shape, env.spec.action_dim, env.spec.max_episode_steps) == ((17,), 6, 1000)
    assert env.reset().dtype == np.float32
    action = np.zeros(6, dtype=np.float32)
    outcomes = [env.step(action)[2:4] for _ in range(1000)]
    assert outcomes[:-1] == [(False, False)] * 999 and outcomes[-1] == (False, True)


def test_gym_registered_time_limit_is_kept_for_non_mujoco_envs() -> None:
    assert make_env("gym:Pendulum-v1", seed=0).spec.max_episode_steps == 200


# --- seeding --------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["gym:HalfCheetah-v5", "dmc:cheetah-run"])
def test_same_seed_same_trajectory_and_different_seed_different_start(name: str) -> None:
    env_a, env_b, env_c = make_env(name, seed=3), make_env(name, seed=3), make_env(name, seed=4)
    first_a, first_b, first_c = env_a.reset(), env_b.reset(), env_c.reset()
    np.testing.assert_array_equal(first_a, first_b)
    assert not np.array_equal(first_a, first_c)
    actions = np.random.default_rng(0).uniform(-1, 1, (20, env_a.spec.action_dim)).astype(np.float32)
    for action in actions:
        step_a, step_b = env_a.step(action), env_b.step(action)
        np.testing.assert_array_equal(step_a[0], step_b[0])
        assert step_a[1:4] == step_b[1:4]
    # Later resets continue the env's RNG: a new start state, the same one in both envs.
    second_a, second_b = env_a.reset(), env_b.reset()
    np.testing.assert_array_equal(second_a, second_b)
    assert not np.array_equal(first_a, second_a)


@pytest.mark.parametrize("name", ["gym:Hopper-v4", "dmc:walker-walk"])
def test_sample_action_is_reproducible_from_the_seed_and_in_unit_box(name: str) -> None:
    env_a, env_b, env_c = make_env(name, seed=9), make_env(name, seed=9), make_env(name, seed=10)
    actions_a = np.stack([env_a.sample_action() for _ in range(200)])
    actions_b = np.stack([env_b.sample_action() for _ in range(200)])
    actions_c = np.stack([env_c.sample_action() for _ in range(200)])
    assert actions_a.shape == (200, env_a.spec.action_dim) and actions_a.dtype == np.float32
    np.testing.assert_array_equal(actions_a, actions_b)
    assert not np.array_equal(actions_a, actions_c)
    assert actions_a.min() >= -1.0 and actions_a.max() <= 1.0
    assert actions_a.min() < -0.9 and actions_a.max() > 0.9  # uniform over the whole box


# --- names and errors -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "suggestion"),
    [
        ("dmc:cheeta-run", "dmc:cheetah-run"),
        ("dmc:walker", "dmc:walker-walk"),
        ("gym:HalfCheeta-v5", "gym:HalfCheetah-v5"),
        ("HalfCheetah-v5", "gym:HalfCheetah-v5"),
        ("dcm:ball_in_cup-catch", "dmc:ball_in_cup-catch"),
    ],
)
def test_unknown_name_suggests_the_closest_valid_name(name: str, suggestion: str) -> None:
    with pytest.raises(UldError, match=f"did you mean .*{suggestion}"):
        make_env(name, seed=0)


def test_dmc_names_split_on_the_first_dash() -> None:
    env = make_env("dmc:cartpole-balance_sparse", seed=0)
    assert env.spec.name == "dmc:cartpole-balance_sparse" and env.spec.obs_shape == (5,)


@pytest.mark.parametrize(
    ("name", "reason"),
    [("gym:FrozenLake-v1", "Discrete observation space"), ("gym:Blackjack-v1", "Tuple observation space")],
)
def test_unsupported_envs_are_refused_with_one_sentence(name: str, reason: str) -> None:
    with pytest.raises(UldError, match=reason) as error:
        make_env(name, seed=0)
    assert str(error.value).count(". ") == 0 and str(error.value).endswith((".", "?"))


# --- imports and rendering (fresh interpreters) ----------------------------------------------------


def test_import_uld_envs_does_not_import_the_simulators() -> None:
    code = "import sys, uld.envs; print(sorted(m for m in ('dm_control', 'gymnasium', 'mujoco') if m in sys.modules))"
    result = _run_python(code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_render_returns_rgb_frames_with_egl() -> None:
    code = (
        "import uld.envs as E\n"
        "d = E.make_env('dmc:cheetah-run', 0); d.reset()\n"
        "q = E.make_env('dmc:quadruped-walk', 0); q.reset()\n"
        "g = E.make_env('gym:HalfCheetah-v5', 0); g.reset()\n"
        "for frame in (d.render(), d.render(48, 64), q.render(), g.render()):\n"
        "    print(frame.shape, frame.dtype, int(frame.max()))\n"
    )
    result = _run_python(code, MUJOCO_GL="egl")
    if result.returncode != 0 and "EGL" in result.stderr and "ImportError" in result.stderr:
        pytest.skip("EGL is not available on this machine")
    assert result.returncode == 0, result.stderr
    lines = [line.rsplit(" ", 1) for line in result.stdout.strip().splitlines()]
    assert [shape for shape, _ in lines] == [
        "(84, 84, 3) uint8",
        "(48, 64, 3) uint8",
        "(84, 84, 3) uint8",
        "(480, 480, 3) uint8",
    ]
    assert all(int(brightest) > 0 for _, brightest in lines)


def test_a_gym_env_whose_dependency_is_missing_is_one_sentence(tmp_path, monkeypatch) -> None:
    """As gym:LunarLander-v3 without Box2D: Gymnasium's DependencyNotInstalled (not an ImportError) while
    uld looks at the entry point's render modes is Gymnasium's sentence, not a traceback."""
    (tmp_path / "uld_test_needs_dep.py").write_text(
        "from gymnasium.error import DependencyNotInstalled\n"
        "raise DependencyNotInstalled('Frobnicator is not installed, you can install it by pip install frob')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(gymnasium.registry, "NeedsDep-v0", gymnasium.envs.registration.EnvSpec(
        "NeedsDep-v0", entry_point="uld_test_needs_dep:Env", max_episode_steps=10))
    with pytest.raises(UldError, match="gym:NeedsDep-v0 cannot be created here: Frobnicator is not installed"):
        make_env("gym:NeedsDep-v0", seed=0)
