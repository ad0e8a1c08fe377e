"""ULD's updates never read a device value back to the host (issue 13: a sync-free update).

While an encoder update and a value + policy update run, every way of turning a tensor into a Python
value or a numpy array, and every transfer to the CPU, raises. On a CPU the agent's tensors already
live on the CPU, so transfers are refused by name: `.cpu()`, `.numpy()`, `__array__`, `torch.from_numpy`
(numpy data entering the update) and `.to(<cpu device>)` called from outside torch (torch's helpers
call `.to(<the tensor's own device>)`, a no-op on any device). A GPU run would sync at each of these.
"""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager

import numpy as np
import pytest
import torch
from torch import nn

from uld.agents.uld import agent as agent_module
from uld.agents.uld.agent import ULDAgent
from uld.agents.uld.config import ULDConfig
from uld.envs.base import EnvSpec

VECTOR = EnvSpec("test:vector", (5,), 2, discrete=False, max_episode_steps=50)
PIXELS = EnvSpec("test:pixels", (6, 36, 36), 3, discrete=True, max_episode_steps=50, pixels=True, frame_history=3)


class HostSync(AssertionError):
    """A tensor value was read back to the host inside an update."""


def _is_cpu(device) -> bool:
    return isinstance(device, (str, torch.device)) and torch.device(device).type == "cpu"


@contextmanager
def host_reads_refused(transfers: bool = True):
    """For the duration of the block, reading a tensor's value on the host or moving it to the CPU raises.

    transfers=False allows `.to(device)` and `torch.from_numpy` (for `add`, which copies the env's values in).
    """
    names = ("item", "__bool__", "__float__", "__int__", "__index__", "tolist", "numpy", "cpu", "__array__")
    saved = {name: getattr(torch.Tensor, name) for name in names + (("to",) if transfers else ())}
    saved_from_numpy = torch.from_numpy
    def refuse(name):
        def method(*args, **kwargs):
            raise HostSync(f"Tensor.{name} inside an update")
        return method

    original_to = torch.Tensor.to

    def to(self, *args, **kwargs):
        # torch's own helpers move results to the device they already hold (clip_grad_norm_ does
        # norm.to(grad.device)): a no-op on any device. Code outside torch naming the CPU is refused.
        outside_torch = f"{os.sep}torch{os.sep}" not in sys._getframe(1).f_code.co_filename
        if outside_torch and (any(_is_cpu(a) for a in args) or _is_cpu(kwargs.get("device"))):
            raise HostSync("Tensor.to(cpu) inside an update")
        return original_to(self, *args, **kwargs)

    def from_numpy(*args):
        raise HostSync("torch.from_numpy inside an update")

    try:
        for name in saved:
            setattr(torch.Tensor, name, to if name == "to" else refuse(name))
        if transfers:
            torch.from_numpy = from_numpy
        yield
    finally:
        for name, method in saved.items():
            setattr(torch.Tensor, name, method)
        torch.from_numpy = saved_from_numpy


def _filled_buffer(spec: EnvSpec, config: ULDConfig):
    buffer = agent_module.make_buffer(spec, config, 0)
    rng = np.random.default_rng(0)

    def observation(first_frame_only: bool = False):
        if not spec.pixels:
            return rng.normal(size=spec.obs_shape).astype(np.float32)
        frame = rng.integers(0, 256, size=(2, *spec.obs_shape[1:]), dtype=np.uint8)
        return np.concatenate([frame] * 3)  # a stack that repeats its first frame (episode start)

    obs = observation()
    for t in range(60):
        action = np.eye(spec.action_dim, dtype=np.float32)[t % spec.action_dim] if spec.discrete else \
            rng.uniform(-1, 1, spec.action_dim).astype(np.float32)
        next_obs = observation()
        end = t % 20 == 19
        buffer.add(obs, action, float(rng.normal()), next_obs, terminated=end and t < 30, truncated=end and t >= 30)
        obs = observation() if end else next_obs
    return buffer


def _guard_updates(monkeypatch, agent) -> dict[str, int]:
    """Make the agent's two kinds of update run with host reads refused; returns their call counts."""
    calls = {"_update_encoder": 0, "_update_value_and_policy": 0}
    for name in calls:
        update = getattr(agent, name)

        def guarded(source, update=update, name=name):
            calls[name] += 1
            with host_reads_refused():
                return update(source)

        monkeypatch.setattr(agent, name, guarded)
    return calls


