"""A stand-in for torch.cuda's graph calls (uld.agents.uld.graphs.CudaGraphBackend) that runs on a CPU.

It keeps what matters to the code that drives the graphs, so that the capture path runs on every CI
machine: a capture returns the update's outputs and a replay overwrites them in place; the memory pool
of each capture is recorded; the device current at each capture, replay and warm-up call is recorded;
an optimizer step inside a capture refuses param groups that are not capturable, with torch's own
message; and a capture or a replay can be made to fail.

Timing differs from a real graph, on purpose: a real capture records kernels without running them and
the replay right after it runs them; here the capture runs the update and that first replay does
nothing. The state after capture + first replay is the same; a capture that fails has written more
here than a real one would, so restoring after it is checked at least as hard.
"""

from __future__ import annotations

import itertools
from contextlib import contextmanager

import torch

FAILURE = "stand-in: operation not permitted when stream is capturing"


class StandInGraph:
    def __init__(self, backend: StandInBackend):
        self.backend = backend
        self.generators: list[torch.Generator] = []
        self.pool: int | None = None
        self.function = None
        self.outputs: dict[str, torch.Tensor] | None = None
        self._captured_run_pending = False

    def register_generator_state(self, generator: torch.Generator) -> None:
        self.generators.append(generator)

    def replay(self) -> None:
        backend = self.backend
        backend.replay_devices.append(backend.current)
        backend.replays += 1
        if backend.fail == "replay":
            raise RuntimeError(FAILURE)
        if self._captured_run_pending:  # the capture ran this call's update already
            self._captured_run_pending = False
            return
        assert self.function is not None and self.outputs is not None
        outputs = self.function()
        with torch.no_grad():
            for name, tensor in outputs.items():
                self.outputs[name].copy_(tensor)


class StandInBackend:
    """fail: None, "capture" (raise at the end of a capture, after the update ran) or "replay" (every replay)."""

    def __init__(self, device: torch.device | str = "cpu", fail: str | None = None):
        self.device = torch.device(device)
        self.fail = fail
        self.current: torch.device | None = None
        self.graphs: list[StandInGraph] = []
        self.capture_devices: list = []
        self.replay_devices: list = []
        self.warmup_devices: list = []
        self.replays = 0
        self._pools = itertools.count()

    @contextmanager
    def scope(self):
        previous, self.current = self.current, self.device
        try:
            yield
        finally:
            self.current = previous

    @contextmanager
    def side_stream(self):
        self.warmup_devices.append(self.current)
        yield

    def synchronize(self) -> None:
        pass

    def new_graph(self) -> StandInGraph:
        return StandInGraph(self)

    def capture(self, graph: StandInGraph, function):
        self.capture_devices.append(self.current)
        graph.pool = next(self._pools)
        graph.function = function
        original_step = torch.optim.AdamW.step

        def step(optimizer, *args, **kwargs):  # as torch's capture health check, while capturing
            if not all(group["capturable"] for group in optimizer.param_groups):
                raise RuntimeError("Attempting CUDA graph capture of step() for an instance of AdamW but "
                                   "param_groups' capturable is False.")
            return original_step(optimizer, *args, **kwargs)

        torch.optim.AdamW.step = step  # type: ignore[method-assign]
        try:
            graph.outputs = function()
        finally:
            torch.optim.AdamW.step = original_step  # type: ignore[method-assign]
        if self.fail == "capture":
            raise RuntimeError(FAILURE)
        graph._captured_run_pending = True
        self.graphs.append(graph)
        return graph.outputs

    def default_generator(self) -> torch.Generator:
        return torch.default_generator

