"""The ULD agent: network sizes, update schedule, gradient isolation, priorities, acting, determinism.

Spec: spec/ULD.md (Networks, Update schedule, Losses, Acting). Small sizes everywhere except the
parameter counts, which use the published configuration.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from numerics import assert_same_argmax, network_rounding_bound
from uld.agents.uld import losses
from uld.agents.uld.agent import ULDAgent
from uld.agents.uld.config import ULDConfig, reduced_config
from uld.envs.base import EnvSpec
from uld.replay.buffer import ReplayBuffer

torch.set_num_threads(1)

VECTOR = EnvSpec("test:vector", (17,), 6, discrete=False, max_episode_steps=1000)
DISCRETE = EnvSpec("test:discrete", (5,), 4, discrete=True, max_episode_steps=1000)
ATARI = EnvSpec("test:atari", (4, 84, 84), 18, discrete=True, max_episode_steps=27_000, pixels=True)


def small_config(**overrides) -> ULDConfig:
    sizes = dict(batch_size=8, zs_dim=16, zsa_dim=16, za_dim=8, hidden_dim=16, target_update_period=4,
                 buffer_capacity=500, random_steps=0)
    sizes.update(overrides)
    return ULDConfig(**sizes)


def make_buffer(spec: EnvSpec, config: ULDConfig, seed: int = 0) -> ReplayBuffer:
    obs_dtype = np.uint8 if spec.pixels else np.float32
    return ReplayBuffer(spec.obs_shape, spec.action_dim, config.buffer_capacity, config.horizon,
                        prioritized=config.prioritized, alpha=config.alpha, min_priority=config.min_priority,
                        seed=seed, obs_dtype=obs_dtype)


def add_episodes(buffer: ReplayBuffer, spec: EnvSpec, episodes, abs_reward: float, seed: int) -> None:
    """Episodes of (length, end) with random observations and actions and rewards of size abs_reward."""
    rng = np.random.default_rng(seed)

    def observation():
        if spec.pixels:
            return rng.integers(0, 256, size=spec.obs_shape, dtype=np.uint8)
        return rng.normal(size=spec.obs_shape).astype(np.float32)

    for length, end in episodes:
        obs = observation()
        for t in range(length):
            if spec.discrete:
                action = np.eye(spec.action_dim, dtype=np.float32)[rng.integers(spec.action_dim)]
            else:
                action = rng.uniform(-1, 1, spec.action_dim).astype(np.float32)
            reward = abs_reward * rng.choice([-1.0, 1.0])
            next_obs = observation()
            last = t == length - 1
            buffer.add(obs, action, reward, next_obs, terminated=last and end == "terminated",
                       truncated=last and end == "truncated")
            obs = next_obs


def filled(spec: EnvSpec, config: ULDConfig, seed: int = 0) -> ReplayBuffer:
    buffer = make_buffer(spec, config, seed)
    add_episodes(buffer, spec, [(10, "terminated"), (10, "truncated")], abs_reward=2.0, seed=seed)
    return buffer


def online_modules(agent: ULDAgent) -> list[nn.Module]:
    return [agent.encoder, agent.policy, agent.value]


def count(modules) -> int:
    return sum(p.numel() for m in modules for p in m.parameters())


def snapshot(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# --- sizes ---------------------------------------------------------------------------------------------------


def test_parameter_count_halfcheetah_full_config() -> None:
    agent = ULDAgent(VECTOR, ULDConfig())
    # encoder 1,751,874 + policy 528,390 + value 1,576,962
    assert count([agent.encoder]) == 1_751_874
    assert count([agent.policy]) == 528_390
    assert count([agent.value]) == 1_576_962
    assert count(online_modules(agent)) == 3_857_226


def test_parameter_count_atari_full_config() -> None:
    agent = ULDAgent(ATARI, ULDConfig())
    # pixel f: convs 1,184 + 3 x 9,248, Linear(1568, 512) 803,328; za 4,864; g 919,040; head 296,514
    assert count([agent.encoder]) == 2_052_674
    assert count([agent.policy]) == 534_546
    assert count(online_modules(agent)) == 4_164_182


def test_layer_norm_has_no_learnable_parameters() -> None:
    agent = ULDAgent(ATARI, small_config())
    for module in online_modules(agent):
        assert not any(isinstance(m, nn.LayerNorm) for m in module.modules())
        # Every parameter is the weight or bias of a Linear or Conv2d.
        owned = sum(p.numel() for m in module.modules() if isinstance(m, (nn.Linear, nn.Conv2d))
                    for p in m.parameters(recurse=False))
        assert owned == count([module])


def test_targets_start_as_frozen_copies() -> None:
    agent = ULDAgent(VECTOR, small_config())
    for online, target in zip(online_modules(agent), (agent.encoder_target, agent.policy_target, agent.value_target)):
        assert same(snapshot(online), snapshot(target))
        assert not any(p.requires_grad for p in target.parameters())


# --- update schedule -----------------------------------------------------------------------------------------


def optimizer_steps(optimizer: torch.optim.Optimizer) -> int:
    param = optimizer.param_groups[0]["params"][0]
    return int(optimizer.state[param]["step"]) if param in optimizer.state else 0


def test_update_schedule_target_copies_encoder_bursts_and_reward_scales(monkeypatch) -> None:
    torch.manual_seed(0)
    config = small_config(target_update_period=4)
    agent = ULDAgent(VECTOR, config)
    buffer = filled(VECTOR, config)  # 20 transitions, |r| = 2
    assert (agent.reward_scale, agent.target_reward_scale) == (1.0, 1.0)

    copies, encoder_updates, scales = [], [], []
    copy_targets, update_encoder = agent._copy_targets, agent._update_encoder

    def recording_copy():
        copy_targets()
        copies.append(agent.training_step)
        for online, target in zip(online_modules(agent), (agent.encoder_target, agent.policy_target, agent.value_target)):
            assert same(snapshot(online), snapshot(target)), "target differs from online right after the copy"

    def recording_encoder_update(buf):
        encoder_updates.append(agent.training_step)
        return update_encoder(buf)

    critic_target = losses.critic_target

    def recording_critic_target(R, ND, next_q, **options):
        scales.append((options["reward_scale"], options["target_reward_scale"]))
        return critic_target(R, ND, next_q, **options)

    monkeypatch.setattr(agent, "_copy_targets", recording_copy)
    monkeypatch.setattr(agent, "_update_encoder", recording_encoder_update)
    monkeypatch.setattr(losses, "critic_target", recording_critic_target)

    expected_scales = {1: (2.0, 1.0), 5: (3.5, 2.0), 9: (2.5, 3.5)}  # (reward_scale, target_reward_scale)
    targets_at_copy = None
    for step in range(1, 10):
        if step == 5:
            add_episodes(buffer, VECTOR, [(10, "terminated"), (10, "truncated")], abs_reward=5.0, seed=1)  # mean 3.5
        if step == 9:
            add_episodes(buffer, VECTOR, [(20, "truncated")], abs_reward=0.5, seed=2)  # (40 + 100 + 10) / 60 = 2.5
        metrics = agent.update(buffer)
        assert agent.training_step == step
        copied = step in (1, 5, 9)
        assert copies == [s for s in (1, 5, 9) if s <= step]  # a copy exactly at each period's first step
        if copied:
            targets_at_copy = [snapshot(t) for t in (agent.encoder_target, agent.policy_target, agent.value_target)]
            assert "encoder/loss" in metrics
        else:
            assert "encoder/loss" not in metrics
        # Targets stay put between copies, while the online networks have moved on.
        for online, target, frozen in zip(online_modules(agent), (agent.encoder_target, agent.policy_target,
                                                                   agent.value_target), targets_at_copy):
            assert same(snapshot(target), frozen)
            assert not same(snapshot(online), frozen)
        reward_scale, target_reward_scale = expected_scales[max(s for s in expected_scales if s <= step)]
        assert agent.reward_scale == pytest.approx(reward_scale, rel=1e-12)
        assert agent.target_reward_scale == pytest.approx(target_reward_scale, rel=1e-12)
        assert scales[-1] == (agent.reward_scale, agent.target_reward_scale)
        # T encoder steps per burst; one value and one policy step per update.
        assert optimizer_steps(agent.encoder_optimizer) == 4 * len(copies)
        assert optimizer_steps(agent.value_optimizer) == step
        assert optimizer_steps(agent.policy_optimizer) == step

    assert copies == [1, 5, 9]
    assert encoder_updates == [1] * 4 + [5] * 4 + [9] * 4


def test_actor_update_gives_no_weight_gradients_to_encoder_and_value(monkeypatch) -> None:
    torch.manual_seed(1)
    agent = ULDAgent(VECTOR, small_config())
    buffer = filled(VECTOR, agent.config)
    frozen: dict[str, dict[str, torch.Tensor]] = {}
    checks = []

    def clear(module):
        for p in module.parameters():
            p.grad = None

    value_zero_grad, value_step, policy_step = (agent.value_optimizer.zero_grad, agent.value_optimizer.step,
                                                agent.policy_optimizer.step)

    def value_zero_grad_and_clear_encoder(*args, **kwargs):
        value_zero_grad(*args, **kwargs)
        clear(agent.encoder)  # drop the encoder burst's gradients so any new one would show

    def checked_value_step(*args, **kwargs):
        assert all(p.grad is None for p in agent.encoder.parameters()), "critic loss reached the encoder"
        assert all(p.grad is not None for p in agent.value.parameters())
        out = value_step(*args, **kwargs)
        clear(agent.value)
        frozen["encoder"], frozen["value"] = snapshot(agent.encoder), snapshot(agent.value)
        return out

    def checked_policy_step(*args, **kwargs):
        assert all(p.grad is None for p in agent.encoder.parameters()), "actor loss gave the encoder weight grads"
        assert all(p.grad is None for p in agent.value.parameters()), "actor loss gave the value weight grads"
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in agent.policy.mlp.l3.parameters())
        checks.append(agent.training_step)
        return policy_step(*args, **kwargs)

    monkeypatch.setattr(agent.value_optimizer, "zero_grad", value_zero_grad_and_clear_encoder)
    monkeypatch.setattr(agent.value_optimizer, "step", checked_value_step)
    monkeypatch.setattr(agent.policy_optimizer, "step", checked_policy_step)
    for step in (1, 2):
        policy_before = snapshot(agent.policy)
        agent.update(buffer)
        assert same(snapshot(agent.encoder), frozen["encoder"]), "actor update moved the encoder"
        assert same(snapshot(agent.value), frozen["value"]), "actor update moved the value"
        assert not same(snapshot(agent.policy), policy_before)
        for module in online_modules(agent):
            assert all(p.requires_grad for p in module.parameters()), "networks left frozen after the update"
    assert checks == [1, 2]


def test_critic_batch_priorities_are_updated_and_encoder_batches_leave_them(monkeypatch) -> None:
    torch.manual_seed(2)
    config = small_config(batch_size=16)
    agent = ULDAgent(VECTOR, config)
    buffer = filled(VECTOR, config)
    valid = np.flatnonzero(buffer.valid)
    buffer.update_priorities(valid, np.full(len(valid), 1e4))  # every priority 1e4 ** 0.4 = 39.81
    high = 1e4**0.4

    samples, updates, critic_td = [], [], []
    sample, update_priorities, critic_loss = buffer.sample, buffer.update_priorities, losses.critic_loss

    def recording_sample(batch_size, horizon):
        batch = sample(batch_size, horizon)
        samples.append((horizon, batch.index.numpy().copy()))
        return batch

    def recording_update(index, td_error):
        updates.append((index.numpy().copy(), td_error.numpy().copy()))
        update_priorities(index, td_error)

    def recording_critic_loss(value, zsa, y, **options):
        loss, td_error, metrics = critic_loss(value, zsa, y, **options)
        critic_td.append(td_error.clone())
        return loss, td_error, metrics

    monkeypatch.setattr(buffer, "sample", recording_sample)
    monkeypatch.setattr(buffer, "update_priorities", recording_update)
    monkeypatch.setattr(losses, "critic_loss", recording_critic_loss)

    before = buffer.priority.numpy().copy()
    agent.update(buffer)  # training step 1: 4 encoder batches (H_enc = 5), then one critic batch (H_Q = 3)
    assert [h for h, _ in samples] == [5, 5, 5, 5, 3]
    assert len(updates) == 1
    index, td = updates[0]
    np.testing.assert_array_equal(index, samples[-1][1])
    np.testing.assert_allclose(td, critic_td[0].numpy())
    expected = before.copy()
    for i, e in zip(index, td):
        expected[i] = max(abs(float(e)), 1.0) ** 0.4
    np.testing.assert_allclose(buffer.priority, expected, rtol=1e-12)
    # Encoder-batch starts that were not in the critic batch keep their old priority.
    encoder_only = np.setdiff1d(np.concatenate([i for _, i in samples[:-1]]), index)
    assert len(encoder_only) > 0
    assert np.all(buffer.priority.numpy()[encoder_only] == high)
    assert np.all(buffer.priority.numpy()[index] < high)
    # The sampling weights follow.
    np.testing.assert_allclose(buffer.sampling_weight(np.arange(buffer.capacity)), buffer.priority * buffer.valid)


# --- acting and discrete actions ---------------------------------------------------------------------------------


def test_discrete_config_halves_the_noises() -> None:
    agent = ULDAgent(DISCRETE, ULDConfig(batch_size=8, zs_dim=16, zsa_dim=16, za_dim=8, hidden_dim=16))
    assert agent.config.exploration_noise == 0.1
    assert agent.config.target_policy_noise == 0.1
    assert agent.config.target_noise_clip == 0.15
    continuous = ULDAgent(VECTOR, small_config())
    assert (continuous.config.exploration_noise, continuous.config.target_policy_noise,
            continuous.config.target_noise_clip) == (0.2, 0.2, 0.3)


@pytest.mark.numerics
def test_discrete_evaluation_acts_greedily_on_the_pre_activation() -> None:
    torch.manual_seed(3)
    agent = ULDAgent(DISCRETE, small_config())
    observations = np.random.default_rng(0).normal(size=(20, 5)).astype(np.float32)
    with torch.no_grad():
        pre = agent.policy.mlp(agent.encoder.f(torch.from_numpy(observations)))
    assert len(set(pre.argmax(-1).tolist())) > 1  # the check below is not trivially one constant action
    actions = []
    for obs in observations:
        action = agent.act(obs, explore=False)
        assert isinstance(action, int)
        assert agent.act(obs, explore=False) == action  # deterministic
        actions.append(action)
    # One observation at a time against a batch of 20: another matmul kernel, so the argmax is compared where
    # rounding cannot flip it (6 Linear layers of at most 65 terms each, numerics.network_rounding_bound).
    assert_same_argmax("greedy", actions, pre, network_rounding_bound(pre, layers=6, terms=65))
    explored = [agent.act(observations[0], explore=True) for _ in range(50)]
    assert all(isinstance(a, int) and 0 <= a < 4 for a in explored)


def test_discrete_target_actions_are_one_hot_and_update_runs() -> None:
    torch.manual_seed(4)
    agent = ULDAgent(DISCRETE, small_config())
    zs = agent.encoder_target.f(torch.randn(32, 5))
    action = agent._target_action(zs)
    assert action.shape == (32, 4)
    assert torch.all((action == 0) | (action == 1))
    assert action.sum(-1).tolist() == [1.0] * 32
    buffer = filled(DISCRETE, agent.config)
    metrics = agent.update(buffer)
    assert all(torch.isfinite(v).all() for v in metrics.values())


def test_continuous_act_is_within_unit_box_and_evaluation_is_tanh_pre() -> None:
    torch.manual_seed(5)
    agent = ULDAgent(VECTOR, small_config(exploration_noise=10.0))
    obs = np.random.default_rng(1).normal(size=17).astype(np.float32)
    with torch.no_grad():
        expected = torch.tanh(agent.policy.mlp(agent.encoder.f(torch.from_numpy(obs)[None])))[0].numpy()
    evaluated = agent.act(obs, explore=False)
    assert evaluated.shape == (6,)
    np.testing.assert_allclose(evaluated, expected, rtol=1e-6)
    np.testing.assert_array_equal(agent.act(obs, explore=False), evaluated)
    explored = np.stack([agent.act(obs, explore=True) for _ in range(50)])
    assert explored.min() >= -1.0 and explored.max() <= 1.0
    assert (np.abs(explored) == 1.0).any()  # sigma 10: the clip is exercised


def test_continuous_target_action_noise_is_clipped_to_03() -> None:
    torch.manual_seed(6)
    agent = ULDAgent(VECTOR, small_config())
    zs = agent.encoder_target.f(torch.randn(512, 17))
    with torch.no_grad():
        clean = torch.tanh(agent.policy_target.mlp(zs))
        action = agent._target_action(zs)
    assert action.min() >= -1.0 and action.max() <= 1.0
    assert (action - clean).abs().max() <= 0.3 + 1e-6
    assert (action - clean).abs().max() > 0.25  # 3072 draws of N(0, 0.2^2): some hit the clip


def test_pixel_agent_scales_uint8_frames_once_and_its_updates_reach_the_convolutions() -> None:
    """Frames stay uint8 in the replay (a quarter of float32's bytes) and the encoder maps them to [-0.5, 0.5]
    itself: f of the uint8 frames equals the same layers applied in float64 to frames / 255 - 0.5. The bound is
    numerics.network_rounding_bound for fp32 against exact arithmetic: five layers (four convolutions and a
    Linear) of at most 32 x 3 x 3 + 1 terms (a 3 x 3 kernel over 32 channels, and the bias; the 36 x 36 frames
    leave one pixel for the Linear's 32 inputs), the row's scale set by the LayerNorm at the end. Then updates on those
    frames train the convolutions: every convolution's weight moves, and the metrics are finite."""
    torch.manual_seed(7)
    spec = EnvSpec("test:pixels", (4, 36, 36), 3, discrete=True, max_episode_steps=100, pixels=True)
    config = small_config(target_update_period=2)
    agent = ULDAgent(spec, config)
    buffer = filled(spec, config)
    assert buffer.obs.dtype == torch.uint8
    frames = buffer.obs[:8]
    encoder = agent.encoder.state_encoder
    with torch.no_grad():
        zs = agent.encoder.f(frames)
        x = frames.double() / 255.0 - 0.5
        for conv in encoder.convs:
            x = F.elu(F.conv2d(x, conv.weight.double(), conv.bias.double(), stride=conv.stride))
        linear = x.flatten(1) @ encoder.linear.weight.double().T + encoder.linear.bias.double()
        expected = F.elu(F.layer_norm(linear, linear.shape[-1:]))
    error = (zs.double() - expected).abs().amax(-1)
    assert torch.all(error <= network_rounding_bound(expected, layers=5, terms=32 * 3 * 3 + 1)), error

    convolutions = [conv.weight.detach().clone() for conv in encoder.convs]
    for _ in range(3):
        metrics = agent.update(buffer)
    assert all(torch.isfinite(v).all() for v in metrics.values())
    assert all(not torch.equal(before, conv.weight) for before, conv in zip(convolutions, encoder.convs))
    assert isinstance(agent.act(buffer.obs[0], explore=False), int)


# --- determinism -----------------------------------------------------------------------------------------------


def run_updates(seed: int, steps: int = 6):
    torch.manual_seed(seed)
    agent = ULDAgent(VECTOR, small_config())
    buffer = filled(VECTOR, agent.config, seed=seed)
    history = [{k: v.clone() for k, v in agent.update(buffer).items()} for _ in range(steps)]
    return agent, buffer, history


def test_same_seed_gives_identical_update_metrics_and_parameters() -> None:
    agent_a, buffer_a, history_a = run_updates(0)
    agent_b, buffer_b, history_b = run_updates(0)
    for a, b in zip(history_a, history_b):
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key]), key
    for a, b in zip(online_modules(agent_a), online_modules(agent_b)):
        assert same(snapshot(a), snapshot(b))
    np.testing.assert_array_equal(buffer_a.priority, buffer_b.priority)
    _, _, history_c = run_updates(1)
    assert not torch.equal(history_a[-1]["critic/loss"], history_c[-1]["critic/loss"])


