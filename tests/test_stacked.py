"""Many seeds in one agent: seed k of an S-seed StackedULD updates exactly as a single-seed ULDAgent
with seed k's weights, on the same batch and noise; and no seed's replay reaches another seed."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from numerics import FP32_EPS, adam_first_step, assert_same_argmax, assert_within, network_rounding_bound
from uld.agents.stacked import StackedULD, make_buffers
from uld.agents.uld.agent import ULDAgent
from uld.agents.uld.config import reduced_config
from uld.envs.base import EnvSpec

VECTOR = EnvSpec("test:vector", (5,), 2, discrete=False, max_episode_steps=100)
PIXELS = EnvSpec("test:pixels", (3, 36, 36), 2, discrete=False, max_episode_steps=100, pixels=True)
DISCRETE = EnvSpec("test:discrete", (5,), 4, discrete=True, max_episode_steps=100)
ATARI_LIKE = EnvSpec("test:discrete-pixels", (3, 36, 36), 3, discrete=True, max_episode_steps=100, pixels=True)
SEEDS = [3, 5, 7]
# A clip norm far below the value gradients' norms: the per-seed clip changes every value gradient.
CONFIG = reduced_config(batch_size=8, hidden_dim=64, zs_dim=64, zsa_dim=64, za_dim=16, num_bins=17,
                        target_update_period=2, buffer_capacity=400, value_grad_clip=1e-3)
# Forward values (metrics, priorities) and first-step gradients, relative to the size of their terms.
# fp32: batched matmuls and grouped convolutions sum in another order than single ones; each entry is a sum
# of at most a few thousand products (batch 8 x horizon x width 64), so reordering moves it by at most
# n * 2^-24 of the sum of the magnitudes, about 1e-4 of the tensor's largest entry for n = 2048 (the sums are
# far from their worst case, so this bound is met with a wide margin).
# bf16: every matmul rounds its operands to 8 bits (2^-9 relative each, 2^-8 per product), and a single
# agent's autocast sums a cached bf16 weight copy's gradients in bf16 where the looped agent casts per use and
# sums in fp32: a forward value a few such roundings apart, 5 x 2^-8 = 2e-2; a gradient one rounding in the
# forward and one in the backward for each bf16 matmul on its path, 2 x BF16_MATMULS x 2^-8.
RTOL = {"fp32": 1e-4, "bf16": 2e-2}
# bf16 matmuls between a loss and each network's weights: the value's MLP and head (4); the policy's MLP, then
# g (action encoder and MLP) and the value (3 + 4 + 4); the encoder's f (up to 5 layers for pixels), g and the
# model head (10).
BF16_MATMULS = {"encoder": 10, "value": 4, "policy": 11}
ATOL = 1e-6  # for tensors whose entries are all near 0 (fp32 rounding of values of order 1e-2)
# After AdamW's first step (see numerics.adam_first_step): both copies start from the same weights and the
# fused kernel computes p * (1 - lr * wd) - lr * direction in fp32, a handful of roundings of that size:
# 8 x 2^-23 of |p| + lr.
STEP_ULPS = 8


def _fill(buffers, spec: EnvSpec, steps: int = 60, seed_offset: int = 0) -> None:
    """Different random episodes for each seed's replay (terminations included)."""
    for k, buffer in enumerate(buffers):
        rng = np.random.default_rng(100 + k + seed_offset)

        def observation(rng=rng):
            if spec.pixels:
                return rng.integers(0, 256, spec.obs_shape, dtype=np.uint8)
            return rng.normal(size=spec.obs_shape).astype(np.float32)

        obs = observation()
        for t in range(steps):
            next_obs = observation()
            terminated = t % 23 == 22
            if spec.discrete:  # stored one-hot, as the trainer stores an index
                action = np.eye(spec.action_dim, dtype=np.float32)[rng.integers(spec.action_dim)]
            else:
                action = rng.uniform(-1, 1, spec.action_dim).astype(np.float32)
            buffer.add(obs, action, float(rng.normal()), next_obs, terminated, False)
            obs = observation() if terminated else next_obs


