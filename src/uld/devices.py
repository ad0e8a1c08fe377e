"""Device-wide settings and state: TF32 for fp32 matrix multiplies, and random generator states that cross
devices (a checkpoint written on one device, resumed on another).

TF32 (docs/gpu.md, TF32). PyTorch multiplies fp32 matrices in full fp32 on CUDA by default, while its
cuDNN convolutions use TF32 (10-bit mantissas, fp32 range and accumulation). `uld train --tf32` lets the
matrix multiplies use TF32 too; the default is off, PyTorch's own, so that an fp32 run means fp32
arithmetic for the MLPs (the bulk of a vector step). `--precision bf16` is the fast path uld measures.

A CPU ``torch.Generator`` holds a Mersenne Twister state (5,056 bytes); a CUDA one a Philox seed and
offset (16 bytes); ``set_state`` refuses the other kind. A checkpoint stores the replay's generator,
each seed's noise generator (several seeds) and the default CUDA generators of the machine that wrote
it, so a run resumed with another ``--device``, or on a machine with fewer GPUs, must map them.

The choice (docs/gpu.md, Resuming on another device): a state of the generator's own kind is restored
exactly; a state of the other kind is turned into a seed (the first 63 bits of the SHA-256 of its
bytes) and the generator re-seeded with it, with one warning. The two algorithms draw different
streams, so no state of one reproduces the other's draws: exactness is impossible across kinds, and a
seed derived from the saved state keeps the resume deterministic (the same checkpoint resumed twice
draws the same numbers) and still depends on where the run had got to.
"""

from __future__ import annotations

import hashlib
import warnings

import torch
from torch import Tensor


def set_tf32(enabled: bool) -> None:
    """Let CUDA's fp32 matrix multiplies use TF32 (`enabled`), or keep them in full fp32; convolutions keep
    PyTorch's default. Process-wide: the command sets it, once, before the run (uld/cli.py)."""
    torch.backends.cuda.matmul.allow_tf32 = enabled


def new_generator(device: torch.device, seed: int) -> torch.Generator:
    """A generator on `device`, seeded (the one place uld makes generators: tests/test_device_placement.py
    stands in for it on a device that has none)."""
    generator = torch.Generator(device)
    generator.manual_seed(seed)
    return generator


class GeneratorReseededWarning(UserWarning):
    """A checkpoint's generator state came from another kind of device; the generator was re-seeded from it."""


def seed_from_state(state: Tensor) -> int:
    """A seed that depends on every byte of a generator state (63 bits: any torch generator takes it)."""
    digest = hashlib.sha256(torch.as_tensor(state).contiguous().view(torch.uint8).numpy().tobytes()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def load_generator_state(generator: torch.Generator, state: Tensor) -> None:
    """Restore `generator` from a saved state: exactly when the state is of its kind, else re-seeded from it."""
    state = torch.as_tensor(state)
    if state.numel() == generator.get_state().numel():
        generator.set_state(state)
        return
    generator.manual_seed(seed_from_state(state))
    warnings.warn("the checkpoint's random generators were saved on another kind of device (CPU or CUDA) and "
                  "were re-seeded from their saved states: the resumed run is deterministic, but its random draws "
                  "differ from those of an uninterrupted run on the first device", GeneratorReseededWarning,
                  stacklevel=1)
    # Issued from this line whichever generator it was: Python's default filter shows it once.


def load_cuda_rng_states(states: list, cpu_state: Tensor, cuda=torch.cuda) -> None:
    """Restore the default CUDA generators from a checkpoint's list (one state per GPU of the machine
    that wrote it), as far as this machine has GPUs; without CUDA there is nothing to restore.

    A checkpoint written without CUDA has no list: the generators are re-seeded from the CPU
    generator's saved state, so the resumed run is still deterministic (the replay's and the noise
    generators, which a CUDA run draws from, warn through load_generator_state). `cuda`: torch.cuda (a seam).
    """
    if not cuda.is_available():
        return
    if not states:
        cuda.manual_seed_all(seed_from_state(cpu_state))
        return
    for index in range(min(len(states), cuda.device_count())):
        cuda.set_rng_state(torch.as_tensor(states[index]), index)