def test_bf16_updates_see_the_weights_of_the_previous_step(monkeypatch) -> None:
    """Autocast caches bf16 weight copies per block: each update must open its own block, or a burst of
    encoder updates would all compute with the weights from before the burst."""
    spec = EnvSpec("test", (3,), 2, False, 50)
    config = ULDConfig(batch_size=8, zs_dim=16, zsa_dim=16, za_dim=8, hidden_dim=16, target_update_period=3,
                       buffer_capacity=500, random_steps=0)
    torch.manual_seed(0)
    agent = ULDAgent(spec, config, precision="bf16")
    buffer = make_buffer(spec, config, seed=0)
    rng = np.random.default_rng(0)
    for t in range(100):
        buffer.add(rng.normal(size=3), rng.uniform(-1, 1, 2), rng.normal(), rng.normal(size=3), False, t % 50 == 49)
    fixed = buffer.sample(8, config.horizon)
    monkeypatch.setattr(buffer, "sample", lambda batch_size, horizon: buffer.gather(fixed.index, horizon))
    seen = []
    encoder_loss = losses.encoder_loss

    def recording(encoder, obs0, *args, **kwargs):
        seen.append(encoder.f(obs0).float().sum().item())
        return encoder_loss(encoder, obs0, *args, **kwargs)

    monkeypatch.setattr(losses, "encoder_loss", recording)
    agent.update(buffer)
    assert len(seen) == 3 and len(set(seen)) == 3, seen


