"""CUDA only: the graphed updates equal the eager ones, and a run resumed on CUDA continues as it would have.

Tolerances: fp32 without TF32 (matmuls and convolutions, set for each test and restored after it), same
kernels in both paths, so parameters after ten updates agree to 1e-5 relative (the tolerance allows for
cuBLAS choosing other algorithms inside a capture, and for the pixel encoder's convolution backward and
the gathers' atomics, which are not deterministic on CUDA); priorities, |TD error| ** alpha computed from
those parameters, to 1e-5 relative and 1e-7 absolute (never atol=0: the nondeterministic kernels above
move the last bits of a TD error).
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from uld.agents.uld.agent import ULDAgent, make_buffer
from uld.agents.uld.config import ULDConfig
from uld.agents.uld.graphs import GraphFailureWarning
from uld.devices import GeneratorReseededWarning
from uld.envs.base import EnvSpec

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture(autouse=True)
def full_fp32():
    """No TF32 in either path during a test; torch's global flags as they were afterwards."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved

VECTOR = EnvSpec("test:vector", (5,), 2, discrete=False, max_episode_steps=50)
PIXELS = EnvSpec("test:pixels", (6, 36, 36), 3, discrete=True, max_episode_steps=50, pixels=True, frame_history=3)
CONFIG = ULDConfig(batch_size=16, zs_dim=32, zsa_dim=32, za_dim=16, hidden_dim=32, target_update_period=2,
                   buffer_capacity=500, random_steps=0)


def _setup(spec: EnvSpec, graphs: bool, precision: str = "fp32", device: str = "cuda"):
    torch.manual_seed(0)
    agent = ULDAgent(spec, CONFIG, device=device, precision=precision, cuda_graphs=graphs)
    buffer = make_buffer(spec, CONFIG, seed=0, device=device)
    rng = np.random.default_rng(0)
    obs = np.zeros(spec.obs_shape, dtype=np.uint8) if spec.pixels else np.zeros(spec.obs_shape, dtype=np.float32)
    for t in range(120):
        next_obs = rng.integers(0, 256, spec.obs_shape, dtype=np.uint8) if spec.pixels else \
            rng.normal(size=spec.obs_shape).astype(np.float32)
        if spec.pixels:  # a stack: the last two frames of obs, then a new one
            next_obs = np.concatenate([obs[2:], next_obs[:2]])
        action = np.eye(spec.action_dim, dtype=np.float32)[t % spec.action_dim] if spec.discrete else \
            rng.uniform(-1, 1, spec.action_dim).astype(np.float32)
        end = t % 40 == 39
        buffer.add(obs, action, float(rng.normal()), next_obs, end and t < 80, end and t >= 80)
        obs = np.concatenate([next_obs[:2]] * 3) if (end and spec.pixels) else next_obs
    return agent, buffer


def _parameters(agent: ULDAgent) -> list[torch.Tensor]:
    return [p.detach().clone() for m in (agent.encoder, agent.policy, agent.value) for p in m.parameters()]


@pytest.mark.parametrize("spec", [VECTOR, PIXELS], ids=["vector", "pixels"])
def test_graphed_updates_equal_eager_updates(spec) -> None:
    results = {}
    for graphs in (False, True):
        agent, buffer = _setup(spec, graphs)
        for _ in range(10):  # 3 eager warm-up calls of each kind, then capture and replays
            metrics = agent.update(buffer)
        torch.cuda.synchronize()
        results[graphs] = (_parameters(agent), buffer.priority.clone(), {k: v.clone() for k, v in metrics.items()})
        assert (agent.graphs is not None) == graphs
        if graphs:
            assert set(agent.graphs._graphs) == {"encoder", "value_policy"}
    (eager, eager_priority, eager_metrics), (graphed, graphed_priority, graphed_metrics) = results[False], results[True]
    for a, b in zip(eager, graphed):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(graphed_priority, eager_priority, rtol=1e-5, atol=1e-7)
    for key in eager_metrics:
        torch.testing.assert_close(graphed_metrics[key], eager_metrics[key], rtol=1e-4, atol=1e-5)


def test_graphed_bf16_updates_run_and_stay_finite() -> None:
    agent, buffer = _setup(VECTOR, graphs=True, precision="bf16")
    for _ in range(10):
        metrics = agent.update(buffer)
    assert all(torch.isfinite(v).all() for v in metrics.values())


def test_resume_on_cuda_continues_as_the_uninterrupted_run() -> None:
    agent, buffer = _setup(VECTOR, graphs=True)
    for _ in range(6):
        agent.update(buffer)
    agent_state = copy.deepcopy(agent.state_dict())
    buffer_state = copy.deepcopy(buffer.state_dict())
    rng = torch.cuda.get_rng_state()
    for _ in range(6):
        agent.update(buffer)
    straight = _parameters(agent)

    resumed_agent, resumed_buffer = _setup(VECTOR, graphs=True)
    resumed_agent.load_state_dict(agent_state)
    resumed_buffer.load_state_dict(buffer_state)
    torch.cuda.set_rng_state(rng)
    for _ in range(6):
        resumed_agent.update(resumed_buffer)
    for a, b in zip(straight, _parameters(resumed_agent)):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)
    assert torch.equal(resumed_buffer.generator.get_state(), buffer.generator.get_state())


