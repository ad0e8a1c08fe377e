"""CUDA graphs for ULD's two kinds of update: captured once, replayed at every later call.

An update (the encoder update; the value + policy update with its priority write) launches hundreds of
small kernels, whose launch and Python dispatch cost dominate a GPU step. Because an update reads and
writes only device tensors that live as long as the agent and its buffer (parameters, optimizer
states, the replay's tensors and generator, the reward scales) and never reads a value back to the
host, the kernels it launches are the same every time: they are recorded once into a
``torch.cuda.CUDAGraph`` and replayed with one launch.

The update functions are the eager ones (uld/agents/uld/agent.py): nothing here restates the
algorithm. For each kind of update:

1. the first ``WARMUP`` calls run eagerly on a side stream (they are real updates; they also create
   the optimizers' state, cuBLAS workspaces and autocast's kernels before anything is captured);
2. the next call captures the function into a graph (capture records kernels without running them)
   and replays it once: that is this call's update;
3. every later call replays the graph. The metrics it returns are the graph's output tensors, which
   each replay overwrites: the latest value, as the trainer keeps it.

Requirements the agent meets: AdamW with ``capturable=True`` (step counts on the device); gradients set
to None before capture, so the backward allocates them from the graph's memory pool; autocast without
its weight cache; the replay's generator registered with each graph, so that each replay advances it
(the default CUDA generator, used for noise and augmentation, is handled by capture itself). The
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
    """Captures and replays one CUDA graph per kind of update ("encoder", "value_policy")."""

    def __init__(self, device: torch.device):
        self.device = device
        self._graphs: dict[str, tuple[torch.cuda.CUDAGraph, dict[str, Tensor]]] = {}
        self._calls: dict[str, int] = {}
        self._buffer = None
        self._pool = None

    def reset(self) -> None:
        """Drop every graph: the next calls warm up and capture again."""
        self._graphs.clear()
        self._calls.clear()

    def run(self, kind: str, update: Callable, buffer) -> dict[str, Tensor]:
        """The update of this kind on `buffer`: replayed from its graph once captured."""
        if buffer is not self._buffer:  # graphs hold the buffer's tensors: a new buffer needs new graphs
            self.reset()
            self._buffer = buffer
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
                metrics = update(buffer)
            torch.cuda.current_stream(self.device).wait_stream(side)
            return metrics
        return self._capture(kind, update, buffer)

    def _capture(self, kind: str, update: Callable, buffer) -> dict[str, Tensor]:
        graph = torch.cuda.CUDAGraph()
        graph.register_generator_state(buffer.generator)
        # Gradients are allocated inside the capture, from the graph's pool, and stay there.
        for parameter in _parameters_with_grads(update):
            parameter.grad = None
        torch.cuda.synchronize(self.device)
        with torch.cuda.graph(graph, pool=self._pool):
            metrics = update(buffer)
        self._pool = graph.pool()  # both kinds of update share one memory pool
        self._graphs[kind] = (graph, metrics)
        graph.replay()
        return metrics


def _parameters_with_grads(update: Callable):
    """The parameters of the agent whose bound update method this is (their .grad is reset before capture)."""
    agent = update.__self__  # type: ignore[attr-defined]
    for module in (agent.encoder, agent.policy, agent.value):
        yield from module.parameters()
