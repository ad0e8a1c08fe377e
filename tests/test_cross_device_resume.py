"""A checkpoint's random generators on another kind of device (issue 24, fix 3): a run checkpointed on CUDA
resumes on a CPU, one checkpointed on a CPU resumes on CUDA, and one from a machine with more GPUs resumes on
one with fewer. States of the generator's own kind are restored exactly; others re-seed it from the saved
state, deterministically, with one warning (uld/devices.py)."""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import pytest
import torch

from uld.agents.uld.config import reduced_config
from uld.devices import GeneratorReseededWarning, load_cuda_rng_states, load_generator_state, seed_from_state
from uld.train.checkpoint import Checkpointer
from uld.train.config import TrainConfig
from uld.train.run import train

TINY = reduced_config(batch_size=16, hidden_dim=32, zs_dim=32, zsa_dim=32, za_dim=16, random_steps=60,
                      target_update_period=20, buffer_capacity=2000)


def _cuda_state(seed: int, offset: int) -> torch.Tensor:
    """A CUDA generator's state as get_state returns it: its Philox seed and offset, 16 bytes."""
    return torch.tensor([seed, offset], dtype=torch.int64).view(torch.uint8)


class _CudaLikeGenerator:
    """Has the size rule of a CUDA generator (16-byte states only), for a CPU-only machine."""

    def __init__(self):
        self.state, self.seeds = _cuda_state(0, 0), []

    def get_state(self):
        return self.state.clone()

    def set_state(self, state):
        if state.numel() != 16:
            raise RuntimeError("RNG state is wrong size")
        self.state = state.clone()

    def manual_seed(self, seed):
        self.seeds.append(seed)
        self.state = _cuda_state(seed, 0)


def test_states_of_the_generators_kind_load_exactly_and_others_reseed_deterministically() -> None:
    cpu = torch.Generator().manual_seed(5)
    saved = cpu.get_state()
    torch.rand(3, generator=cpu)
    load_generator_state(cpu, saved)
    assert torch.equal(cpu.get_state(), saved)

    cuda_state = _cuda_state(123, 4096)
    draws = []
    for _ in range(2):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            load_generator_state(cpu, cuda_state)
        assert [w.category for w in caught] == [GeneratorReseededWarning]
        draws.append(torch.rand(4, generator=cpu))
    assert torch.equal(draws[0], draws[1])
    assert torch.equal(draws[0], torch.rand(4, generator=torch.Generator().manual_seed(seed_from_state(cuda_state))))
    assert seed_from_state(_cuda_state(123, 4097)) != seed_from_state(cuda_state)  # where the run had got to

    cuda_like = _CudaLikeGenerator()
    with pytest.warns(GeneratorReseededWarning):
        load_generator_state(cuda_like, saved)  # a CPU state into a CUDA generator
    assert cuda_like.seeds == [seed_from_state(saved)]
    load_generator_state(cuda_like, cuda_state)
    assert torch.equal(cuda_like.state, cuda_state)


class _FakeCuda:
    """torch.cuda's generator calls on a machine with `count` GPUs."""

    def __init__(self, count: int):
        self.count, self.states, self.seeded = count, {}, []

    def is_available(self):
        return self.count > 0

    def device_count(self):
        return self.count

    def set_rng_state(self, state, device):
        if device >= self.count:
            raise IndexError("list index out of range")
        self.states[device] = state

    def manual_seed_all(self, seed):
        self.seeded.append(seed)


def test_default_cuda_generators_resume_on_fewer_gpus_and_from_a_cpu_checkpoint() -> None:
    saved = [_cuda_state(1, 8), _cuda_state(2, 16)]
    cpu_state = torch.Generator().manual_seed(3).get_state()
    one_gpu = _FakeCuda(1)
    load_cuda_rng_states(saved, cpu_state, cuda=one_gpu)
    assert list(one_gpu.states) == [0] and torch.equal(one_gpu.states[0], saved[0])
    from_cpu = _FakeCuda(2)
    load_cuda_rng_states([], cpu_state, cuda=from_cpu)
    assert from_cpu.seeded == [seed_from_state(cpu_state)] and from_cpu.states == {}
    no_gpu = _FakeCuda(0)
    load_cuda_rng_states(saved, cpu_state, cuda=no_gpu)
    assert no_gpu.states == {} and no_gpu.seeded == []


def _as_if_written_on_two_gpus(run_dir: Path, seed_generators: bool) -> int:
    """Rewrite the run's latest checkpoint as a CUDA run on two GPUs would have written it."""
    checkpointer = Checkpointer(run_dir / "checkpoints")
    loaded = checkpointer.load_latest()
    assert loaded is not None
    state, step = loaded
    state["buffer"]["generator"] = _cuda_state(11, 1024)
    state["rng"]["cuda"] = [_cuda_state(7, 64), _cuda_state(8, 64)]
    if seed_generators:
        state["agent"]["generator"] = _cuda_state(13, 2048)
    checkpointer.save(state, step)
    return step


@pytest.mark.parametrize("seeds", [None, "0,1"], ids=["one-seed", "two-seeds"])
def test_a_cuda_checkpoint_resumes_on_a_cpu_deterministically(tmp_path, seeds) -> None:
    """Before the fix: "does not fit this run" for one seed, a raw RuntimeError for several."""
    def config(out: Path, steps: int) -> TrainConfig:
        return TrainConfig(env="gym:Pendulum-v1", seed=0, seeds=seeds, steps=steps, eval_every=1000, eval_episodes=1,
                           progress=False, out=str(out), log_every=50, device="cpu", uld=TINY)

    first = tmp_path / "a"
    train(config(first, 80))
    run_dirs = [first / "seed0", first / "seed1"] if seeds else [first]
    for run_dir in run_dirs:
        assert _as_if_written_on_two_gpus(run_dir, seed_generators=seeds is not None) == 80
    second = tmp_path / "b"
    shutil.copytree(first, second)
    finals = []
    for out in (first, second):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("default")
            train(config(out, 120))
        assert [w.category for w in caught if w.category is GeneratorReseededWarning] == [GeneratorReseededWarning]
        run_dir = out / "seed1" if seeds else out
        final = Checkpointer(run_dir / "checkpoints").load_latest()
        assert final is not None and final[1] == 120
        finals.append(final[0])
    for name in ("encoder", "policy", "value"):
        for key, tensor in finals[0]["agent"][name].items():
            assert torch.equal(tensor, finals[1]["agent"][name][key]), (name, key)
