"""The agents of a run's S seeds, as the training loop sees them: one object, whatever S and the agent.

An agent either batches the seeds itself (ULD's stacked networks, uld/agents/stacked.py: one act and one
update for all the seeds) or the run holds one instance per seed and steps them in turn (ALM, the
design-study variants, any agent registered later): the registry says which (AgentSpec.build_seeds).
Both are offered to the loop (train/trainer.py) in one form, `Seeds`: act on the seeds' observations,
update from their replays, and each seed's state in the form of a single-seed checkpoint.

One instance per seed shares the process's random generators (Python's, numpy's and torch's), which a
single-seed agent draws from. Each seed keeps its own copy of their states, swapped in before the seed's
agent runs, so seed k draws exactly what a single-seed run of seed k draws (and a run of one seed never
swaps anything). A batched agent draws from generators of its own, one per seed.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator
from typing import Any, Protocol

import numpy as np
import torch

from uld.devices import load_cuda_rng_states


def rng_state() -> dict:
    """The process's generators (Python, numpy, torch, CUDA), in a checkpoint's form."""
    return {"python": random.getstate(), "numpy": list(np.random.get_state()), "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def set_rng_state(rng: dict) -> None:
    """Restore the process's generators from rng_state() (also as a checkpoint loads it: lists for tuples)."""
    random.setstate(_as_tuple(rng["python"]))
    kind, keys, pos, has_gauss, cached = rng["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(rng["torch"])
    load_cuda_rng_states(rng["cuda"], rng["torch"])  # also from a CPU run, or a machine with more GPUs


def _as_tuple(value):
    """Python's random state, which a checkpoint stores with lists, back to nested tuples."""
    return tuple(_as_tuple(v) for v in value) if isinstance(value, (list, tuple)) else value


def _cuda_devices() -> list[int]:
    return list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []


class Seeds(Protocol):
    """The agents of S seeds. Actions and metrics are per seed; `seeds` (indices 0..S-1) names which act."""

    def act(self, obs: list[np.ndarray], explore: bool, seeds: list[int]) -> list[Any]: ...
    def update(self, buffers: list[Any]) -> None: ...
    def metrics(self, k: int) -> dict[str, torch.Tensor]: ...
    def reward_scale(self, k: int) -> float: ...
    def state_dict(self, k: int) -> dict: ...
    def load_state_dicts(self, states: list[dict]) -> None: ...
    def rng_state(self, k: int) -> dict: ...
    def evaluating(self, seeds: list[int]) -> contextlib.AbstractContextManager: ...


class PerSeed:
    """One agent instance per seed, stepped in turn; each seed with its own copy of the process's generators.

    `rngs[k]` holds seed k's generator states while another seed's are the process's; `active` is the seed
    whose states are the process's now (the last one built).
    """

    def __init__(self, agents: list[Any], rngs: list[dict]):
        self.agents, self.rngs = agents, rngs
        self.active = len(agents) - 1
        self._metrics: list[dict[str, torch.Tensor]] = [{} for _ in agents]

    def _activate(self, k: int) -> Any:
        if k != self.active:
            self.rngs[self.active] = rng_state()
            set_rng_state(self.rngs[k])
            self.active = k
        return self.agents[k]

    def act(self, obs: list[np.ndarray], explore: bool, seeds: list[int]) -> list[Any]:
        return [self._activate(k).act(o, explore=explore) for k, o in zip(seeds, obs)]

    def update(self, buffers: list[Any]) -> None:
        for k, buffer in enumerate(buffers):
            # Keep the latest value of every metric: encoder metrics only come with bursts.
            self._metrics[k].update(self._activate(k).update(buffer))

    def metrics(self, k: int) -> dict[str, torch.Tensor]:
        return self._metrics[k]

    def reward_scale(self, k: int) -> float:
        return float(getattr(self.agents[k], "reward_scale", float("nan")))

    def state_dict(self, k: int) -> dict:
        return self.agents[k].state_dict()

    def load_state_dicts(self, states: list[dict]) -> None:
        for k, state in enumerate(states):
            self.agents[k].load_state_dict(state["agent"])
            self._metrics[k] = dict(state["metrics"])
            if k == self.active:
                set_rng_state(state["rng"])
            else:
                self.rngs[k] = state["rng"]

    def rng_state(self, k: int) -> dict:
        return rng_state() if k == self.active else self.rngs[k]

    @contextlib.contextmanager
    def evaluating(self, seeds: list[int]) -> Iterator[None]:
        """Torch draws of seed k's evaluation come from torch.manual_seed(seeds[k]) (ALM samples its latent
        when acting); its training torch generator is left as it was, as in a single-seed run."""
        self.rngs[self.active] = rng_state()
        kept = [(rng["torch"], rng["cuda"]) for rng in self.rngs]
        with torch.random.fork_rng(devices=_cuda_devices()):
            for rng, seed in zip(self.rngs, seeds):
                torch.manual_seed(seed)
                rng["torch"] = torch.get_rng_state()
                rng["cuda"] = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []
        set_rng_state(self.rngs[self.active])
        try:
            yield
        finally:
            self.rngs[self.active] = rng_state()
            for rng, (cpu, cuda) in zip(self.rngs, kept):
                rng["torch"], rng["cuda"] = cpu, cuda
            set_rng_state(self.rngs[self.active])


class Batched:
    """An agent that batches the seeds itself: act(obs (S, ...)) -> (S, ...) actions, update(buffers) ->
    (S,) metrics, seed_state_dict(k) / load_seed_state_dicts(states) in the single-seed form (StackedULD)."""

    def __init__(self, agent: Any):
        self.agent = agent
        # The latest (S,) value of every metric, sliced per seed only where one is read; `loaded` holds
        # the metrics of the checkpoints resumed from, until a newer value replaces them.
        self._latest: dict[str, torch.Tensor] = {}
        self._loaded: list[dict[str, torch.Tensor]] = [{} for _ in agent.seeds]

    def act(self, obs: list[np.ndarray], explore: bool, seeds: list[int]) -> list[Any]:
        actions = self.agent.act(np.stack(obs), explore=explore).numpy()
        if self.agent.spec.discrete:
            return [int(actions[k]) for k in seeds]  # indices, as a single-seed run keeps them
        return [actions[k] for k in seeds]

    def update(self, buffers: list[Any]) -> None:
        self._latest.update(self.agent.update(buffers))

    def metrics(self, k: int) -> dict[str, torch.Tensor]:
        return {**self._loaded[k], **{name: value[k] for name, value in self._latest.items()}}

    def reward_scale(self, k: int) -> float:
        return float(self.agent.reward_scale[k])

    def state_dict(self, k: int) -> dict:
        return self.agent.seed_state_dict(k)

    def load_state_dicts(self, states: list[dict]) -> None:
        self.agent.load_seed_state_dicts([state["agent"] for state in states])
        self._loaded = [dict(state["metrics"]) for state in states]
        set_rng_state(states[-1]["rng"])  # the seeds share the process's generators, which it does not draw from

    def rng_state(self, k: int) -> dict:  # noqa: ARG002 - one state for every seed
        return rng_state()

    @contextlib.contextmanager
    def evaluating(self, seeds: list[int]) -> Iterator[None]:  # noqa: ARG002 - the agent's own generators
        with torch.random.fork_rng(devices=_cuda_devices()):
            yield