def _single(stacked: StackedULD, spec: EnvSpec, k: int) -> ULDAgent:
    agent = ULDAgent(spec, CONFIG, cuda_graphs=False, precision=stacked.precision)
    agent.load_state_dict(stacked.seed_state_dict(k))
    return agent


def _term_scale(name: str, metrics: dict, k: int | None) -> float:
    """The size of the terms a metric is made of. Losses other than the actor's are means of nonnegative terms
    (their mean is their size); a Q mean, a target mean and the actor's -Q are means of terms that may cancel,
    whose size the batch's largest |Q| gives."""
    def value(key):
        v = metrics[key] if k is None else metrics[key][k]
        return abs(float(v))

    if name.startswith("critic/q_") or name in ("critic/target_mean", "actor/loss"):
        return max(value("critic/q_max"), value("critic/q_min"), value("critic/target_mean"), value(name))
    return value(name)


def _grads(module) -> dict[str, torch.Tensor]:
    return {name: p.grad for name, p in module.named_parameters()}


@pytest.mark.numerics
@pytest.mark.parametrize("spec,looped,precision", [
    (VECTOR, False, "fp32"), (PIXELS, False, "fp32"), (DISCRETE, False, "fp32"), (ATARI_LIKE, False, "fp32"),
    (VECTOR, True, "fp32"), (PIXELS, True, "fp32"), (ATARI_LIKE, True, "fp32"),
    (VECTOR, None, "bf16"), (ATARI_LIKE, None, "bf16")],
    ids=["vector", "pixels", "discrete", "discrete-pixels", "vector-looped", "pixels-looped", "discrete-pixels-looped",
         "vector-bf16", "discrete-pixels-bf16"])
def test_seed_k_update_equals_single_seed_update(spec, looped, precision):
    """Mapped with vmap or seed after seed (the CPU's way for pixels, and bf16's), seed k updates as a single
    agent in the same precision: the same metrics and first-step gradients to the rounding of the precision
    (RTOL), and the same AdamW step from them (STEP_ULPS; compared against the step each copy's own gradient
    implies, since an entry whose gradient is rounding noise is moved by up to lr in a direction rounding chose).
    """
    stacked = StackedULD(spec, CONFIG, SEEDS, looped=looped, precision=precision)
    assert stacked.looped == (looped if precision == "fp32" else True)
    rtol = RTOL[precision]

    def close(a, b, what, scale):
        assert a.shape == b.shape, what
        assert_within(what, a.double() - b.double(), ATOL + rtol * scale)

    def close_metrics(stacked_metrics, single_metrics, k):
        for name, value in single_metrics.items():
            close(stacked_metrics[name][k], value, name, _term_scale(name, single_metrics, None))

    def close_step(network, agent, k, lr):
        for name, p in getattr(agent, network).named_parameters():
            q = stacked.params[f"{network}.{name}"]
            grad_rtol = RTOL["fp32"] if precision == "fp32" else 2 * BF16_MATMULS[network] * 2**-8
            assert_within(f"{network} grad {name}", q.grad[k].double() - p.grad.double(),
                          ATOL + grad_rtol * p.grad.abs().max().item())
            predicted = -lr * (adam_first_step(q.grad[k]) - adam_first_step(p.grad))
            assert_within(f"{network} {name}", q[k].detach().double() - p.detach().double() - predicted,
                          STEP_ULPS * FP32_EPS * (p.detach().double().abs() + lr))

    buffers = make_buffers(spec, CONFIG, SEEDS, "cpu")
    _fill(buffers, spec)
    stacked.reward_scale.copy_(torch.tensor([0.5, 2.0, 3.0], dtype=torch.float64))
    singles = [_single(stacked, spec, k) for k in range(len(SEEDS))]
    single_buffers = make_buffers(spec, CONFIG, SEEDS, "cpu")
    _fill(single_buffers, spec)

    # The encoder step: seed k draws its batch from its replay and its shifts from its generator; the
    # single agent draws the same from an identical replay and torch's global generator in that state.
    noise_states = [g.get_state() for g in stacked.generators]
    enc_metrics = stacked.update_encoder(*stacked.encoder_inputs(buffers))
    for k, (agent, buffer) in enumerate(zip(singles, single_buffers)):
        torch.set_rng_state(noise_states[k])
        close_metrics(enc_metrics, agent._update_encoder(buffer), k)
        close_step("encoder", agent, k, CONFIG.encoder_lr)

    # The value + policy step with the clip biting, then the priorities it writes.
    noise_states = [g.get_state() for g in stacked.generators]
    batch, obs, noise, gumbels = stacked.value_policy_inputs(buffers)
    assert len(gumbels) == (2 if spec.discrete else 0)
    vp_metrics = stacked.update_value_and_policy(buffers, batch, obs, noise, gumbels)
    for k, (agent, buffer) in enumerate(zip(singles, single_buffers)):
        torch.set_rng_state(noise_states[k])
        metrics = agent._update_value_and_policy(buffer)
        assert set(metrics) == set(vp_metrics)
        close_metrics(vp_metrics, metrics, k)
        close_step("value", agent, k, CONFIG.value_lr)
        close_step("policy", agent, k, CONFIG.policy_lr)
        # Clipped: the value gradient's norm is the clip norm (1e-3), far below the unclipped one.
        norm = torch.linalg.vector_norm(torch.stack([g.norm() for g in _grads(agent.value).values()]))
        assert norm == pytest.approx(CONFIG.value_grad_clip, rel=1e-3)
        close(buffers[k].priority, buffer.priority, "priorities", buffer.priority.abs().max().item())
        assert torch.equal(buffers[k].generator.get_state(), buffer.generator.get_state())
    # Each seed used its own batch: three seeds, three different sets of start slots.
    assert len({tuple(batch.index[k].tolist()) for k in range(len(SEEDS))}) == len(SEEDS)


