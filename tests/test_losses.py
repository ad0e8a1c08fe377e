"""ULD losses against hand-computed numbers (spec/ULD.md, Losses)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from uld.agents.uld import losses
from uld.agents.uld.config import ULDConfig
from uld.agents.uld.networks import Encoder, Policy, Value

torch.set_num_threads(1)


# --- n-step return -------------------------------------------------------------------------------------


def test_n_step_return_counts_the_terminal_reward_and_nothing_after_it() -> None:
    reward = torch.tensor([[1.0, 2.0, 4.0]] * 5)
    terminated = torch.tensor(
        [
            [0.0, 0.0, 0.0],  # no terminal: 1 + 0.5 * 2 + 0.25 * 4 = 3
            [0.0, 1.0, 0.0],  # terminal after step 2: 1 + 0.5 * 2 = 2
            [1.0, 0.0, 0.0],  # terminal after step 1: 1
            [0.0, 0.0, 1.0],  # terminal after step 3: 3, no bootstrap
            [1.0, 1.0, 0.0],  # masked flags after a terminal change nothing: 1
        ]
    )
    R, ND = losses.n_step_return(reward, terminated, 0.5)
    assert R.tolist() == [3.0, 2.0, 1.0, 3.0, 1.0]
    assert ND.tolist() == [1.0, 0.0, 0.0, 0.0, 0.0]


def test_n_step_return_with_gamma_099_and_negative_rewards() -> None:
    R, ND = losses.n_step_return(torch.tensor([[-1.0, 3.0, 0.5]]), torch.zeros(1, 3), 0.99)
    assert R.item() == pytest.approx(-1.0 + 0.99 * 3.0 + 0.99**2 * 0.5, rel=1e-6)  # 2.460050
    assert ND.item() == 1.0


# --- reward bins and two-hot ------------------------------------------------------------------------------


BINS = losses.reward_bins(65, 10.0)


def test_reward_bins_are_symexp_of_linspace_with_endpoints_e10_minus_1() -> None:
    assert BINS.shape == (65,)
    end = math.exp(10.0) - 1.0  # 22025.465794806718
    assert BINS[0].item() == pytest.approx(-end, rel=1e-6)
    assert BINS[-1].item() == pytest.approx(end, rel=1e-6)
    assert BINS[32].item() == 0.0
    assert BINS[33].item() == pytest.approx(math.exp(0.3125) - 1.0, rel=1e-6)  # 0.366838
    assert BINS[31].item() == pytest.approx(-(math.exp(0.3125) - 1.0), rel=1e-6)
    assert torch.all(BINS[1:] > BINS[:-1])


def test_two_hot_on_a_bin_is_one_hot() -> None:
    encoded = losses.two_hot(torch.stack([BINS[40], BINS[0], BINS[64], torch.tensor(0.0)]), BINS)
    for row, index in enumerate([40, 0, 64, 32]):
        expected = torch.zeros(65)
        expected[index] = 1.0
        torch.testing.assert_close(encoded[row], expected, atol=1e-6, rtol=0)


def test_two_hot_between_bins_splits_mass_linearly() -> None:
    b33, b34 = math.exp(0.3125) - 1.0, math.exp(0.625) - 1.0  # 0.366838, 0.868246
    b29, b30 = -(math.exp(0.9375) - 1.0), -(math.exp(0.625) - 1.0)  # -1.553589, -0.868246
    encoded = losses.two_hot(torch.tensor([0.5, -1.0]), BINS)
    w34 = (0.5 - b33) / (b34 - b33)  # 0.265578
    w30 = (-1.0 - b29) / (b30 - b29)  # 0.807694
    assert encoded[0, 34].item() == pytest.approx(w34, abs=1e-6)
    assert encoded[0, 33].item() == pytest.approx(1.0 - w34, abs=1e-6)
    assert encoded[1, 30].item() == pytest.approx(w30, abs=1e-6)
    assert encoded[1, 29].item() == pytest.approx(1.0 - w30, abs=1e-6)
    assert torch.count_nonzero(encoded, dim=-1).tolist() == [2, 2]


def test_two_hot_beyond_the_outer_bins_puts_all_mass_on_the_outer_bin() -> None:
    encoded = losses.two_hot(torch.tensor([1e6, -1e6, 30_000.0, -22_026.0]), BINS)
    assert torch.isfinite(encoded).all()
    for row, index in enumerate([64, 0, 64, 0]):
        assert encoded[row, index].item() == 1.0
        assert encoded[row].sum().item() == 1.0


def test_two_hot_rows_sum_to_one_and_the_expectation_is_the_value() -> None:
    values = torch.tensor([[-20_000.0, -3.7, -0.01, 0.0], [0.25, 1.0, 17.0, 12_345.0]])
    encoded = losses.two_hot(values, BINS)
    assert encoded.shape == (2, 4, 65)
    torch.testing.assert_close(encoded.sum(-1), torch.ones(2, 4), atol=1e-6, rtol=0)
    assert (encoded >= 0).all()
    expectation = (encoded * BINS).sum(-1)
    torch.testing.assert_close(expectation, values, rtol=1e-5, atol=1e-5)


# --- critic target, critic loss ---------------------------------------------------------------------------


def test_critic_target_scales_the_bootstrap_by_target_reward_scale_and_divides_by_reward_scale() -> None:
    R = torch.tensor([1.0, 2.0])
    ND = torch.tensor([1.0, 0.0])
    next_q = torch.tensor([[3.0, 5.0], [10.0, -4.0]])
    y = losses.critic_target(R, ND, next_q, discount=0.5, horizon=3, reward_scale=2.0, target_reward_scale=4.0)
    # row 0: (1 + 1 * 0.5**3 * min(3, 5) * 4) / 2 = (1 + 1.5) / 2 = 1.25
    # row 1: terminal, no bootstrap: 2 / 2 = 1
    assert y.shape == (2, 1)
    assert y[:, 0].tolist() == [1.25, 1.0]


def test_critic_loss_is_huber_over_both_heads_and_td_is_the_larger_head_error() -> None:
    q = torch.tensor([[1.0, 3.0], [0.5, -2.0]], requires_grad=True)
    y = torch.tensor([[1.5], [0.0]])
    loss, td_error, metrics = losses.critic_loss(lambda zsa: q, torch.zeros(2, 4), y)
    # errors -0.5, 1.5, 0.5, -2.0 -> Huber 0.125, 1.0, 0.125, 1.5 -> mean 2.75 / 4
    assert loss.item() == pytest.approx(0.6875, abs=1e-7)
    assert td_error.tolist() == [1.5, 2.0]
    assert not td_error.requires_grad
    loss.backward()
    # d/dq of the mean Huber: clip(q - y, -1, 1) / 4
    assert q.grad.tolist() == [[-0.125, 0.25], [0.125, -0.25]]
    assert metrics["critic/loss"].item() == pytest.approx(0.6875, abs=1e-7)


def test_critic_loss_trains_both_heads_of_a_real_value_network() -> None:
    torch.manual_seed(0)
    value = Value(zsa_dim=6, hidden_dim=8)
    zsa, y = torch.randn(5, 6), torch.randn(5, 1)
    loss, td_error, _ = losses.critic_loss(value, zsa, y)
    q = value(zsa).detach()
    manual = F.smooth_l1_loss(q, y.expand(5, 2))
    assert loss.item() == pytest.approx(manual.item(), rel=1e-6)
    torch.testing.assert_close(td_error, (q - y).abs().max(dim=-1).values)
    loss.backward()
    assert value.out1.weight.grad.abs().sum() > 0 and value.out2.weight.grad.abs().sum() > 0


# --- actor loss -------------------------------------------------------------------------------------------


def _tiny_encoder(action_dim: int = 2, num_bins: int = 65) -> Encoder:
    return Encoder((3,), action_dim, zs_dim=4, zsa_dim=5, za_dim=3, hidden_dim=8, num_bins=num_bins, pixels=False)


def test_actor_loss_is_minus_mean_q_plus_pre_activation_penalty() -> None:
    torch.manual_seed(1)
    encoder, value = _tiny_encoder(), Value(5, 8)
    policy = Policy(4, 2, 8, discrete=False, gumbel_tau=10.0)
    zs = encoder.f(torch.randn(6, 3)).detach()
    assert ULDConfig().pre_activation_weight == 1e-5
    loss, metrics = losses.actor_loss(encoder, value, policy, zs, pre_activation_weight=1e-5)
    pre = policy.mlp(zs)
    q = value(encoder.g(zs, torch.tanh(pre)))
    expected = -q.mean() + 1e-5 * pre.pow(2).mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6, abs=1e-7)
    assert metrics["actor/pre_activation"].item() == pytest.approx(pre.pow(2).mean().item(), rel=1e-6)
    # The penalty enters linearly with its weight.
    heavy, _ = losses.actor_loss(encoder, value, policy, zs, pre_activation_weight=0.5)
    assert (heavy - loss).item() == pytest.approx((0.5 - 1e-5) * pre.pow(2).mean().item(), rel=1e-5)


# --- encoder loss -----------------------------------------------------------------------------------------


H_ENC = 4
BIN_INDEX = [32, 40, 20, 33]  # rewards placed exactly on bins: the two-hot target is one-hot


def _encoder_batch(seed: int = 0):
    """Two subsequences of H_ENC steps; row 0 terminates after step 1 (d_2 = 1), row 1 never."""
    g = torch.Generator().manual_seed(seed)
    obs0 = torch.randn(2, 3, generator=g)
    action = torch.rand(2, H_ENC, 2, generator=g) * 2 - 1
    reward = BINS[torch.tensor([BIN_INDEX, BIN_INDEX[::-1]])].clone()
    terminated = torch.zeros(2, H_ENC)
    terminated[0, 1] = 1.0
    target_zs = torch.randn(2, H_ENC, 4, generator=g)
    return obs0, action, reward, terminated, target_zs


def _manual_encoder_loss(encoder, obs0, action, reward, terminated, target_zs, counted_steps, use_done):
    """The spec's sum over the unroll, with the counted steps of each row given explicitly."""
    weights = dict(dynamics=1.0, reward=0.1, done=0.1)
    bins = BINS.tolist()
    total = 0.0
    for row in range(2):
        zs = encoder.f(obs0[row : row + 1])
        for i in range(counted_steps[row]):
            out = encoder.model(encoder.g(zs, action[row : row + 1, i]))
            done_pred, zs, logits = out[:, :1], out[:, 1:5], out[:, 5:]
            dynamics = ((zs - target_zs[row, i]) ** 2).mean()
            ce = -torch.log_softmax(logits, -1)[0, bins.index(reward[row, i].item())]
            done = (done_pred[0, 0] - terminated[row, i]) ** 2
            term = weights["dynamics"] * dynamics + weights["reward"] * ce
            if use_done:
                term = term + weights["done"] * done
            total += term.item() / 2  # mean over the batch of 2
    return total


