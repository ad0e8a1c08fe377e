"""ALM (spec/ALM.md): heads, KL, λ-returns, sampling, labels, gradient routing, agent state, protocol."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from numerics import assert_within
from uld.agents import build_agent
from uld.agents.alm import losses
from uld.agents.alm.agent import ALMAgent, make_buffer, polyak_update
from uld.agents.alm.config import ALMConfig, alm_protocol, reduced_config
from uld.agents.alm.networks import soft_clamp_mean, soft_clamp_std, truncated_normal_sample
from uld.envs import make_env
from uld.envs.base import EnvSpec
from uld.errors import UldError
from uld.train.run import TrainConfig

SPEC = EnvSpec(name="test:vector", obs_shape=(5,), action_dim=2, discrete=False, max_episode_steps=50)
TINY = reduced_config(latent_dim=4, hidden_dim=16, model_hidden_dim=16, batch_size=8, random_steps=10)


def softplus(x: float) -> float:
    """log(1 + e^x), written so that it does not overflow for large x."""
    return max(x, 0.0) + math.log1p(math.exp(-abs(x)))


def filled_buffer(config: ALMConfig = TINY, transitions: int = 120, seed: int = 0):
    """A replay of random vector transitions: episodes of 40 steps, the second one terminating at step 25."""
    rng = np.random.default_rng(seed)
    buffer = make_buffer(SPEC, config, seed=seed, total_steps=1_000)
    step = 0
    for i in range(transitions):
        terminated = step == 24 and (i // 40) % 2 == 1
        truncated = step == 39
        buffer.add(rng.normal(size=5), rng.uniform(-1, 1, size=2), float(rng.normal()), rng.normal(size=5),
                   terminated, truncated)
        step = 0 if terminated or truncated else step + 1
    return buffer


def tiny_agent(seed: int = 0, **kwargs) -> ALMAgent:
    torch.manual_seed(seed)
    return ALMAgent(SPEC, TINY, **kwargs)


# ---- Gaussian heads --------------------------------------------------------------------------------


def test_mean_head_is_30_tanh_m_over_30() -> None:
    m = torch.tensor([0.0, 3.0, 30.0, -60.0, 1e4])
    expected = [0.0, 30 * math.tanh(0.1), 30 * math.tanh(1.0), -30 * math.tanh(2.0), 30.0]
    torch.testing.assert_close(soft_clamp_mean(m), torch.tensor(expected))


def test_std_head_soft_clamps_into_point_one_to_ten() -> None:
    x = torch.tensor([-1e4, 0.0, 1.0, 5.0, 1e4], dtype=torch.float64)

    def by_hand(v: float) -> float:  # std = 10 - softplus(10 - x); std = 0.1 + softplus(std - 0.1)
        return 0.1 + softplus(10 - softplus(10 - v) - 0.1)

    torch.testing.assert_close(soft_clamp_std(x), torch.tensor([by_hand(v) for v in x.tolist()], dtype=torch.float64))
    assert soft_clamp_std(x)[0].item() == pytest.approx(0.1, abs=1e-9)  # very small x -> 0.1
    assert soft_clamp_std(x)[-1].item() == pytest.approx(10.0, abs=1e-4)  # very large x -> ~10
    assert soft_clamp_std(torch.tensor(1.0)).item() == pytest.approx(1.3411, abs=1e-4)  # 0.1 + softplus(0.8999)


# ---- KL, λ-returns ---------------------------------------------------------------------------------


def test_gaussian_kl_matches_the_closed_form_summed_over_dims() -> None:
    # dim 1: KL(N(0,1) || N(1,2)) = log 2 + (1 + 1) / 8 - 1/2; dim 2: KL(N(2,1) || N(0,1)) = 4 / 2; dim 3: 0.
    mean_p, std_p = torch.tensor([[0.0, 2.0, 0.5]]), torch.tensor([[1.0, 1.0, 0.5]])
    mean_q, std_q = torch.tensor([[1.0, 0.0, 0.5]]), torch.tensor([[2.0, 1.0, 0.5]])
    kl = losses.gaussian_kl(mean_p, std_p, mean_q, std_q)
    assert kl.shape == (1,)
    assert kl.item() == pytest.approx(math.log(2) + 0.25 - 0.5 + 2.0, abs=1e-6)
    p = torch.distributions.Normal(mean_p, std_p)
    q = torch.distributions.Normal(mean_q, std_q)
    torch.testing.assert_close(kl, torch.distributions.kl_divergence(p, q).sum(-1))


def test_lambda_returns_on_a_three_step_example() -> None:
    # γ = 0.9, λ = 0.5, r̂ = (1, 2, 3), v_1..v_3 = (10, 20, 30):
    # G_3 = 30; G_2 = 3 + 0.9 (15 + 15) = 30; G_1 = 2 + 0.9 (10 + 15) = 24.5; G_0 = 1 + 0.9 (5 + 12.25) = 16.525.
    reward = torch.tensor([[1.0, 2.0, 3.0]])
    next_value = torch.tensor([[10.0, 20.0, 30.0]])
    G = losses.lambda_returns(reward, next_value, discount=0.9, td_lambda=0.5)
    torch.testing.assert_close(G, torch.tensor([[16.525, 24.5, 30.0]]))
    # λ = 0: one-step targets r_t + γ v_{t+1}; λ = 1: discounted rewards plus γ^(K-t) v_K.
    torch.testing.assert_close(losses.lambda_returns(reward, next_value, 0.9, 0.0), torch.tensor([[10.0, 20.0, 30.0]]))
    torch.testing.assert_close(losses.lambda_returns(reward, next_value, 0.9, 1.0),
                               torch.tensor([[1 + 1.8 + 2.43 + 0.729 * 30, 2 + 2.7 + 0.81 * 30, 3 + 27.0]]))


# ---- truncated-normal sampling ------------------------------------------------------------------------


def test_truncated_normal_clips_noise_then_clamps_with_straight_through_gradient() -> None:
    mean = torch.tensor([0.9, -0.95, 0.0, 0.2], requires_grad=True)
    torch.manual_seed(3)
    eps = torch.randn(4)
    torch.manual_seed(3)
    sample = truncated_normal_sample(mean, std=0.5, clip=0.3)
    expected = (mean.detach() + (0.5 * eps).clamp(-0.3, 0.3)).clamp(-1, 1)
    torch.testing.assert_close(sample, expected)
    assert sample.abs().max() <= 1.0
    weights = torch.tensor([1.0, 2.0, 3.0, 4.0])
    (sample * weights).sum().backward()
    torch.testing.assert_close(mean.grad, weights)  # identity, clamped entries included


def test_truncated_normal_at_the_bound_still_passes_gradient() -> None:
    mean = torch.tensor([0.99, -0.99, 0.99, -0.99], requires_grad=True)
    torch.manual_seed(0)
    sample = truncated_normal_sample(mean, std=100.0, clip=0.3)  # noise ±0.3 unless |ε| < 0.003
    assert (sample.detach().abs() == 1.0).sum() >= 1  # pushed outward: clamped onto the bound
    sample.sum().backward()
    torch.testing.assert_close(mean.grad, torch.ones(4))


def test_truncated_normal_without_clip_keeps_the_full_noise() -> None:
    mean = torch.zeros(1000)
    torch.manual_seed(0)
    eps = torch.randn(1000)
    torch.manual_seed(0)
    sample = truncated_normal_sample(mean, std=0.1, clip=None)
    torch.testing.assert_close(sample, (0.1 * eps).clamp(-1, 1))
    assert sample.abs().max() > 0.3


# ---- classifier labels ---------------------------------------------------------------------------------


def test_classifier_labels_are_first_half_real_second_half_model() -> None:
    assert losses.classifier_labels(6).tolist() == [1, 1, 1, 0, 0, 0]
    assert losses.classifier_labels(5).tolist() == [1, 1, 1, 0, 0]


def test_classifier_sees_real_next_latents_first_and_model_samples_second() -> None:
    agent = tiny_agent()
    # ē's mean is pinned to +20 and m's to -20, so each next latent tells where it came from.
    for net, value in ((agent.encoder_target.net[-1], 20.0), (agent.model.net[-1], -20.0)):
        nn.init.zeros_(net.weight)
        with torch.no_grad():
            net.bias[: TINY.latent_dim] = value
            net.bias[TINY.latent_dim :] = -1e4  # std at its 0.1 floor
    seen = {}
    agent.classifier.register_forward_hook(lambda module, args, out: seen.setdefault("next_z", args[2]))
    obs, action = torch.randn(6, 5), torch.rand(6, 2) * 2 - 1
    losses.reward_classifier_loss(encoder_target=agent.encoder_target, model=agent.model, reward=agent.reward,
                                  classifier=agent.classifier, obs=obs, action=action, reward_target=torch.zeros(6),
                                  next_obs=torch.randn(6, 5))
    next_z, mean = seen["next_z"], 30 * math.tanh(20 / 30)  # the head's mean of a raw 20
    assert torch.all((next_z[:3] - mean).abs() < 1.0)
    assert torch.all((next_z[3:] + mean).abs() < 1.0)


# ---- gradient routing: each loss trains exactly its networks ------------------------------------------


NETWORKS = ("encoder", "model", "reward", "classifier", "critic", "actor", "encoder_target", "critic_target")


def grads_after(agent: ALMAgent, loss_fn) -> dict[str, bool]:
    """Which networks end up with a nonzero gradient after backward() of the loss."""
    for name in NETWORKS:
        getattr(agent, name).zero_grad(set_to_none=True)
    loss, _ = loss_fn()
    loss.backward()
    touched = {}
    for name in NETWORKS:
        grads = [p.grad for p in getattr(agent, name).parameters()]
        touched[name] = any(g is not None and g.abs().sum() > 0 for g in grads)
    return touched


def expect_only(touched: dict[str, bool], *names: str) -> None:
    assert {name for name, hit in touched.items() if hit} == set(names)


@pytest.fixture
def agent_and_batches():
    agent = tiny_agent()
    buffer = filled_buffer()
    sequences = buffer.sample(TINY.batch_size, TINY.seq_len)
    transitions = buffer.sample(TINY.batch_size, 1)
    return agent, sequences, transitions


def test_model_loss_trains_encoder_and_model_only(agent_and_batches) -> None:
    agent, seq, _ = agent_and_batches
    touched = grads_after(agent, lambda: losses.model_loss(
        encoder=agent.encoder, encoder_target=agent.encoder_target, model=agent.model, reward=agent.reward,
        critic=agent.critic, actor=agent.actor, obs=seq.obs, action=seq.action, terminated=seq.terminated, std=0.5,
        clip=0.3))
    expect_only(touched, "encoder", "model")
    assert all(p.requires_grad for p in agent.reward.parameters())  # frozen only while the graph was built
    assert all(p.requires_grad for p in agent.critic.parameters())


def test_frozen_networks_pass_gradient_to_their_inputs_not_their_parameters(agent_and_batches) -> None:
    """How the model loss reaches the encoder through R and Q, and the actor loss reaches π through m, R, C, Q."""
    agent, _, _ = agent_and_batches
    z = torch.zeros(1, TINY.latent_dim, requires_grad=True)
    with losses.frozen(agent.reward, agent.critic):
        out = agent.reward(z, torch.zeros(1, 2)) + agent.critic.min_q(z, torch.zeros(1, 2))
    out.sum().backward()
    assert z.grad.abs().sum() > 0
    assert all(p.grad is None for p in agent.reward.parameters())
    assert all(p.grad is None for p in agent.critic.parameters())


def test_reward_classifier_loss_trains_reward_and_classifier_only(agent_and_batches) -> None:
    agent, _, tr = agent_and_batches
    touched = grads_after(agent, lambda: losses.reward_classifier_loss(
        encoder_target=agent.encoder_target, model=agent.model, reward=agent.reward, classifier=agent.classifier,
        obs=tr.obs[:, 0], action=tr.action[:, 0], reward_target=tr.reward[:, 0], next_obs=tr.obs[:, 1]))
    expect_only(touched, "reward", "classifier")


def test_critic_loss_trains_critic_only(agent_and_batches) -> None:
    agent, _, tr = agent_and_batches
    touched = grads_after(agent, lambda: losses.critic_loss(
        encoder_target=agent.encoder_target, critic=agent.critic, critic_target=agent.critic_target, actor=agent.actor,
        obs=tr.obs[:, 0], action=tr.action[:, 0], reward=tr.reward[:, 0], terminated=tr.terminated[:, 0],
        next_obs=tr.obs[:, 1], std=0.5, clip=0.3, discount=0.99))
    expect_only(touched, "critic")


def test_actor_loss_trains_actor_only_through_frozen_model_reward_classifier_critic(agent_and_batches) -> None:
    agent, _, tr = agent_and_batches
    touched = grads_after(agent, lambda: losses.actor_loss(
        encoder_target=agent.encoder_target, model=agent.model, reward=agent.reward, classifier=agent.classifier,
        critic=agent.critic, actor=agent.actor, obs=tr.obs[:, 0], std=0.5, clip=0.3, discount=0.99, td_lambda=0.95, horizon=3, classifier_weight=0.1))
    expect_only(touched, "actor")
    for name in ("model", "reward", "classifier", "critic"):
        assert all(p.requires_grad for p in getattr(agent, name).parameters())


def test_model_loss_ignores_steps_after_a_terminal() -> None:
    """Observations and actions after the terminal belong to the next episode and must not matter."""
    agent = tiny_agent()
    obs, action = torch.randn(4, 4, 5), torch.rand(4, 3, 2) * 2 - 1
    terminated = torch.tensor([[1.0, 0, 0]] * 4)
    other_obs, other_action = obs.clone(), action.clone()
    other_obs[:, 2:] = torch.randn(4, 2, 5)
    other_action[:, 1:] = 0.0
    values = []
    for o, a in ((obs, action), (other_obs, other_action)):
        torch.manual_seed(0)
        loss, _ = losses.model_loss(encoder=agent.encoder, encoder_target=agent.encoder_target, model=agent.model,
                                    reward=agent.reward, critic=agent.critic, actor=agent.actor, obs=o, action=a,
                                    terminated=terminated, std=0.5, clip=0.3)
        values.append(loss.item())
    assert values[0] == pytest.approx(values[1], abs=1e-6)


# ---- the agent -------------------------------------------------------------------------------------------


def test_full_size_alm_on_half_cheetah_has_about_three_million_parameters() -> None:
    spec = EnvSpec(name="gym:HalfCheetah-v5", obs_shape=(17,), action_dim=6, discrete=False, max_episode_steps=1000)
    assert ALMAgent(spec).num_parameters == 3_025_107


def test_exploration_std_decays_linearly_from_one_to_a_tenth_over_100k_steps() -> None:
    config = ALMConfig()
    assert config.exploration_std(0) == 1.0
    assert config.exploration_std(50_000) == pytest.approx(0.55)
    assert config.exploration_std(100_000) == pytest.approx(0.1)
    assert config.exploration_std(400_000) == pytest.approx(0.1)


def test_polyak_update_moves_the_target_by_tau() -> None:
    online, target = nn.Linear(2, 2), nn.Linear(2, 2)
    nn.init.ones_(online.weight), nn.init.zeros_(target.weight)
    polyak_update(online, target, 0.005)
    torch.testing.assert_close(target.weight, torch.full((2, 2), 0.005))


def test_update_returns_detached_finite_metrics_and_counts_steps() -> None:
    agent, buffer = tiny_agent(), filled_buffer()
    encoder_target_before = [p.clone() for p in agent.encoder_target.parameters()]
    encoder_before = [p.clone() for p in agent.encoder.parameters()]
    metrics = agent.update(buffer)
    assert agent.training_step == 1
    assert {"model/kl", "reward/mse", "classifier/ce", "critic/loss", "actor/loss", "actor/std"} <= set(metrics)
    assert all(isinstance(v, torch.Tensor) and not v.requires_grad and torch.isfinite(v) for v in metrics.values())
    # ē <- (1 - τ) ē + τ e, with e after its own Adam step.
    for before, online, target in zip(encoder_target_before, agent.encoder.parameters(),
                                      agent.encoder_target.parameters()):
        torch.testing.assert_close(target, (1 - TINY.tau) * before + TINY.tau * online)
    assert any(not torch.equal(a, b) for a, b in zip(encoder_before, agent.encoder.parameters()))


def test_bf16_update_computes_the_fp32_model_losses_to_bf16_rounding() -> None:
    """The first update's model losses (computed before any optimizer step) in bf16 are fp32's to bf16 rounding:
    each bf16 matmul rounds its operands to 8 bits (2^-8 relative per product); the model loss's terms pass
    through at most 12 of them (encoder 3, model 3 per unrolled step over seq_len 3, reward and critic heads),
    so 12 x 2^-8 of the size of its terms, which are the KL, reward and value parts (they cancel in the sum)."""
    torch.manual_seed(5)
    fp32 = tiny_agent()
    bf16 = tiny_agent(precision="bf16")
    torch.manual_seed(5)
    expected = fp32.update(filled_buffer())
    torch.manual_seed(5)
    metrics = bf16.update(filled_buffer())
    assert set(metrics) == set(expected)
    scale = sum(abs(float(expected[name])) for name in ("model/kl", "model/reward", "model/value"))
    for name in ("model/loss", "model/kl", "model/reward", "model/value"):
        assert metrics[name].dtype == torch.float32  # reported in fp32 whatever the arithmetic
        assert_within(f"bf16 {name}", float(metrics[name]) - float(expected[name]), 12 * 2**-8 * scale)
    # Not trivially equal: bf16 arithmetic really ran.
    assert float(metrics["model/loss"]) != float(expected["model/loss"])
    assert all(torch.isfinite(v) for v in metrics.values())


def test_bf16_losses_see_the_weights_the_steps_before_them_wrote() -> None:
    """Autocast caches bf16 weight copies per block: a block spanning an optimizer step would hide the step."""
    agent, buffer = tiny_agent(precision="bf16"), filled_buffer()
    last = agent.model.net[-1]

    def pin_model_mean() -> None:  # stands in for the model's Adam step: m's mean becomes 30 tanh(20 / 30)
        with torch.no_grad():
            last.weight.zero_()
            last.bias[: TINY.latent_dim] = 20.0
            last.bias[TINY.latent_dim :] = -1e4

    agent.model_optimizer.step = pin_model_mean
    seen = {}
    agent.classifier.register_forward_hook(lambda module, args, out: seen.setdefault("next_z", args[2]))
    agent.update(buffer)
    model_half = seen["next_z"][TINY.batch_size - TINY.batch_size // 2 :].float()
    assert torch.all((model_half - 30 * math.tanh(20 / 30)).abs() < 1.0)


def test_act_stays_in_bounds_and_uses_the_schedule() -> None:
    agent = tiny_agent()
    obs = np.random.default_rng(0).normal(size=5).astype(np.float32)
    actions = np.stack([agent.act(obs, explore=True) for _ in range(200)])
    assert actions.shape == (200, 2) and np.abs(actions).max() <= 1.0
    assert actions.std(0).min() > 0.3  # std 1.0 at the start of training
    agent.training_step = 10_000  # reduced config: decayed to its final std 0.1 by now
    quiet = np.stack([agent.act(obs, explore=True) - agent.act(obs, explore=False) for _ in range(200)])
    assert np.abs(quiet).mean() < np.abs(actions - actions.mean(0)).mean()


def test_same_seed_same_numbers() -> None:
    runs = []
    for _ in range(2):
        agent, buffer = tiny_agent(seed=5), filled_buffer(seed=5)
        torch.manual_seed(7)
        runs.append([agent.update(buffer)["actor/loss"].item() for _ in range(3)])
    assert runs[0] == runs[1]


def test_state_dict_round_trip_continues_identically() -> None:
    agent, buffer = tiny_agent(seed=1), filled_buffer(seed=1)
    for _ in range(3):
        agent.update(buffer)
    state = agent.state_dict()
    buffer_state = {k: (v.clone() if isinstance(v, torch.Tensor) else v) for k, v in buffer.state_dict().items()}
    restored = tiny_agent(seed=99)
    restored.load_state_dict(state)
    assert restored.training_step == 3
    restored_buffer = filled_buffer(seed=2)
    restored_buffer.load_state_dict(buffer_state)
    torch.manual_seed(11)
    expected = agent.update(buffer)
    torch.manual_seed(11)
    got = restored.update(restored_buffer)
    for name in expected:
        torch.testing.assert_close(got[name], expected[name])
    for a, b in zip(agent.actor.parameters(), restored.actor.parameters()):
        torch.testing.assert_close(a, b)
    assert restored.state_dict()["counters"] == {"training_step": 4}


# ---- replay, protocol, refusals -----------------------------------------------------------------------


def test_fifo_capacity_is_min_of_capacity_and_budget_with_humanoid_larger() -> None:
    config = ALMConfig()
    assert config.capacity_for("gym:HalfCheetah-v5", 300_000) == 100_000
    assert config.capacity_for("gym:HalfCheetah-v5", 20_000) == 20_000
    assert config.capacity_for("gym:Humanoid-v5", 500_000) == 500_000
    assert config.capacity_for("gym:HumanoidTruncatedObs-v5", 300_000) == 300_000
    spec = EnvSpec(name="gym:HalfCheetah-v5", obs_shape=(17,), action_dim=6, discrete=False, max_episode_steps=1000)
    buffer = make_buffer(spec, config, seed=0, total_steps=20_000)
    assert buffer.capacity == 20_000 + 20 + 1  # one final-observation slot per 1000-step episode
    assert buffer.horizon == 3 and not buffer.prioritized


@pytest.mark.parametrize(
    ("env", "steps"),
    [("gym:HalfCheetah-v5", 300_000), ("gym:Walker2d-v5", 300_000), ("gym:Ant-v5", 500_000),
     ("gym:Humanoid-v5", 500_000), ("gym:AntTruncatedObs-v5", 300_000), ("gym:HumanoidTruncatedObs-v5", 300_000),
     ("dmc:cheetah-run", 300_000)],
)
def test_alm_protocol(env: str, steps: int) -> None:
    protocol = alm_protocol(env)
    assert (protocol.steps, protocol.eval_every, protocol.eval_episodes) == (steps, 5_000, 5)
    resolved = TrainConfig(agent="alm", env=env).resolved()
    assert (resolved.steps, resolved.eval_every, resolved.eval_episodes) == (steps, 5_000, 5)


def test_explicit_flags_and_the_uld_protocol_are_untouched() -> None:
    resolved = TrainConfig(agent="alm", env="gym:HalfCheetah-v5", steps=200, eval_every=100, eval_episodes=1).resolved()
    assert (resolved.steps, resolved.eval_every, resolved.eval_episodes) == (200, 100, 1)
    assert resolved.out.startswith("runs/alm/")
    uld = TrainConfig(agent="uld", env="gym:HalfCheetah-v5").resolved()
    assert (uld.steps, uld.eval_every, uld.eval_episodes) == (1_000_000, 5_000, 10)


@pytest.mark.parametrize("spec", [
    EnvSpec(name="gym:CartPole-v1", obs_shape=(4,), action_dim=2, discrete=True, max_episode_steps=500),
    EnvSpec(name="dmc-pixels:walker-walk", obs_shape=(9, 84, 84), action_dim=6, discrete=False,
            max_episode_steps=500, pixels=True),
])
def test_alm_refuses_discrete_actions_and_pixels_in_one_sentence(spec: EnvSpec) -> None:
    with pytest.raises(UldError) as error:
        build_agent("alm", spec, ALMConfig(), device="cpu", precision="fp32", seed=0, total_steps=1000)
    message = str(error.value)
    assert message.count(". ") == 0 and message.endswith(".") and "ALM" in message


def test_cli_refuses_cartpole_with_exit_code_two(capsys) -> None:
    from uld.cli import main

    assert main(["train", "--agent", "alm", "--env", "gym:CartPole-v1", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("uld: ") and "\n" not in err


# ---- truncated-observation envs ------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "base", "dim"), [("gym:AntTruncatedObs-v5", "gym:Ant-v5", 27),
                                                   ("gym:HumanoidTruncatedObs-v5", "gym:Humanoid-v5", 45)])
def test_truncated_obs_envs_drop_the_trailing_observation_parts(name: str, base: str, dim: int) -> None:
    truncated, full = make_env(name, seed=3), make_env(base, seed=3)
    assert truncated.spec.obs_shape == (dim,) and truncated.spec.max_episode_steps == 1000
    np.testing.assert_array_equal(truncated.reset(), full.reset()[:dim])
    action = np.full(truncated.spec.action_dim, 0.3, dtype=np.float32)
    obs, reward, *_ = truncated.step(action)
    full_obs, full_reward, *_ = full.step(action)
    np.testing.assert_array_equal(obs, full_obs[:dim])
    assert reward == pytest.approx(full_reward)
    truncated.close(), full.close()