class _FixedBatches:
    """Stands in for the replay buffer: every draw is the given batch."""

    ever_terminated = True

    def __init__(self, batch):
        self.batch = batch

    def sample(self, batch_size: int, horizon: int, device="cpu"):
        return self.batch


@pytest.mark.parametrize("pixels", [False, True])
def test_encoder_update_pairs_each_subsequence_with_its_own_targets(pixels):
    # The agent works on time-major (T, B, ...) observation batches; its encoder loss must be the
    # batch-major formula of losses.encoder_loss, each subsequence with the targets of its own states.
    from uld.replay.buffer import Batch

    torch.manual_seed(0)
    spec = EnvSpec("test:pixels", (4, 36, 36), 3, False, 100, pixels=True) if pixels else VECTOR
    cfg = small_config(pixel_augmentation=False)
    agent = ULDAgent(spec, cfg)
    B, H = cfg.batch_size, cfg.enc_horizon
    if pixels:
        obs = torch.randint(0, 256, (B, H + 1, *spec.obs_shape), dtype=torch.uint8)
    else:
        obs = torch.randn(B, H + 1, *spec.obs_shape)
    terminated = torch.zeros(B, H)
    terminated[1, 2] = 1.0
    batch = Batch(np.arange(B), obs, torch.rand(B, H, spec.action_dim) * 2 - 1, torch.randn(B, H), terminated)

    def loss_with(target):
        loss, _ = losses.encoder_loss(agent.encoder, obs[:, 0], batch.action, batch.reward, terminated, target,
                                      bins=agent.bins, dynamics_weight=cfg.dynamics_weight,
                                      reward_weight=cfg.reward_weight, done_weight=cfg.done_weight, use_done=True)
        return loss.item()

    with torch.no_grad():
        zs_next = agent.encoder_target.f(obs[:, 1:].flatten(0, 1))  # batch-major: row b * H + i
        expected = loss_with(zs_next.unflatten(0, (B, H)))
        mispaired = loss_with(zs_next.unflatten(0, (H, B)).transpose(0, 1))  # what a layout slip would give
    assert abs(mispaired - expected) > 1e-3 * abs(expected)  # the check below can tell the two apart
    metrics = agent._update_encoder(_FixedBatches(batch))
    assert metrics["encoder/loss"].item() == pytest.approx(expected, rel=1e-5)


