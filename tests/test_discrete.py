"""Discrete actions: Gymnasium envs with Discrete spaces, one-hot storage, target actions, greedy evaluation.

Spec: Acting (discrete), Replay buffer (one-hot actions), "Where the reference differs" item 5.
"""

from __future__ import annotations

from pathlib import Path

import gymnasium
import numpy as np
import pytest
import torch

from uld.agents.uld.agent import ULDAgent, make_buffer
from uld.agents.uld.config import reduced_config
from uld.envs import make_env
from uld.envs.base import EnvSpec
from uld.train.logger import Logger, read_eval_csv
from uld.train.population import PerSeed, rng_state
from uld.train.run import TrainConfig, train
from uld.train.trainer import SeedRun, Trainer, evaluate

RANDOM_CARTPOLE_RETURN = 22.5
"""Mean return of uniformly random actions on CartPole-v1 (200 episodes, measured with sample_action)."""


@pytest.mark.parametrize(("name", "actions", "obs_dim"), [("gym:CartPole-v1", 2, 4), ("gym:Acrobot-v1", 3, 6)])
def test_discrete_gym_envs_take_integer_actions_like_the_raw_env(name: str, actions: int, obs_dim: int) -> None:
    env = make_env(name, seed=3)
    raw = gymnasium.make(name.removeprefix("gym:"))
    assert (env.spec.discrete, env.spec.action_dim, env.spec.obs_shape, env.spec.pixels) == (True, actions, (obs_dim,),
                                                                                             False)
    np.testing.assert_array_equal(env.reset(), raw.reset(seed=3)[0].astype(np.float32))
    for action in [0, actions - 1, 1, 0, 1]:
        obs, reward, terminated, truncated, _ = env.step(action)
        raw_obs, raw_reward, raw_terminated, raw_truncated, _ = raw.step(action)
        np.testing.assert_array_equal(obs, raw_obs.astype(np.float32))
        assert (reward, terminated, truncated) == (raw_reward, raw_terminated, raw_truncated)


def test_discrete_sample_action_is_a_seeded_uniform_index() -> None:
    env_a, env_b, env_c = (make_env("gym:Acrobot-v1", seed=s) for s in (9, 9, 10))
    draws = [[env.sample_action() for _ in range(300)] for env in (env_a, env_b, env_c)]
    assert all(type(a) is int for a in draws[0])
    assert draws[0] == draws[1] and draws[0] != draws[2]
    assert sorted(set(draws[0])) == [0, 1, 2]
    assert abs(draws[0].count(0) / 300 - 1 / 3) < 0.1


def test_trainer_stores_discrete_actions_one_hot(tmp_path: Path) -> None:
    env, eval_env = make_env("gym:CartPole-v1", seed=1), make_env("gym:CartPole-v1", seed=101)
    config = reduced_config(buffer_capacity=200, random_steps=40)
    agent, buffer = ULDAgent(env.spec, config), make_buffer(env.spec, config, seed=1)
    logger = Logger(tmp_path, 40, progress=False)
    Trainer([SeedRun(1, env, eval_env, buffer, logger, eval_seed=101)], PerSeed([agent], [rng_state()]),
            random_steps=40, eval_every=40, eval_episodes=1).train(40)
    logger.close()
    replay = make_env("gym:CartPole-v1", seed=1)
    expected = [replay.sample_action() for _ in range(40)]
    stored = buffer.action[buffer.is_transition]
    assert stored.shape == (40, 2)
    assert set(np.unique(stored)) == {0.0, 1.0} and (stored.sum(axis=1) == 1).all()
    assert stored.argmax(axis=1).tolist() == expected


def _discrete_agent(action_dim: int = 6) -> ULDAgent:
    torch.manual_seed(0)
    spec = EnvSpec("test:discrete", (5,), action_dim, True, 100)
    return ULDAgent(spec, reduced_config())


def test_discrete_agent_halves_the_noises() -> None:
    config = _discrete_agent().config
    assert (config.exploration_noise, config.target_policy_noise, config.target_noise_clip) == pytest.approx(
        (0.1, 0.1, 0.15))


def test_critic_target_actions_are_one_hot() -> None:
    agent = _discrete_agent()
    zs = agent.encoder.f(torch.randn(256, 5))
    action = agent._target_action(zs)
    assert action.shape == (256, 6) and action.dtype == torch.float32
    assert set(action.unique().tolist()) == {0.0, 1.0}
    assert (action.sum(dim=1) == 1).all()
    assert len(action.argmax(dim=1).unique()) > 1  # Gumbel noise: not one fixed action for every state


def test_policy_feeds_a_soft_gumbel_softmax_sample_to_g() -> None:
    agent = _discrete_agent()
    action, pre = agent.policy(agent.encoder.f(torch.randn(32, 5)))
    assert action.shape == pre.shape == (32, 6)
    torch.testing.assert_close(action.sum(dim=1), torch.ones(32))
    assert (action > 0).all() and (action < 1).all()  # soft: a distribution over actions, not one-hot


def test_evaluation_is_greedy_and_exploration_is_not() -> None:
    agent = _discrete_agent()
    obs = np.linspace(-1, 1, 5, dtype=np.float32)
    with torch.no_grad():
        _, pre = agent.policy(agent.encoder.f(torch.as_tensor(obs)[None]))
    greedy = [agent.act(obs, explore=False) for _ in range(50)]
    assert greedy == [int(pre.argmax())] * 50
    explored = [agent.act(obs, explore=True) for _ in range(200)]
    assert all(type(a) is int and 0 <= a < 6 for a in explored)
    assert len(set(explored)) > 1


def test_two_evaluations_of_the_same_policy_on_the_same_seed_agree() -> None:
    torch.manual_seed(0)
    agent = ULDAgent(make_env("gym:CartPole-v1", seed=0).spec, reduced_config())
    first = evaluate(agent, make_env("gym:CartPole-v1", seed=100), episodes=3)
    second = evaluate(agent, make_env("gym:CartPole-v1", seed=100), episodes=3)
    assert first == second


@pytest.mark.slow
def test_uld_learns_cartpole(tmp_path: Path) -> None:
    """The reduced agent beats the random policy (22.5) by far after 1,000 training steps.

    Measured at 2,000 steps (10 evaluation episodes): seeds 0-3 scored 90, 170, 205, 442. (Before
    evaluations drew from their own torch generator, they consumed the training's through the
    policy's Gumbel sample, and seeds 0-5 scored 314, 500, 245, 470, 286, 364: another draw of the
    training's randomness, with a spread as wide.)
    """
    config = TrainConfig(env="gym:CartPole-v1", seed=0, steps=2000, eval_every=2000, eval_episodes=10,
                         out=str(tmp_path / "run"), progress=False, small=True, uld=reduced_config())
    rows = read_eval_csv(train(config) / "eval.csv")
    assert [row["step"] for row in rows] == [0, 2000]
    assert rows[-1]["mean_return"] >= 75  # over 3 times the random policy's return; seed 0 scored 90
