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

Requirements the agent meets: AdamW with ``capturable=True`` (step counts on the device); gradients set
to None before capture, so the backward allocates them from the graph's memory pool; autocast without
its weight cache; the replays' generators (and a many-seed agent's per-seed noise generators) registered with each
graph, so that each replay advances them (the default CUDA generator, used by a one-seed agent for
noise and augmentation, is handled by capture itself). The
variable-length refresh of the sum tree runs eagerly before the graphs (ReplayBuffer.refresh).
Loading a checkpoint replaces the optimizers' state tensors, so the agent calls ``reset`` and the
graphs are captured again.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

WARMUP = 3
"""Eager calls of each kind of update before it is captured."""


class UpdateGraphs:
    """Captures and replays one CUDA graph per kind of update ("encoder", "value_policy") of one agent
    (a ULDAgent or a StackedULD: an UpdateSchedule, uld/agents/uld/update.py)."""

    def __init__(self, agent):
        self.agent = agent
        self.device = agent.device
        self._graphs: dict[str, tuple[torch.cuda.CUDAGraph, dict[str, Tensor]]] = {}
        self._calls: dict[str, int] = {}
        self._buffers: list = []
        self._pool = None

    def reset(self) -> None:
        """Drop every graph: the next calls warm up and capture again."""
        self._graphs.clear()
        self._calls.clear()

    def run(self, kind: str, update: Callable, source) -> dict[str, Tensor]:
        """The update of this kind on `source` (a replay, or one per seed): replayed from its graph once captured."""
        buffers = self.agent.buffers(source)
        if len(buffers) != len(self._buffers) or any(a is not b for a, b in zip(buffers, self._buffers)):
            self.reset()  # graphs hold the buffers' tensors: new buffers need new graphs
            self._buffers = list(buffers)
        if kind in self._graphs:
            graph, metrics = self._graphs[kind]
            graph.replay()
            return metrics
        calls = self._calls.get(kind, 0)
        if calls < WARMUP:
            self._calls[kind] = calls + 1
            side = torch.cuda.Stream(self.device)
            side.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(side):
                metrics = update(source)
            torch.cuda.current_stream(self.device).wait_stream(side)
            return metrics
        return self._capture(kind, update, source)

    def _capture(self, kind: str, update: Callable, source) -> dict[str, Tensor]:
        graph = torch.cuda.CUDAGraph()
        for generator in [buffer.generator for buffer in self._buffers] + self.agent.own_generators():
            graph.register_generator_state(generator)
        # Gradients are allocated inside the capture, from the graph's pool, and stay there.
        for parameter in self.agent.trained_parameters():
            parameter.grad = None
        torch.cuda.synchronize(self.device)
        with torch.cuda.graph(graph, pool=self._pool):
            metrics = update(source)
        self._pool = graph.pool()  # both kinds of update share one memory pool
        self._graphs[kind] = (graph, metrics)
        graph.replay()
        return metrics