@pytest.mark.parametrize("spec", [VECTOR, PIXELS], ids=["vector", "pixels"])
def test_graphed_many_seed_updates_equal_eager_ones(spec) -> None:
    """StackedULD replays its mapped updates from the same graphs: 3 seeds, eager and graphed, agree."""
    from uld.agents.stacked import StackedULD

    results = {}
    for graphs in (False, True):
        agent = StackedULD(spec, CONFIG, [0, 1, 2], device="cuda", cuda_graphs=graphs)
        buffers = [_setup(spec, graphs=False)[1] for _ in range(3)]
        for _ in range(10):
            agent.update(buffers)
        torch.cuda.synchronize()
        assert (agent.graphs is not None) == graphs
        results[graphs] = ({k: v.detach().clone() for k, v in agent.params.items()},
                           [b.priority.clone() for b in buffers])
    (eager, eager_priorities), (graphed, graphed_priorities) = results[False], results[True]
    for key in eager:
        torch.testing.assert_close(graphed[key], eager[key], rtol=1e-5, atol=1e-6)
    for a, b in zip(eager_priorities, graphed_priorities):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-7)


def _run(agent, buffer, updates: int) -> dict[str, torch.Tensor]:
    for _ in range(updates):
        metrics = agent.update(buffer)
    torch.cuda.synchronize()
    return metrics


def test_a_reload_into_a_live_graphed_agent_captures_again_and_goes_on() -> None:
    """Issue 24, fix 1: the second capture used to enter the dropped graphs' pool while blocks of it were alive."""
    agent, buffer = _setup(VECTOR, graphs=True)
    held = _run(agent, buffer, 10)  # the trainer holds the latest metrics, which live in the graphs' pool
    agent.load_state_dict(copy.deepcopy(agent.state_dict()))
    metrics = _run(agent, buffer, 10)
    assert set(agent.graphs._graphs) == {"encoder", "value_policy"} and agent.graphs.failed is None
    assert all(torch.isfinite(v).all() for v in list(metrics.values()) + list(held.values()))


def test_checkpoints_of_eager_and_cpu_runs_resume_under_graphs() -> None:
    """Issue 24, fixes 2 and 3: capturable restored after the load; the CPU generator state re-seeds the CUDA one."""
    eager, eager_buffer = _setup(VECTOR, graphs=False)
    _run(eager, eager_buffer, 6)
    on_cpu, cpu_buffer = _setup(VECTOR, graphs=False, device="cpu")
    for _ in range(6):
        on_cpu.update(cpu_buffer)
    for agent_state, buffer_state in ((eager.state_dict(), None), (on_cpu.state_dict(), cpu_buffer.state_dict())):
        agent, buffer = _setup(VECTOR, graphs=True)
        agent.load_state_dict(copy.deepcopy(agent_state))
        if buffer_state is not None:
            with pytest.warns(GeneratorReseededWarning):
                buffer.load_state_dict(buffer_state)
        metrics = _run(agent, buffer, 10)
        assert set(agent.graphs._graphs) == {"encoder", "value_policy"} and agent.graphs.failed is None
        assert all(torch.isfinite(v).all() for v in metrics.values())


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA GPUs")
def test_graphs_on_the_second_gpu_update_as_eager_updates_do() -> None:
    """Issue 24, fix 4: the capture ran on GPU 0's stream, recording nothing of an agent on GPU 1."""
    results = []
    for graphs in (False, True):
        agent, buffer = _setup(VECTOR, graphs, device="cuda:1")
        _run(agent, buffer, 10)
        results.append(_parameters(agent))
    for a, b in zip(*results):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)


def test_a_capture_that_fails_on_cuda_warns_and_goes_on_eagerly(monkeypatch) -> None:
    """Issue 24, fix 9: a host synchronisation inside the capture makes it fail, as an uncapturable op would; the
    run goes on eagerly from the state before the capture, as an eager run does (same tolerance as above)."""
    agent, buffer = _setup(VECTOR, graphs=True)
    update = agent._update_encoder

    def unsafe(source):
        if torch.cuda.is_current_stream_capturing():
            torch.cuda.synchronize()  # not permitted while a stream captures
        return update(source)

    monkeypatch.setattr(agent, "_update_encoder", unsafe)
    with pytest.warns(GraphFailureWarning, match="--no-cuda-graphs"):
        _run(agent, buffer, 10)
    assert agent.graphs.failed is not None
    reference, reference_buffer = _setup(VECTOR, graphs=False)
    _run(reference, reference_buffer, 10)
    for a, b in zip(_parameters(reference), _parameters(agent)):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)