@pytest.mark.parametrize("use_done", [True, False])
def test_encoder_loss_counts_steps_up_to_the_terminal_only(use_done: bool) -> None:
    torch.manual_seed(2)
    encoder = _tiny_encoder()
    batch = _encoder_batch()
    loss, metrics = losses.encoder_loss(encoder, *batch[:4], batch[4], bins=BINS, dynamics_weight=1.0, reward_weight=0.1, done_weight=0.1, use_done=use_done)
    # row 0: steps 0 and 1 (the terminal step counts); row 1: all four steps
    expected = _manual_encoder_loss(encoder, *batch, counted_steps=[2, H_ENC], use_done=use_done)
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    assert metrics["encoder/loss"].item() == pytest.approx(expected, rel=1e-5)


def test_encoder_loss_ignores_data_after_the_terminal() -> None:
    torch.manual_seed(3)
    encoder = _tiny_encoder()
    obs0, action, reward, terminated, target_zs = _encoder_batch()
    loss, _ = losses.encoder_loss(encoder, obs0, action, reward, terminated, target_zs, bins=BINS, dynamics_weight=1.0, reward_weight=0.1, done_weight=0.1, use_done=True)
    # Row 0 terminates after step 1: scramble everything of row 0 from step 2 on.
    action2, reward2, terminated2, target2 = action.clone(), reward.clone(), terminated.clone(), target_zs.clone()
    action2[0, 2:] = -action2[0, 2:]
    reward2[0, 2:] = torch.tensor([5_000.0, -77.0])
    terminated2[0, 2:] = torch.tensor([1.0, 0.0])
    target2[0, 2:] = 100.0
    changed, _ = losses.encoder_loss(encoder, obs0, action2, reward2, terminated2, target2, bins=BINS, dynamics_weight=1.0, reward_weight=0.1, done_weight=0.1, use_done=True)
    assert changed.item() == pytest.approx(loss.item(), rel=1e-6)
    # The same change in row 1 (no terminal) does change the loss.
    target2[1, 2:] = 100.0
    changed_row1, _ = losses.encoder_loss(encoder, obs0, action2, reward2, terminated2, target2, bins=BINS, dynamics_weight=1.0, reward_weight=0.1, done_weight=0.1, use_done=True)
    assert changed_row1.item() > loss.item() + 1.0