def test_seed_state_dict_is_a_single_seed_checkpoint_and_round_trips():
    stacked = StackedULD(VECTOR, CONFIG, SEEDS)
    buffers = make_buffers(VECTOR, CONFIG, SEEDS, "cpu")
    _fill(buffers, VECTOR)
    for _ in range(3):
        stacked.update(buffers)
    # Seed 5's initial weights are those of a single-seed agent built after torch.manual_seed(5).
    torch.manual_seed(5)
    fresh = ULDAgent(VECTOR, CONFIG, cuda_graphs=False)
    assert torch.equal(StackedULD(VECTOR, CONFIG, SEEDS).params["policy.mlp.l1.weight"][1], fresh.policy.mlp.l1.weight)

    states = [stacked.seed_state_dict(k) for k in range(3)]
    assert set(states[0]) >= set(ULDAgent._MODULES) | {"counters"}
    other = StackedULD(VECTOR, CONFIG, [0, 1, 2])
    other.load_seed_state_dicts(states)
    for key, value in stacked.params.items():
        assert torch.equal(value, other.params[key]), key
    assert other.training_step == 3
    assert torch.equal(other.reward_scale, stacked.reward_scale)
    # Both continue identically (optimizer states and noise generators came along).
    copies = make_buffers(VECTOR, CONFIG, SEEDS, "cpu")
    for buffer, copy in zip(buffers, copies):
        copy.load_state_dict(buffer.state_dict())
    stacked.update(buffers)
    other.update(copies)
    for key, value in stacked.params.items():
        assert torch.equal(value, other.params[key]), key