def test_agents_loaded_from_one_state_dict_do_not_share_optimizer_state():
    """ULD loads optimizer state with the shared rule (agents/common.py): a deep copy, so stepping one agent
    leaves the Adam moments of another agent loaded from the same state dict untouched."""
    spec = EnvSpec(name="toy", obs_shape=(3,), action_dim=2, discrete=False, pixels=False, max_episode_steps=50)
    config = reduced_config(batch_size=8, hidden_dim=16, zs_dim=16, zsa_dim=16, za_dim=8, target_update_period=2,
                            buffer_capacity=200)
    torch.manual_seed(0)
    source = ULDAgent(spec, config)
    buffer = make_buffer(spec, config, seed=0)
    rng = np.random.default_rng(0)
    obs = rng.standard_normal(3).astype(np.float32)
    for step in range(60):
        next_obs = rng.standard_normal(3).astype(np.float32)
        buffer.add(obs, rng.uniform(-1, 1, 2).astype(np.float32), float(rng.standard_normal()), next_obs, False,
                   step % 20 == 19)
        obs = next_obs
    source.update(buffer)
    state = source.state_dict()
    first, second = ULDAgent(spec, config), ULDAgent(spec, config)
    first.load_state_dict(state)
    second.load_state_dict(state)
    moments = [s["exp_avg"].clone() for s in second.value_optimizer.state.values()]
    first.update(buffer)
    after = [s["exp_avg"] for s in second.value_optimizer.state.values()]
    assert len(moments) > 0
    assert all(torch.equal(a, b) for a, b in zip(moments, after))
    changed = [s["exp_avg"] for s in first.value_optimizer.state.values()]
    assert any(not torch.equal(a, b) for a, b in zip(moments, changed))


