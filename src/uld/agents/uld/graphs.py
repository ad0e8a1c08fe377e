"""CUDA graphs for ULD's two kinds of update: captured once, replayed at every later call.

An update (the encoder update; the value + policy update with its priority write) launches hundreds of
small kernels, whose launch and Python dispatch cost dominate a GPU step. Because an update reads and
writes only device tensors that live as long as the agent and its buffer (parameters, optimizer
states, the replay's tensors and generator, the reward scales) and never reads a value back to the
host, the kernels it launches are the same every time: they are recorded once into a
``torch.cuda.CUDAGraph`` and replayed with one launch.

The update functions are the eager ones (uld/agents/uld/update.py, as uld/agents/uld/agent.py and
uld/agents/stacked.py run them): nothing here restates the algorithm. For each kind of update:

1. the first ``WARMUP`` calls run eagerly on a side stream (they are real updates; they also create
   the optimizers' state, cuBLAS workspaces and autocast's kernels before anything is captured);
2. the next call captures the function into a graph (capture records kernels without running them)
   and replays it once: that is this call's update;
3. every later call replays the graph. The metrics it returns are the graph's output tensors, which
   each replay overwrites: the latest value, as the trainer keeps it.

Requirements the agent meets: AdamW with ``capturable=True`` (step counts on the device), also after
a checkpoint is loaded (agent.restore_optimizer_flags); gradients set to None before capture, so the
backward allocates them from the graph's memory pool; autocast without its weight cache; the replays'
generators (and a many-seed agent's per-seed noise generators) registered with each graph, so that
each replay advances them (the default CUDA generator, used by a one-seed agent for noise and
augmentation, is handled by capture itself). The variable-length refresh of the sum tree runs eagerly
before the graphs (ReplayBuffer.refresh).

Memory pools. Each graph gets a private pool of its own, made at its capture and freed with it. A
shared pool would let one graph's capture reuse blocks the other freed (safe only while nothing reads
those between the two replays), and a pool kept after its graphs are dropped (``reset``: a loaded
checkpoint, a new list of buffers) cannot be entered again once its use count is zero.

Device. Capture records on the current device's stream, so everything runs under
``torch.cuda.device(agent.device)``: with ``--device cuda:1`` the graphs are recorded on GPU 1.

Failure. A capture or a first replay that raises (an op that cannot be captured, a driver or memory
problem) does not end the run: the state the update writes (parameters, optimizer states, the
replays' priorities, sum trees and generators, the noise generators), snapshotted before the capture,
is copied back, the graphs are turned off with one warning naming the error and ``--no-cuda-graphs``,
and this and every later call runs the eager update. Nothing the capture touched is reused: its graph
and pool are dropped, and gradients are set to None.

The torch.cuda calls go through a ``CudaGraphBackend`` (a seam): tests pass a stand-in that runs the
same control flow on a CPU (tests/test_graph_capture.py).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor

from uld.errors import UldError

WARMUP = 3
"""Eager calls of each kind of update before it is captured."""

OPTIMIZERS = ("encoder_optimizer", "value_optimizer", "policy_optimizer")
"""The optimizers of a ULDAgent or StackedULD whose states an update writes."""


class CudaGraphBackend:
    """The torch.cuda calls UpdateGraphs makes, on one device."""

    def __init__(self, device: torch.device):
        self.device = device

    def scope(self):
        """Make the agent's device the current one: capture records on the current device's stream."""
        return torch.cuda.device(self.device)

    @contextmanager
    def side_stream(self) -> Iterator[None]:
        """Run the block on a side stream (the warm-up calls before a capture, as torch requires)."""
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            yield
        torch.cuda.current_stream(self.device).wait_stream(side)

    def synchronize(self) -> None:
        torch.cuda.synchronize(self.device)

    def new_graph(self) -> Any:
        return torch.cuda.CUDAGraph()

    def capture(self, graph: Any, function: Callable[[], dict[str, Tensor]]) -> dict[str, Tensor]:
        """Record function() into graph, in a new private memory pool; its outputs."""
        stream = torch.cuda.current_stream(self.device)
        try:
            with torch.cuda.graph(graph):
                return function()
        except BaseException:
            # When the capture fails, torch.cuda.graph's exit raises before it restores the stream it made current.
            torch.cuda.set_stream(stream)
            raise

    def default_generator(self) -> torch.Generator:
        """The generator a one-seed agent's noise comes from on this device."""
        index = self.device.index if self.device.index is not None else torch.cuda.current_device()
        return torch.cuda.default_generators[index]


class GraphFailureWarning(UserWarning):
    """A CUDA graph could not be captured or replayed; the run continues with eager updates."""


