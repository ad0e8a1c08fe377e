"""MR.Q's design study: each switch of the ULD config changes exactly what it names."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from uld.agents.uld import losses
from uld.agents.uld.agent import ULDAgent, make_buffer
from uld.agents.uld.config import ULDConfig
from uld.agents.uld.design_study import VARIANTS, variant
from uld.envs.base import EnvSpec

SPEC = EnvSpec("test", (3,), 2, False, 50)
SMALL = ULDConfig(batch_size=8, zs_dim=16, zsa_dim=16, za_dim=8, hidden_dim=16, target_update_period=3,
                  buffer_capacity=500, random_steps=0)


def _filled(config: ULDConfig):
    buffer = make_buffer(SPEC, config, seed=0)
    rng = np.random.default_rng(0)
    for t in range(200):
        buffer.add(rng.normal(size=3), rng.uniform(-1, 1, 2), 3.0 * rng.normal(), rng.normal(size=3),
                   terminated=(t % 37 == 36), truncated=(t % 50 == 49))
    return buffer


def _counts(agent: ULDAgent) -> dict[str, int]:
    return {name: sum(p.numel() for p in getattr(agent, name).parameters()) for name in ("encoder", "policy", "value")}


def _agent(**changes) -> tuple[ULDAgent, object]:
    torch.manual_seed(0)
    config = variant("default", SMALL) if not changes else ULDConfig(**{**SMALL.__dict__, **changes})
    return ULDAgent(SPEC, config), _filled(config)


def test_every_variant_builds_and_updates():
    for name in VARIANTS:
        config = variant(name, SMALL)
        torch.manual_seed(0)
        agent, buffer = ULDAgent(SPEC, config), _filled(config)
        metrics = agent.update(buffer)
        assert all(torch.isfinite(v) for v in metrics.values()), name


def test_linear_value_changes_only_the_value_network():
    default, linear = _agent()[0], _agent(value_model="linear")[0]
    assert _counts(linear)["value"] == 2 * (16 + 1)
    assert _counts(linear)["encoder"] == _counts(default)["encoder"]
    assert _counts(linear)["policy"] == _counts(default)["policy"]


def test_nonlinear_model_changes_only_the_latent_model_head():
    default, nonlinear = _counts(_agent()[0]), _counts(_agent(latent_model="mlp")[0])
    head_out = 1 + 16 + 65
    linear_head = 16 * head_out + head_out
    mlp_head = (16 * 16 + 16) * 2 + 16 * head_out + head_out
    assert nonlinear["encoder"] - default["encoder"] == mlp_head - linear_head
    assert nonlinear["value"] == default["value"] and nonlinear["policy"] == default["policy"]


def test_no_target_encoder_never_reads_the_target_encoder():
    for use_target, expect_finite in ((False, True), (True, False)):
        agent, buffer = _agent(target_encoder=use_target)
        agent.update(buffer)  # the first update copies the targets; poison them afterwards
        for p in agent.encoder_target.parameters():
            p.data.fill_(float("nan"))
        metrics = agent.update(buffer)
        assert bool(torch.isfinite(metrics["critic/loss"])) is expect_finite


def test_dynamics_target_zsa_is_the_target_the_agent_trains_against():
    """The agent's encoder loss under dynamics-target-zsa is the loss against the target encoder's g(f(s_i+1),
    a_i+1), on the batch it sampled, and not the default's f(s_i+1) (which differs by far more than rounding)."""
    config = variant("dynamics-target-zsa", SMALL)
    assert config.encoder_window == 6 and config.horizon == 6
    assert ULDConfig().horizon == 5
    torch.manual_seed(0)
    agent, buffer = ULDAgent(SPEC, config), _filled(config)
    before = copy.deepcopy(agent)  # the networks the update's loss was computed with
    batches = []
    sample = buffer.sample

    def recording_sample(*args, **kwargs):
        batches.append(sample(*args, **kwargs))
        return batches[-1]

    buffer.sample = recording_sample
    reported = agent._update_encoder(buffer)["encoder/loss"].item()
    [batch] = batches

    def loss_against(zsa_target: bool) -> float:
        with torch.no_grad():
            target = before.encoder_target.f(batch.obs[:, 1:6])
            if zsa_target:
                target = before.encoder_target.g(target, batch.action[:, 1:6])
            loss, _ = losses.encoder_loss(before.encoder, batch.obs[:, 0], batch.action[:, :5], batch.reward[:, :5],
                                          batch.terminated[:, :5], target, bins=agent.bins,
                                          dynamics_weight=config.dynamics_weight, reward_weight=config.reward_weight,
                                          done_weight=config.done_weight, use_done=buffer.ever_terminated,
                                          next_action=batch.action[:, 1:6] if zsa_target else None)
        assert target.shape == (8, 5, 16)
        return loss.item()

    # The same fp32 computation on the same tensors, in another layout (time-major there): sums of at most
    # 16 x 5 x 8 terms reordered, far below 1e-5 relative.
    assert reported == pytest.approx(loss_against(zsa_target=True), rel=1e-5)
    assert abs(reported - loss_against(zsa_target=False)) > 1e-2 * reported