def test_single_seed_bf16_trains_end_to_end(tmp_path, monkeypatch) -> None:
    """uld train --precision bf16 on a real env, one seed: the run evaluates, records bf16 in its config, its
    checkpoint loads (for playback, in fp32) and acts, and its 50 updates (after 100 random steps) moved the
    weights."""
    import json

    import uld
    from uld.train.logger import read_eval_csv
    from uld.train.run import TrainConfig, train

    config = TrainConfig(env="gym:Pendulum-v1", seed=2, steps=150, eval_every=150, eval_episodes=1, precision="bf16",
                         out=str(tmp_path / "run"), progress=False, small=True,
                         uld=reduced_config(batch_size=16, hidden_dim=32, zs_dim=32, zsa_dim=32, za_dim=16,
                                            random_steps=100, target_update_period=10, buffer_capacity=1000))
    import uld.agents.linear as linear_module

    dtypes, original = set(), linear_module.F.linear

    def recording_linear(x, weight, bias=None):
        out = original(x, weight, bias)
        dtypes.add(out.dtype)
        return out

    monkeypatch.setattr(linear_module.F, "linear", recording_linear)
    run = train(config)
    assert torch.bfloat16 in dtypes  # the updates' matmuls ran in bf16
    assert [row["step"] for row in read_eval_csv(run / "eval.csv")] == [0, 150]
    assert json.loads((run / "config.json").read_text())["precision"] == "bf16"
    trained = uld.load(run)
    assert trained.agent.training_step == 50
    torch.manual_seed(2)
    fresh = ULDAgent(trained.agent.spec, trained.agent.config, precision="bf16")
    assert not torch.equal(fresh.policy.mlp.l1.weight, trained.agent.policy.mlp.l1.weight)
    action = trained.act(np.zeros(3, np.float32))
    assert action.shape == (1,) and abs(float(action[0])) <= 1
