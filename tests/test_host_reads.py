"""At most one host read per environment step in the training loop, on any device (issue 24, fix 5): the
action itself. A read (item, tolist, bool/int/float/index, numpy, __array__, cpu, to(cpu)) waits, on a
GPU, for every update queued before it, so a second one per step keeps the env from overlapping the GPU.

Counted on a real CPU run (uld.train.run.train, a real gym env) by wrapping those Tensor methods while the
run goes, and counting the calls made from outside torch between two consecutive adds to the first
seed's replay (one env step). The result of `.cpu()` is a host tensor on any device: reading it again
(`.numpy()`) is free there, so such reads are not counted (on a CPU `.cpu()` returns the tensor itself;
the wrapper returns a new view of it, marked as on the host).
"""

from __future__ import annotations

import os
import sys
import weakref
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

from uld.agents.uld.config import reduced_config
from uld.replay.buffer import ReplayBuffer
from uld.train.config import TrainConfig
from uld.train.run import train

TINY = reduced_config(batch_size=16, hidden_dim=32, zs_dim=32, zsa_dim=32, za_dim=16, random_steps=60,
                      target_update_period=20, buffer_capacity=2000)
READS = ("item", "tolist", "__bool__", "__int__", "__float__", "__index__", "numpy", "__array__")


@contextmanager
def counted_host_reads(counter: list[int]):
    """Count, in counter[0], every host read of a tensor made from outside torch while the block runs."""
    host: dict[int, weakref.ref] = {}  # by id: tensors compare elementwise, so no WeakSet

    def on_host(tensor) -> bool:
        ref = host.get(id(tensor))
        return ref is not None and ref() is tensor
    saved = {name: getattr(torch.Tensor, name) for name in READS + ("cpu",)}

    def from_outside_torch() -> bool:
        return f"{os.sep}torch{os.sep}" not in sys._getframe(2).f_code.co_filename

    def reading(name):
        def method(self, *args, **kwargs):
            if not on_host(self) and from_outside_torch():
                counter[0] += 1
            return saved[name](self, *args, **kwargs)
        return method

    def to_host(result, source):
        if result is source:
            result = source.view_as(source)
        host[id(result)] = weakref.ref(result)
        return result

    def cpu(self, *args, **kwargs):
        if not on_host(self) and from_outside_torch():
            counter[0] += 1
        return to_host(saved["cpu"](self, *args, **kwargs), self)

    try:
        for name in READS:
            setattr(torch.Tensor, name, reading(name))
        torch.Tensor.cpu = cpu  # type: ignore[method-assign]
        yield
    finally:
        for name, method in saved.items():
            setattr(torch.Tensor, name, method)


def test_the_read_counter_counts_each_kind_of_read_once() -> None:
    counter = [0]
    x = torch.ones(3)
    with counted_host_reads(counter):
        x.sum().item(), bool(x.sum()), float(x.sum()), int(x.sum()), x.tolist(), x.numpy()
        assert counter[0] == 6
        host = x.cpu()
        host.numpy(), host.tolist()  # already on the host: free
        assert counter[0] == 7
    assert x.sum().item() == 3.0


@pytest.mark.parametrize("seeds", [None, "0,1"], ids=["one-seed", "two-seeds"])
def test_one_host_read_per_env_step_in_the_training_loop(tmp_path: Path, monkeypatch, seeds) -> None:
    counter, at_add = [0], []
    first_buffer: list[ReplayBuffer] = []
    add = ReplayBuffer.add

    def counting_add(self, *args, **kwargs):
        if not first_buffer:
            first_buffer.append(self)
        if self is first_buffer[0]:
            at_add.append(counter[0])
        return add(self, *args, **kwargs)

    monkeypatch.setattr(ReplayBuffer, "add", counting_add)
    config = TrainConfig(env="gym:Pendulum-v1", seed=0, seeds=seeds, steps=140, eval_every=1000, eval_episodes=1,
                         progress=False, out=str(tmp_path / "run"), log_every=1000, device="cpu", uld=TINY,
                         checkpoint_minutes=1000.0)
    with counted_host_reads(counter):
        train(config)
    reads = [b - a for a, b in zip(at_add, at_add[1:])]  # reads of env steps 2 .. 140, add to add
    random_phase, training = reads[: TINY.random_steps - 1], reads[TINY.random_steps - 1:]
    assert len(training) == 140 - TINY.random_steps
    assert set(random_phase) == {0}
    assert set(training) == {1}  # the action; nothing else, updates included


@pytest.mark.parametrize("pixels", [False, True], ids=["vectors", "frame-stacks"])
def test_can_sample_known_on_the_host_agrees_with_the_sum_tree(pixels) -> None:
    """Episodes of random lengths, ending by termination or truncation, wrap a small ring many times: whenever
    can_sample answers from the host it is right (the tree's root is positive), and it answers from the host
    once a subsequence is stored, also after a reload."""
    import numpy as np

    from uld.replay.frames import FrameStackBuffer

    rng = np.random.default_rng(0)
    if pixels:
        buffer: ReplayBuffer = FrameStackBuffer((6, 4, 4), 2, capacity=40, horizon=3, history=3, seed=0)
    else:
        buffer = ReplayBuffer((2,), 2, capacity=40, horizon=3, seed=0)
    frame = lambda: rng.integers(0, 256, (2, 4, 4), dtype=np.uint8)  # noqa: E731
    obs = np.concatenate([frame()] * 3) if pixels else rng.normal(size=2)
    answers = []
    for t in range(600):
        next_obs = np.concatenate([obs[2:], frame()]) if pixels else rng.normal(size=2)
        end = rng.random() < 0.15
        buffer.add(obs, rng.uniform(-1, 1, 2), 1.0, next_obs, end and rng.random() < 0.5, end)
        obs = (np.concatenate([frame()] * 3) if pixels else rng.normal(size=2)) if end else next_obs
        on_host = buffer._num_valid_on_host > 0
        assert not on_host or bool(buffer.total_weight > 0)
        answers.append(on_host)
        if t == 300:
            state = buffer.state_dict()
            buffer.load_state_dict(state)
    assert sum(answers) > 500
