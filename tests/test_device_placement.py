"""Device placement checked on a CPU (issue 24): every tensor of act, add, sample, both kinds of update,
state_dict/load_state_dict and export lives on the agent's device, here `meta`; and the device branches of
resolve_device and the replay's memory check, through their seams.

Why `meta` rather than FakeTensorMode with "cuda": with the CPU wheel, fake "cuda" tensors cannot be made
from host data (`torch.as_tensor(array, device="cuda")`, `module.to("cuda")` and parameter initialisation
all raise "not linked with support for cuda devices"), so neither the agent's construction nor the replay's
adds could run. On `meta` the real code runs unchanged: modules move with `.to`, adds copy host values in.
What meta lacks is stood in for, each by the smallest seam: a generator (none exists on meta: a CPU one
draws, and the device it was asked for is recorded and checked), autocast and the fused/foreach kernels'
device lists (meta is not listed; fp32 only, so autocast is off anyway), and device-to-host copies (a meta
tensor has no data: `.cpu()` gives zeros, `.item()` 0).

The check: an op given a non-scalar CPU tensor together with a meta tensor raises. That is stricter than
CUDA, which accepts a CPU index tensor into a CUDA one by copying it, with a host sync: such a tensor
was made on the wrong device too. 0-d CPU tensors are allowed, as CUDA allows them (Python scalars);
copies between devices are what `.to` and `copy_` are for, and allowed.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.optim.optimizer as optimizer_module
import torch.utils._foreach_utils as foreach_utils
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

import uld.agents.stacked as stacked_module
import uld.replay.buffer as buffer_module
from uld.agents.stacked import StackedULD, make_buffers
from uld.agents.uld.agent import ULDAgent, make_buffer
from uld.agents.uld.config import ULDConfig
from uld.envs.base import EnvSpec
from uld.errors import UldError
from uld.replay.frames import check_memory
from uld.train.export import policy_module
from uld.train.run import resolve_device

aten = torch.ops.aten
META = torch.device("meta")
VECTOR = EnvSpec("test:vector", (5,), 2, discrete=False, max_episode_steps=50)
PIXELS = EnvSpec("test:pixels", (6, 36, 36), 3, discrete=True, max_episode_steps=50, pixels=True, frame_history=3)
CONFIG = ULDConfig(batch_size=8, zs_dim=16, zsa_dim=16, za_dim=8, hidden_dim=16, target_update_period=2,
                   buffer_capacity=300, random_steps=0)


class WrongDevice(AssertionError):
    """A CPU tensor met a tensor on the agent's device inside one op."""


