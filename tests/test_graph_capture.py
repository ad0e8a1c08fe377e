"""The CUDA-graph path (uld/agents/uld/graphs.py) run on a CPU through a stand-in for torch.cuda's graph calls
(tests/graph_stand_in.py): capture, replay, reset after a reload, optimizer flags after a load, the device
a capture runs on, and a capture or first replay that fails.

Equalities are exact (torch.equal): the stand-in replays the very eager update on the same CPU, in the
same order, so a graphed run and an eager run execute identical floating-point operations; any
difference is a defect of the graph driver (a lost, repeated or reordered update), not rounding.
"""

from __future__ import annotations

import copy
import dataclasses
import warnings

import numpy as np
import pytest
import torch

from graph_stand_in import FAILURE, StandInBackend
from uld.agents.stacked import StackedULD
from uld.agents.uld.agent import ULDAgent, make_buffer
from uld.agents.uld.config import ULDConfig
from uld.agents.uld.graphs import WARMUP, CudaGraphBackend, GraphFailureWarning
from uld.envs.base import EnvSpec
from uld.errors import UldError

VECTOR = EnvSpec("test:vector", (5,), 2, discrete=False, max_episode_steps=50)
CONFIG = ULDConfig(batch_size=8, zs_dim=16, zsa_dim=16, za_dim=8, hidden_dim=16, target_update_period=2,
                   buffer_capacity=300, random_steps=0)


FADED = dataclasses.replace(CONFIG, fade=0.99, fade_floor=0.5)  # DR.Q's faded replay (uld/replay/faded.py)


def _buffer(seed: int = 0, config: ULDConfig = CONFIG):
    buffer = make_buffer(VECTOR, config, seed=seed)
    rng = np.random.default_rng(seed)
    obs = rng.normal(size=5).astype(np.float32)
    for t in range(100):
        next_obs = rng.normal(size=5).astype(np.float32)
        end = t % 30 == 29
        buffer.add(obs, rng.uniform(-1, 1, 2).astype(np.float32), float(rng.normal()), next_obs, end and t < 50,
                   end and t >= 50)
        obs = next_obs
    return buffer


def _agent(backend: StandInBackend | None, config: ULDConfig = CONFIG):
    torch.manual_seed(0)
    return ULDAgent(VECTOR, config, cuda_graphs=False, graph_backend=backend), _buffer(config=config)


def _parameters(agent) -> list[torch.Tensor]:
    return [p.detach().clone() for p in agent.trained_parameters()]