def test_encoder_loss_done_term_only_counts_with_use_done() -> None:
    torch.manual_seed(4)
    encoder = _tiny_encoder()
    batch = _encoder_batch()
    with_done, metrics = losses.encoder_loss(encoder, *batch, bins=BINS, dynamics_weight=1.0, reward_weight=0.1, done_weight=0.1, use_done=True)
    without_done, metrics_off = losses.encoder_loss(encoder, *batch, bins=BINS, dynamics_weight=1.0, reward_weight=0.1, done_weight=0.1, use_done=False)
    done_mse = metrics["encoder/done_mse"].item()
    assert done_mse > 0
    assert (with_done - without_done).item() == pytest.approx(0.1 * done_mse, rel=1e-5)
    dyn, ce = metrics_off["encoder/dynamics"].item(), metrics_off["encoder/reward_ce"].item()
    assert without_done.item() == pytest.approx(1.0 * dyn + 0.1 * ce, rel=1e-6)
    # The weights are applied as given.
    weighted, _ = losses.encoder_loss(encoder, *batch, bins=BINS, dynamics_weight=2.0, reward_weight=0.5, done_weight=3.0, use_done=True)
    assert weighted.item() == pytest.approx(2.0 * dyn + 0.5 * ce + 3.0 * done_mse, rel=1e-5)


def test_encoder_loss_feeds_the_predicted_zs_back_and_backpropagates_into_f() -> None:
    torch.manual_seed(5)
    encoder = _tiny_encoder()
    obs0, action, reward, terminated, target_zs = _encoder_batch()
    loss, _ = losses.encoder_loss(encoder, obs0, action, reward, torch.zeros(2, H_ENC), target_zs, bins=BINS,
                                  dynamics_weight=1.0, reward_weight=0.0, done_weight=0.0, use_done=True)
    # Dynamics only: rebuild the unroll by hand from the head's own predictions.
    zs, expected = encoder.f(obs0), 0.0
    for i in range(H_ENC):
        _, zs, _ = encoder.predict(encoder.g(zs, action[:, i]))
        expected += ((zs - target_zs[:, i]) ** 2).mean().item()
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    loss.backward()
    assert encoder.state_encoder.mlp.l1.weight.grad.abs().sum() > 0