class MetaPlacement(TorchDispatchMode):
    """Raises WrongDevice when an op mixes meta tensors with non-scalar CPU ones; stands in for the
    device-to-host copies a meta tensor cannot make."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        tensors = [t for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
        on_meta = any(t.is_meta for t in tensors)
        if func is aten._to_copy.default and tensors and tensors[0].is_meta and torch.device(kwargs.get("device") or META).type == "cpu":
            return torch.zeros(tensors[0].shape, dtype=kwargs.get("dtype") or tensors[0].dtype)
        if func is aten._local_scalar_dense.default and on_meta:
            return 0
        if on_meta and func not in (aten.copy_.default, aten._to_copy.default):
            stray = [tuple(t.shape) for t in tensors if t.device.type == "cpu" and t.dim() > 0]
            if stray:
                raise WrongDevice(f"{func} got CPU tensors of shapes {stray} with meta tensors")
        return func(*args, **kwargs)


@pytest.fixture
def meta_device(monkeypatch):
    """The seams of the module docstring; returns the devices generators were asked for."""
    asked: list[torch.device] = []

    def new_generator(device, seed):
        asked.append(torch.device(device))
        return torch.Generator("cpu").manual_seed(seed)

    for module in (buffer_module, stacked_module):
        monkeypatch.setattr(module, "new_generator", new_generator)
    fused = optimizer_module._get_fused_kernels_supported_devices
    monkeypatch.setattr(optimizer_module, "_get_fused_kernels_supported_devices", lambda: fused() + ["meta"])
    foreach = foreach_utils._get_foreach_kernels_supported_devices
    monkeypatch.setattr(foreach_utils, "_get_foreach_kernels_supported_devices", lambda: foreach() + ["meta"])
    autocast = torch.autocast
    monkeypatch.setattr(torch, "autocast", lambda device_type, *args, **kwargs:
                        autocast("cpu" if device_type == "meta" else device_type, *args, **kwargs))
    return asked


def _fill(buffer, spec: EnvSpec, steps: int = 60) -> None:
    rng = np.random.default_rng(0)

    def observation():
        if not spec.pixels:
            return rng.normal(size=spec.obs_shape).astype(np.float32)
        return np.concatenate([rng.integers(0, 256, (2, *spec.obs_shape[1:]), dtype=np.uint8)] * 3)

    obs = observation()
    for t in range(steps):
        action = np.eye(spec.action_dim, dtype=np.float32)[t % spec.action_dim] if spec.discrete else \
            rng.uniform(-1, 1, spec.action_dim).astype(np.float32)
        next_obs = np.concatenate([obs[2:], obs[4:]]) if spec.pixels else observation()
        end = t % 20 == 19
        buffer.add(obs, action, 1.0, next_obs, end and t < 30, end and t >= 30)
        obs = observation() if end else next_obs


def _all_tensors(*objects) -> list[torch.Tensor]:
    found: list[torch.Tensor] = []
    for obj in objects:
        for value in vars(obj).values():
            if isinstance(value, torch.Tensor):
                found.append(value)
            elif isinstance(value, torch.nn.Module):
                found.extend(list(value.parameters()) + list(value.buffers()))
            elif isinstance(value, torch.optim.Optimizer):
                found.extend(t for state in value.state.values() for t in state.values() if isinstance(t, torch.Tensor))
    return found


@pytest.mark.parametrize("spec", [VECTOR, PIXELS], ids=["vector", "pixels"])
def test_one_seed_runs_on_its_device_with_no_tensor_made_elsewhere(meta_device, spec) -> None:
    with MetaPlacement():
        agent = ULDAgent(spec, CONFIG, device=META)
        buffer = make_buffer(spec, CONFIG, seed=0, device=META)
        _fill(buffer, spec)
        observation = np.zeros(spec.obs_shape, dtype=np.uint8 if spec.pixels else np.float32)
        agent.act(observation, explore=True)
        agent.act(observation, explore=False)
        assert buffer.can_sample
        batch = buffer.sample(CONFIG.batch_size, CONFIG.horizon)
        for _ in range(3):  # target copies, encoder bursts and value + policy updates
            metrics = agent.update(buffer)
        state, buffer_state = agent.state_dict(), buffer.state_dict()
        agent.load_state_dict(state)
        buffer.load_state_dict(buffer_state)
        agent.update(buffer)
        exported = policy_module(agent, "uld")
    assert all(t.is_meta for t in tree_leaves(batch.__dict__))
    assert all(t.is_meta for t in metrics.values())
    assert all(t.is_meta for t in _all_tensors(agent, buffer, buffer.tree))
    assert meta_device == [META]
    assert all(t.device.type == "cpu" for t in exported.parameters())


def test_many_seeds_run_on_their_device_with_no_tensor_made_elsewhere(meta_device) -> None:
    with MetaPlacement():
        agent = StackedULD(VECTOR, CONFIG, [0, 1], device=META)
        buffers = make_buffers(VECTOR, CONFIG, [0, 1], META)
        for buffer in buffers:
            _fill(buffer, VECTOR)
        agent.act(np.zeros((2, 5), dtype=np.float32), explore=True)
        for _ in range(3):
            metrics = agent.update(buffers)
        agent.load_seed_state_dicts([agent.seed_state_dict(k) for k in range(2)])
        agent.update(buffers)
    assert all(t.is_meta for t in metrics.values())
    assert all(t.is_meta for t in list(agent.params.values()) + [agent.reward_scale, agent.bins])
    assert meta_device == [META] * 4  # two seeds' noise generators, two replays'


def test_the_placement_check_catches_a_tensor_made_on_the_cpu(meta_device) -> None:
    with MetaPlacement():
        on_device = torch.zeros(4, device=META)
        with pytest.raises(WrongDevice):
            on_device + torch.ones(4)
        with pytest.raises(WrongDevice):
            on_device[torch.tensor([0, 1])]  # a CPU index: accepted by CUDA, with a host sync
        assert (on_device + torch.ones(())).is_meta  # a CPU scalar, as CUDA allows
        assert on_device.cpu().device.type == "cpu"


class _Cuda:
    """torch.cuda on a machine with `count` GPUs and `free` bytes free on each."""

    def __init__(self, count: int, free: int = 0):
        self.count, self.free = count, free

    def is_available(self) -> bool:
        return self.count > 0

    def device_count(self) -> int:
        return self.count

    def mem_get_info(self, device):
        return self.free, 80 << 30


class _Mps:
    def __init__(self, available: bool):
        self.available = available

    def is_available(self) -> bool:
        return self.available


def test_resolve_device_on_machines_with_and_without_gpus() -> None:
    two_gpus, no_gpu = _Cuda(2), _Cuda(0)
    assert resolve_device("auto", cuda=two_gpus) == torch.device("cuda")
    assert resolve_device("auto", cuda=no_gpu) == torch.device("cpu")
    assert resolve_device("cuda:1", cuda=two_gpus) == torch.device("cuda", 1)
    assert resolve_device("cuda", cuda=two_gpus) == torch.device("cuda")
    assert resolve_device("cpu", cuda=no_gpu) == torch.device("cpu")
    assert resolve_device("mps", mps=_Mps(True)) == torch.device("mps")
    with pytest.raises(UldError, match="sees 2 CUDA GPUs; pass cuda:0 to cuda:N-1"):
        resolve_device("cuda:2", cuda=two_gpus)
    with pytest.raises(UldError, match="sees no CUDA GPU; use --device cpu"):
        resolve_device("cuda:0", cuda=no_gpu)
    with pytest.raises(UldError, match="no MPS backend"):
        resolve_device("mps", mps=_Mps(False))


def test_a_pixel_replay_that_does_not_fit_the_gpus_free_memory_is_refused_at_the_start() -> None:
    frame, capacity = (3, 84, 84), 1_000_000  # about 21 GB
    check_memory(frame, 6, capacity, torch.device("cuda", 0), cuda=_Cuda(1, free=40 << 30))
    with pytest.raises(UldError, match="available on cuda .* lower --uld.buffer-capacity to"):
        check_memory(frame, 6, capacity, torch.device("cuda", 0), cuda=_Cuda(1, free=8 << 30))