@pytest.mark.parametrize("looped", [False, True], ids=["vmap", "looped"])
def test_seeds_are_independent(looped):
    """Changing seed 1's replay contents changes seed 1's parameters and no other seed's."""
    results = []
    for offset in (0, 1000):
        stacked = StackedULD(VECTOR, CONFIG, SEEDS, looped=looped)
        buffers = make_buffers(VECTOR, CONFIG, SEEDS, "cpu")
        _fill(buffers[:1], VECTOR)
        _fill(buffers[1:2], VECTOR, seed_offset=offset)  # only seed 1's episodes differ between the runs
        _fill(buffers[2:], VECTOR, seed_offset=2)
        for _ in range(4):
            stacked.update(buffers)
        results.append(stacked.params)
    a, b = results
    for key in a:
        assert torch.equal(a[key][0], b[key][0]) and torch.equal(a[key][2], b[key][2]), key
    assert any(not torch.equal(a[key][1], b[key][1]) for key in a)


@pytest.mark.numerics
def test_discrete_acting_equals_single_seed_acting():
    """Discrete actions: seed k's greedy action is the single agent's argmax, and its exploring action the
    argmax of the same noisy policy output, drawn from seed k's generator. vmap runs other matmul kernels than
    a single agent's, so the argmaxes are compared where rounding cannot flip them: the logits of 6 Linear
    layers of at most 65 terms (numerics.network_rounding_bound); the exploring scores are a softmax of the
    logits over tau, which moves no entry by more than the logits' error over tau, plus unit noise added."""
    stacked = StackedULD(DISCRETE, CONFIG, SEEDS)
    rows = {"greedy": ([], []), "exploring": ([], [])}  # per row: the stacked action, the single's scores
    for draw in range(8):
        obs = np.random.default_rng(draw).normal(size=(len(SEEDS), 5)).astype(np.float32)
        states = [g.get_state() for g in stacked.generators]
        greedy, exploring = stacked.act(obs, explore=False), stacked.act(obs, explore=True)
        assert greedy.shape == exploring.shape == (len(SEEDS),) and greedy.dtype == torch.int64
        for k in range(len(SEEDS)):
            single = _single(stacked, DISCRETE, k)
            torch.set_rng_state(states[k])
            with torch.no_grad():  # the draws and the arithmetic of ULDAgent.act
                action, pre = single.policy(single.encoder.f(torch.from_numpy(obs[k]).unsqueeze(0)))
                noisy = action + CONFIG.exploration_noise * torch.randn_like(action)
            rows["greedy"][0].append(int(greedy[k]))
            rows["greedy"][1].append(pre[0])
            if draw == 0:  # later draws start from a generator state that holds a cached normal (Box-Muller)
                rows["exploring"][0].append(int(exploring[k]))
                rows["exploring"][1].append(noisy[0])
    logits = torch.stack(rows["greedy"][1])
    bound = network_rounding_bound(logits, layers=6, terms=65)
    assert_same_argmax("greedy", rows["greedy"][0], logits, bound)
    assert_same_argmax("exploring", rows["exploring"][0], torch.stack(rows["exploring"][1]),
                       bound[:len(SEEDS)] / CONFIG.gumbel_tau + FP32_EPS)


def test_pixels_loop_over_seeds_on_a_cpu_and_vectors_are_batched():
    assert StackedULD(PIXELS, CONFIG, SEEDS).looped and not StackedULD(VECTOR, CONFIG, SEEDS).looped
    assert not StackedULD(PIXELS, CONFIG, SEEDS, looped=False).looped


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_bf16_seeds_compute_their_matmuls_in_bf16(monkeypatch, precision):
    """--precision bf16 with several seeds really runs under autocast (which vmap would silently skip)."""
    import uld.agents.linear as linear_module

    dtypes = set()
    original = linear_module.F.linear

    def recording_linear(x, weight, bias=None):
        out = original(x, weight, bias)
        dtypes.add(out.dtype)
        return out

    monkeypatch.setattr(linear_module.F, "linear", recording_linear)
    stacked = StackedULD(VECTOR, CONFIG, SEEDS, precision=precision)
    buffers = make_buffers(VECTOR, CONFIG, SEEDS, "cpu")
    _fill(buffers, VECTOR)
    stacked.update(buffers)
    assert (torch.bfloat16 in dtypes) == (precision == "bf16")