class UpdateGraphs:
    """Captures and replays one CUDA graph per kind of update ("encoder", "value_policy") of one agent
    (a ULDAgent or a StackedULD: an UpdateSchedule, uld/agents/uld/update.py).

    backend: the torch.cuda calls (default: CudaGraphBackend on the agent's device).
    """

    def __init__(self, agent, backend: CudaGraphBackend | None = None):
        self.agent = agent
        self.backend = backend if backend is not None else CudaGraphBackend(agent.device)
        self._graphs: dict[str, tuple[Any, dict[str, Tensor]]] = {}
        self._calls: dict[str, int] = {}
        self._buffers: list = []
        self.failed: str | None = None
        """The error that turned the graphs off (None while they are on)."""

    def reset(self) -> None:
        """Drop every graph, and with them their memory pools: the next calls warm up and capture again."""
        self._graphs.clear()
        self._calls.clear()

    def run(self, kind: str, update: Callable, source) -> dict[str, Tensor]:
        """The update of this kind on `source` (a replay, or one per seed): replayed from its graph once captured."""
        if self.failed is not None:
            return update(source)
        buffers = self.agent.buffers(source)
        if len(buffers) != len(self._buffers) or any(a is not b for a, b in zip(buffers, self._buffers)):
            self.reset()  # graphs hold the buffers' tensors: new buffers need new graphs
            self._buffers = list(buffers)
        with self.backend.scope():
            if kind in self._graphs:
                graph, metrics = self._graphs[kind]
                graph.replay()
                return metrics
            calls = self._calls.get(kind, 0)
            if calls < WARMUP:
                self._calls[kind] = calls + 1
                with self.backend.side_stream():
                    return update(source)
            snapshot = _Snapshot(self._written_tensors(), self._generators())
            try:
                return self._capture(kind, update, source)
            except Exception as error:  # any failure: the update is redone eagerly from the snapshot
                self._fall_back(kind, error, snapshot)
        return update(source)

    def _generators(self) -> list[torch.Generator]:
        return ([buffer.generator for buffer in self._buffers] + self.agent.own_generators()
                + [self.backend.default_generator()])

    def _written_tensors(self) -> list[Tensor]:
        """Every tensor an update writes in place: parameters, optimizer states, the replays' sampling weights."""
        tensors = list(self.agent.trained_parameters())
        for name in OPTIMIZERS:
            for state in getattr(self.agent, name).state.values():
                tensors.extend(value for value in state.values() if isinstance(value, Tensor))
        for buffer in self._buffers:
            tensors.extend(buffer.update_written_tensors())
        return tensors

    def _capture(self, kind: str, update: Callable, source) -> dict[str, Tensor]:
        graph = self.backend.new_graph()
        for generator in [buffer.generator for buffer in self._buffers] + self.agent.own_generators():
            graph.register_generator_state(generator)
        # Gradients are allocated inside the capture, from the graph's own pool, and stay there.
        for parameter in self.agent.trained_parameters():
            parameter.grad = None
        self.backend.synchronize()
        metrics = self.backend.capture(graph, lambda: update(source))
        self._graphs[kind] = (graph, metrics)
        graph.replay()
        return metrics

    def _fall_back(self, kind: str, error: Exception, snapshot: _Snapshot) -> None:
        """Undo whatever the failed capture or replay wrote, and turn the graphs off for the rest of the run."""
        self.reset()
        for parameter in self.agent.trained_parameters():
            parameter.grad = None  # they may live in the dropped graph's pool
        try:
            self.backend.synchronize()  # whatever the failed graph queued is done before the state is written back
            snapshot.restore()
        except Exception as restore_error:
            raise UldError(f"capturing the {kind} update as a CUDA graph failed ({type(error).__name__}: {error}), "
                           f"and the state from before it could not be restored ({restore_error}); the last "
                           "checkpoint is kept: run the same command with --no-cuda-graphs to continue from it"
                           ) from None
        self.failed = f"{type(error).__name__}: {error}"
        warnings.warn(f"capturing the {kind} update as a CUDA graph failed ({self.failed}); the run goes on with "
                      "eager updates from the state before the capture (nothing was lost); pass --no-cuda-graphs "
                      "to skip the capture", GraphFailureWarning, stacklevel=4)


class _Snapshot:
    """Copies of tensors and generator states, to write back in place."""

    def __init__(self, tensors: list[Tensor], generators: list[torch.Generator]):
        self.tensors = tensors
        with torch.no_grad():
            self.copies = [tensor.detach().clone() for tensor in tensors]
        self.generators = [(generator, generator.get_state()) for generator in generators]

    def restore(self) -> None:
        with torch.no_grad():
            for tensor, copy in zip(self.tensors, self.copies):
                tensor.copy_(copy)
        for generator, state in self.generators:
            generator.set_state(state)