def _run(agent, buffer, updates: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(1)  # the noise of the updates, the same for every agent compared
    metrics: dict[str, torch.Tensor] = {}
    for _ in range(updates):
        metrics.update(agent.update(buffer))
    return metrics


def _assert_same(a: list[torch.Tensor], b: list[torch.Tensor]) -> None:
    assert len(a) == len(b)
    assert all(torch.equal(x, y) for x, y in zip(a, b))


def _eager_reference(updates: int, config: ULDConfig = CONFIG):
    """An agent made capturable as the graphed ones are, run without graphs: the reference they must equal."""
    agent, buffer = _agent(None, config)
    for optimizer in (agent.encoder_optimizer, agent.value_optimizer, agent.policy_optimizer):
        optimizer.defaults["capturable"] = True
        for group in optimizer.param_groups:
            group["capturable"] = True
    metrics = _run(agent, buffer, updates)
    return agent, buffer, metrics


def test_graphed_updates_on_the_stand_in_equal_eager_updates() -> None:
    updates = 12  # 6 encoder bursts of 2 and 12 value updates: warm-up, capture and replays of both kinds
    backend = StandInBackend()
    agent, buffer = _agent(backend)
    metrics = _run(agent, buffer, updates)
    reference, reference_buffer, reference_metrics = _eager_reference(updates)
    _assert_same(_parameters(agent), _parameters(reference))
    assert torch.equal(buffer.priority, reference_buffer.priority)
    assert torch.equal(buffer.generator.get_state(), reference_buffer.generator.get_state())
    assert metrics.keys() == reference_metrics.keys()
    assert all(torch.equal(metrics[k], reference_metrics[k]) for k in metrics)
    assert set(agent.graphs._graphs) == {"encoder", "value_policy"}
    assert backend.replays == (2 * 6 - WARMUP) + (updates - WARMUP)  # every call after the warm-up replays


def test_each_graph_has_its_own_pool_and_a_reload_captures_into_new_ones() -> None:
    """Fixes 1 and 6 of issue 24: no pool is shared by the two graphs, or reused after reset."""
    backend = StandInBackend()
    agent, buffer = _agent(backend)
    _run(agent, buffer, 8)
    first = dict(agent.graphs._graphs)
    state = copy.deepcopy(agent.state_dict())
    agent.load_state_dict(state)  # into a live agent that has captured: graphs dropped, captured again
    assert agent.graphs._graphs == {}
    _run(agent, buffer, 8)
    second = agent.graphs._graphs
    pools = [graph.pool for graph, _ in list(first.values()) + list(second.values())]
    assert len(pools) == 4 and len(set(pools)) == 4
    assert all(second[kind][0] is not first[kind][0] for kind in first)

    reference, reference_buffer, _ = _eager_reference(8)
    reference.load_state_dict(copy.deepcopy(reference.state_dict()))
    _run(reference, reference_buffer, 8)
    _assert_same(_parameters(agent), _parameters(reference))


@pytest.mark.parametrize("saved_graphed", [False, True], ids=["eager-checkpoint", "graphed-checkpoint"])
def test_a_loaded_optimizer_keeps_the_flags_the_run_was_made_with(saved_graphed) -> None:
    """Fix 2 of issue 24: a checkpoint of an eager run resumes under graphs, and the reverse runs eagerly."""
    saver, buffer = _agent(StandInBackend() if saved_graphed else None)
    _run(saver, buffer, 6)
    state = copy.deepcopy(saver.state_dict())
    loader, loader_buffer = _agent(None if saved_graphed else StandInBackend())
    loader.load_state_dict(state)
    for optimizer in (loader.encoder_optimizer, loader.value_optimizer, loader.policy_optimizer):
        assert all(group["capturable"] is (not saved_graphed) and group["fused"] for group in optimizer.param_groups)
    _run(loader, loader_buffer, 8)  # captures both kinds when graphed (the stand-in checks capturable)
    if not saved_graphed:
        assert set(loader.graphs._graphs) == {"encoder", "value_policy"}


def test_capture_warm_up_and_replay_run_with_the_agents_device_current() -> None:
    """Fix 4 of issue 24: capture records on the current device's stream, so the agent's device must be current."""
    backend = StandInBackend(device="cuda:1")
    agent, buffer = _agent(backend)
    _run(agent, buffer, 8)
    devices = backend.capture_devices + backend.replay_devices + backend.warmup_devices
    assert len(devices) == 2 + 2 * WARMUP + backend.replays
    assert set(devices) == {torch.device("cuda:1")}
    assert CudaGraphBackend(torch.device("cuda:1")).scope().idx == 1


@pytest.mark.parametrize("config", [CONFIG, FADED], ids=["lap", "faded"])
@pytest.mark.parametrize("fail", ["capture", "replay"])
def test_a_failed_capture_warns_once_and_the_run_goes_on_eagerly_losing_nothing(fail, config) -> None:
    """Fix 9 of issue 24: the state is restored from before the capture and the update is redone eagerly
    (with a faded replay too, whose sampling weights an update also writes)."""
    backend = StandInBackend(fail=fail)
    agent, buffer = _agent(backend, config)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        metrics = _run(agent, buffer, 12)
    failures = [w for w in caught if issubclass(w.category, GraphFailureWarning)]
    assert len(failures) == 1
    message = str(failures[0].message)
    assert FAILURE in message and "--no-cuda-graphs" in message and "encoder" in message
    assert agent.graphs.failed is not None and agent.graphs._graphs == {}
    replays = backend.replays
    _run(agent, buffer, 2)
    assert backend.replays == replays  # eager from then on

    reference, reference_buffer, _ = _eager_reference(12, config)
    _run(reference, reference_buffer, 2)
    _assert_same(_parameters(agent), _parameters(reference))
    assert torch.equal(buffer.priority, reference_buffer.priority)
    assert torch.equal(buffer.max_priority, reference_buffer.max_priority)
    assert torch.equal(buffer.generator.get_state(), reference_buffer.generator.get_state())
    assert torch.equal(buffer.tree.total, reference_buffer.tree.total)
    assert all(torch.isfinite(v).all() for v in metrics.values())


def test_many_seed_graphs_on_the_stand_in_equal_eager_updates() -> None:
    backends = {True: StandInBackend(), False: None}
    results = {}
    for graphed, backend in backends.items():
        agent = StackedULD(VECTOR, CONFIG, [0, 1], cuda_graphs=False, graph_backend=backend)
        if not graphed:
            for optimizer in (agent.encoder_optimizer, agent.value_optimizer, agent.policy_optimizer):
                optimizer.defaults["capturable"] = True
                for group in optimizer.param_groups:
                    group["capturable"] = True
        buffers = [_buffer(0), _buffer(1)]
        for _ in range(8):
            agent.update(buffers)
        results[graphed] = ([p.detach().clone() for p in agent.params.values()], [b.priority for b in buffers],
                            [g.get_state() for g in agent.generators])
    for a, b in zip(results[True], results[False]):
        _assert_same(a, b)
    assert backends[True].replays > 0


def test_a_state_that_cannot_be_restored_stops_the_run_with_one_sentence() -> None:
    """A broken device (restoring raises too): a UldError saying to resume from the last checkpoint eagerly."""
    backend = StandInBackend(fail="capture")

    def broken() -> None:
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    backend.synchronize = broken  # type: ignore[method-assign]
    agent, buffer = _agent(backend)
    with pytest.raises(UldError, match="could not be restored .* --no-cuda-graphs to continue from it"):
        _run(agent, buffer, 12)
