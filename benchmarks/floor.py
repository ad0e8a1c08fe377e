"""The kernel floor of a training step: its GEMMs and convolutions replayed alone, back to back.

    with RecordKernels() as kernels:
        step()
    floor_ms = kernels.floor_ms(repeats=10)

A dispatch mode records every matrix multiply (aten mm/addmm, the oneDNN linear) and convolution
(forward and backward) the step issues, with its operands' shapes, strides and dtypes. The floor
replays each recorded call on fresh random operands of the same layout; GEMMs run on the faster of
torch.mm and a bare oneDNN GEMM for their shape, i.e. at what this CPU's GEMM libraries can do.
Step time against floor time is the fraction of the machine's measured matmul throughput that the
step achieves: everything else in the step (elementwise ops, the optimizer, Python) is overhead.
"""

from __future__ import annotations

import time
from collections import Counter

import torch
from torch.utils._python_dispatch import TorchDispatchMode

_GEMMS = {
    torch.ops.aten.mm.default: lambda args: (args[0].shape[0], args[0].shape[1], args[1].shape[1]),
    torch.ops.aten.addmm.default: lambda args: (args[1].shape[0], args[1].shape[1], args[2].shape[1]),
    torch.ops.mkldnn._linear_pointwise.default: lambda args: (args[0].shape[0], args[0].shape[1], args[1].shape[0]),
}
_CONVS = (torch.ops.aten.convolution.default, torch.ops.aten.convolution_backward.default)


def _layout(value):
    """A hashable description of an argument: tensors by shape, strides and dtype, the rest as is."""
    if isinstance(value, torch.Tensor):
        return ("tensor", tuple(value.shape), tuple(value.stride()), value.dtype)
    if isinstance(value, (list, tuple)):
        return tuple(_layout(v) for v in value)
    return value


def _materialize(layout):
    if isinstance(layout, tuple) and layout and layout[0] == "tensor":
        _, shape, stride, dtype = layout
        base = torch.randn(max(1, sum((s - 1) * st for s, st in zip(shape, stride)) + 1)).to(dtype)
        return base.as_strided(shape, stride)
    if isinstance(layout, tuple):
        return type(layout)(_materialize(v) for v in layout)
    return layout


class RecordKernels(TorchDispatchMode):
    """Records the step's GEMMs (m, k, n, dtype) and convolutions (op, argument layouts)."""

    def __init__(self):
        super().__init__()
        self.gemms: Counter = Counter()
        self.convs: Counter = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in _GEMMS:
            m, k, n = _GEMMS[func](args)
            dtype = args[0].dtype if func is not torch.ops.aten.addmm.default else args[1].dtype
            self.gemms[(m, k, n, dtype)] += 1
        elif func in _CONVS:
            self.convs[(func, _layout(tuple(args)))] += 1
        return func(*args, **(kwargs or {}))

    @property
    def gflop(self) -> float:
        """GEMM FLOPs of the recorded step (convolutions not counted)."""
        return sum(2 * m * k * n * count for (m, k, n, _), count in self.gemms.items()) / 1e9

    def floor_ms(self, repeats: int = 10) -> float:
        """Milliseconds of the recorded kernels alone: per call, the best of three timing rounds."""
        total = 0.0
        for (m, k, n, dtype), count in self.gemms.items():
            a, b = torch.randn(m, k).to(dtype), torch.randn(k, n).to(dtype)
            b_t = b.t().contiguous()
            total += count * min(_seconds(lambda: torch.mm(a, b), repeats),
                                 _seconds(lambda: torch.ops.mkldnn._linear_pointwise(a, b_t, None, "none", [], ""),
                                          repeats))
        for (func, layout), count in self.convs.items():
            args = _materialize(layout)
            total += count * _seconds(lambda: func(*args), repeats)
        return total * 1000


def _seconds(call, repeats: int) -> float:
    call()
    best = float("inf")
    for _ in range(3):  # the best of three rounds: the floor is what the CPU does when undisturbed
        start = time.perf_counter()
        for _ in range(repeats):
            call()
        best = min(best, (time.perf_counter() - start) / repeats)
    return best