@pytest.mark.parametrize("spec,precision", [(VECTOR, "fp32"), (VECTOR, "bf16"), (PIXELS, "fp32")],
                         ids=["vector-fp32", "vector-bf16", "pixels-fp32"])
def test_encoder_and_value_policy_updates_read_nothing_back_to_the_host(monkeypatch, spec, precision) -> None:
    torch.manual_seed(0)
    config = ULDConfig(batch_size=8, zs_dim=16, zsa_dim=16, za_dim=8, hidden_dim=16, target_update_period=2,
                       buffer_capacity=200, random_steps=0)
    agent = ULDAgent(spec, config, precision=precision)
    buffer = _filled_buffer(spec, config)
    calls = _guard_updates(monkeypatch, agent)

    priority = np.array(buffer.priority)
    for _ in range(3):  # steps 1 and 3 copy the targets and run a burst of 2 encoder updates
        metrics = agent.update(buffer)
    assert calls == {"_update_encoder": 4, "_update_value_and_policy": 3}
    assert all(torch.isfinite(value).all() for value in metrics.values())
    assert len(buffer) == 60
    assert (np.asarray(buffer.priority) != priority).sum() > 0  # the value updates wrote their priorities


@pytest.mark.parametrize("spec,looped", [(VECTOR, False), (PIXELS, False), (PIXELS, True)],
                         ids=["vector", "pixels-discrete", "pixels-discrete-looped"])
def test_many_seed_updates_read_nothing_back_to_the_host(monkeypatch, spec, looped) -> None:
    """The mapped updates of StackedULD (several seeds, one replay each) are sync-free too, so that the same
    CUDA graphs replay them."""
    from uld.agents.stacked import StackedULD

    config = ULDConfig(batch_size=8, zs_dim=16, zsa_dim=16, za_dim=8, hidden_dim=16, target_update_period=2,
                       buffer_capacity=200, random_steps=0)
    agent = StackedULD(spec, config, [0, 1], looped=looped)
    buffers = [_filled_buffer(spec, config), _filled_buffer(spec, config)]
    calls = _guard_updates(monkeypatch, agent)

    for _ in range(3):
        metrics = agent.update(buffers)
    assert calls == {"_update_encoder": 4, "_update_value_and_policy": 3}
    assert all(value.shape == (2,) and torch.isfinite(value).all() for value in metrics.values())


def test_target_copies_are_in_place_and_not_state_dict_loads(monkeypatch) -> None:
    torch.manual_seed(0)
    config = ULDConfig(batch_size=8, zs_dim=16, zsa_dim=16, za_dim=8, hidden_dim=16, target_update_period=2,
                       buffer_capacity=200, random_steps=0)
    agent = ULDAgent(VECTOR, config)
    buffer = _filled_buffer(VECTOR, config)
    monkeypatch.setattr(nn.Module, "load_state_dict", lambda *args, **kwargs: pytest.fail("load_state_dict"))
    targets = (agent.encoder_target, agent.policy_target, agent.value_target)
    storage = [p.data_ptr() for target in targets for p in target.parameters()]
    agent.update(buffer)
    agent.update(buffer)  # the online networks move away from the targets copied at step 1
    online = [p.detach().clone() for module in (agent.encoder, agent.policy, agent.value) for p in module.parameters()]
    assert not all(torch.equal(a, b) for a, b in zip(online, (p for t in targets for p in t.parameters())))
    agent.update(buffer)  # step 3 copies them again, before its updates
    copied = [p for target in targets for p in target.parameters()]
    assert [p.data_ptr() for p in copied] == storage  # the same tensors, written in place
    assert all(torch.equal(a, b) for a, b in zip(online, copied))


def test_the_host_read_guard_catches_each_kind_of_read() -> None:
    x = torch.ones(3)
    reads = [lambda: x.sum().item(), lambda: bool(x.sum()), lambda: float(x.sum()), lambda: int(x.sum()),
             lambda: x.tolist(), lambda: x.numpy(), lambda: x.cpu(), lambda: np.asarray(x), lambda: x.to("cpu"),
             lambda: x.to(device=torch.device("cpu")), lambda: torch.from_numpy(np.zeros(2)),
             lambda: [0, 1][x.long()[0]]]
    with host_reads_refused():
        for read in reads:
            with pytest.raises(HostSync):
                read()
        assert x.to(torch.float64).dtype == torch.float64  # a dtype conversion stays on the device
    assert x.sum().item() == 3.0  # restored afterwards