def test_no_reward_scaling_keeps_the_scale_at_one():
    for scaling, expected in ((True, None), (False, 1.0)):
        agent, buffer = _agent(reward_scaling=scaling)
        agent.update(buffer)
        assert agent.reward_scale == (buffer.reward_scale() if expected is None else expected)
    assert buffer.reward_scale() != pytest.approx(1.0)


def test_clipped_double_q_and_mse_switch_the_target_and_the_loss():
    R, ND = torch.tensor([1.0]), torch.tensor([1.0])
    next_q = torch.tensor([[2.0, 4.0]])
    assert losses.critic_target(R, ND, next_q, discount=0.5, horizon=1, reward_scale=1.0,
                                 target_reward_scale=1.0, clipped_double_q=True).item() == 2.0  # 1 + 0.5 * 2
    assert losses.critic_target(R, ND, next_q, discount=0.5, horizon=1, reward_scale=1.0,
                                 target_reward_scale=1.0, clipped_double_q=False).item() == 2.5  # 1 + 0.5 * 3

    class Fixed(torch.nn.Module):
        def forward(self, zsa):
            return torch.tensor([[0.0, 3.0]])

    y = torch.tensor([[1.0]])
    huber, _, _ = losses.critic_loss(Fixed(), None, y, loss_type="huber")
    mse, _, _ = losses.critic_loss(Fixed(), None, y, loss_type="mse")
    assert huber.item() == pytest.approx((0.5 + 1.5) / 2)  # |e|=1 -> 0.5; |e|=2 -> 1.5
    assert mse.item() == pytest.approx((1.0 + 4.0) / 2)


def test_no_model_based_representation_trains_the_encoder_with_the_critic():
    agent, buffer = _agent(model_based_representation=False)
    before = [p.detach().clone() for p in agent.encoder.parameters()]
    metrics = agent.update(buffer)
    assert not any(name.startswith("encoder/") for name in metrics)  # no encoder losses, no burst
    assert agent.encoder_optimizer.state_dict()["state"][0]["step"].item() == 1.0  # one step, from the critic
    changed = [not torch.equal(a, b) for a, b in zip(before, agent.encoder.parameters())]
    assert any(changed)
    model_head = list(agent.encoder.model.parameters())
    assert all(p.grad is None or not p.grad.any() for p in model_head)  # the latent model is untouched


def test_horizon_switches_are_the_existing_fields():
    assert variant("1-step-return", SMALL).q_horizon == 1
    assert variant("no-unroll", SMALL).enc_horizon == 1
    agent, buffer = ULDAgent(SPEC, variant("no-unroll", SMALL)), _filled(variant("no-unroll", SMALL))
    assert agent.update(buffer)["encoder/loss"].isfinite()


def test_variant_args_select_the_variant_through_the_cli():
    from uld.agents.uld.design_study import variant_args
    from uld.train.config import parse_train_args

    for name, changes in VARIANTS.items():
        config = parse_train_args(variant_args(name))
        for field, value in changes.items():
            assert getattr(config.uld, field) == value, (name, field)


def test_design_study_sweep_and_relative_scores(tmp_path):
    """Two variants on one task, two seeds each, through the real sweep; then the relative-score table. CartPole:
    an untrained policy ends its episodes within some tens of steps, so the evaluations cost little."""
    import re

    from uld.analysis.design_study import design_study_table, relative_score
    from uld.analysis.sweep import SweepConfig, run_sweep

    tiny = ["--small", "--uld.batch-size", "8", "--uld.hidden-dim", "16", "--uld.zs-dim", "16", "--uld.zsa-dim", "16",
            "--uld.za-dim", "8", "--uld.random-steps", "30", "--uld.target-update-period", "10",
            "--uld.buffer-capacity", "2000"]
    config = SweepConfig(envs=("gym:CartPole-v1",), seeds="0-1", steps=60, eval_every=60, eval_episodes=1,
                         out=str(tmp_path / "study"), design_study=True, variants=("mse",), parallel=2)
    assert run_sweep(config, tiny) == 0
    table = design_study_table(tmp_path / "study", reps=200)
    row = next(line for line in table.splitlines() if line.startswith("| mse |"))
    point, low, high = (float(x) for x in re.findall(r"[+-]\d+\.\d+", row))
    assert low <= point <= high and row.endswith("| 1 |")
    # Hand-checked relative score: (mean(2, 4) - mean(1, 1) + mean(0.5) - mean(1.5)) / 2 = 0.5
    variant = {"a": np.array([2.0, 4.0]), "b": np.array([0.5])}
    default = {"a": np.array([1.0, 1.0]), "b": np.array([1.5])}
    assert relative_score(variant, default, reps=100, seed=0)[0] == pytest.approx(0.5)
