"""A Linear layer whose fp32 CPU matmuls can run on oneDNN instead of PyTorch's default BLAS.

Same parameters, same state_dict and the same function as ``nn.Linear``: only the kernel changes.
PyTorch's CPU wheel sends fp32 ``F.linear`` to MKL, which on AMD processors takes its AVX2 code path;
oneDNN (already inside PyTorch, which uses it for bf16) runs AVX-512 there. On the 2-core AMD Zen 5
machine this project develops on, that is 2.2x the fp32 GEMM throughput at ULD's shapes
(``benchmarks/speed.py`` times both). Results differ from ``F.linear`` by fp32 summation order only.

When it is used: for CPU fp32 inputs with autocast off and layers at least 64 wide, in eager mode
and under ``torch.compile`` (there through the custom op ``uld::onednn_gemm``). It is on by default
on AMD x86-64 CPUs, the case measured; ``ULD_ONEDNN_LINEAR=1`` turns it on elsewhere (Intel, where
MKL already runs AVX-512, has not been measured) and ``ULD_ONEDNN_LINEAR=0`` off. Everywhere else
(CUDA, autocast, narrow layers, empty batches, oneDNN missing) the layer is ``F.linear``.

The backward pass is two more oneDNN GEMMs and is not itself differentiable: double backward
through this layer raises an error, and ``torch.func`` transforms are not supported on this path
(set ``ULD_ONEDNN_LINEAR=0`` for either). ULD and ALM need neither.
"""

from __future__ import annotations

import os
import platform

import torch
import torch.nn.functional as F
from torch import Tensor, nn

_AVAILABLE = torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def _amd_x86() -> bool:
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return False
    try:
        with open("/proc/cpuinfo") as f:
            return "AuthenticAMD" in f.read(4096)
    except OSError:
        return False


_ENABLED = _AVAILABLE and {"0": False, "1": True}.get(os.environ.get("ULD_ONEDNN_LINEAR", ""), _amd_x86())
# Narrower layers (action encoders, Q output heads) are faster on the default path: oneDNN's fixed
# per-call overhead outweighs its throughput there.
_MIN_WIDTH = 64


def _gemm(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """x @ weight.T + bias on oneDNN; x is 2-D, weight is (out, in). Transposed views are passed as they
    are: oneDNN reads the strides, which is faster than copying them into place first.

    Eager calls go to the oneDNN op directly; under torch.compile the same op is wrapped as the custom
    op ``uld::onednn_gemm``, which Inductor keeps as one opaque call (it cannot lower the oneDNN op on
    unpacked weights) while it fuses what lies between the GEMMs. The wrapper costs ~40 us a call in
    eager mode (5 ms of a ULD step), hence the two routes to the one kernel.
    """
    if torch.compiler.is_compiling():
        return _onednn_gemm_op(x, weight, bias)
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")


@torch.library.custom_op("uld::onednn_gemm", mutates_args=())
def _onednn_gemm_op(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")


@_onednn_gemm_op.register_fake
def _(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    return x.new_empty(x.shape[0], weight.shape[0])


class _OneDnnLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        # Keep only what the backward will read: x for the weight's gradient, weight for x's (in the
        # actor step the encoder and value weights are frozen, so x is not kept there).
        ctx.save_for_backward(x if ctx.needs_input_grad[1] else None, weight if ctx.needs_input_grad[0] else None)
        return _gemm(x, weight, bias)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out: Tensor):
        x, weight = ctx.saved_tensors
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = _gemm(grad_out, weight.t(), None)  # (B, out) @ (out, in)
        if ctx.needs_input_grad[1]:
            grad_w = _gemm(grad_out.t(), x.t(), None)  # (out, B) @ (B, in)
        if ctx.needs_input_grad[2]:  # False when there is no bias
            grad_b = grad_out.sum(0)
        return grad_x, grad_w, grad_b


def set_onednn(enabled: bool) -> bool:
    """Turn the oneDNN path on or off for this process; returns the previous setting (benchmarks
    compare both; off = ``F.linear``)."""
    global _ENABLED
    previous, _ENABLED = _ENABLED, enabled and _AVAILABLE
    return previous


def use_onednn(x: Tensor, weight: Tensor) -> bool:
    """Whether ``linear`` takes the oneDNN path for this input and weight."""
    return (
        _ENABLED
        and x.device.type == "cpu"
        and x.dtype == weight.dtype == torch.float32
        and min(weight.shape) >= _MIN_WIDTH
        and x.numel() > 0
        and not torch.is_autocast_enabled("cpu")
        # torch.func (vmap over stacked seeds, uld/agents/stacked.py) has no batching rule for oneDNN's op.
        and (torch.compiler.is_compiling() or not torch._C._functorch.is_functorch_wrapped_tensor(weight))
    )


def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """``F.linear(x, weight, bias)``, on oneDNN for CPU fp32 (see the module docstring)."""
    if not use_onednn(x, weight):
        return F.linear(x, weight, bias)
    lead = x.shape[:-1]
    y = _OneDnnLinear.apply(x.reshape(-1, x.shape[-1]), weight, bias)
    return y.reshape(*lead, weight.shape[0])


class Linear(nn.Linear):
    """``nn.Linear`` computed by ``linear``: a drop-in with the same parameters and state_dict."""

    def forward(self, x: Tensor) -> Tensor:
        return linear(x, self.weight, self.bias)
