"""A Linear layer whose fp32 CPU matmuls run on oneDNN instead of the default BLAS.

Same parameters, same state_dict and the same function as ``nn.Linear``: only the kernel changes.
PyTorch's CPU wheel sends fp32 ``F.linear`` to MKL, which on AMD processors takes its AVX2 path; oneDNN
(already inside PyTorch, and used by it for bf16) runs AVX-512 there. On this project's 2-core Zen 5 CI
machine that is 2.2x the fp32 GEMM throughput at ULD's shapes (``benchmarks/speed.py`` prints both).
Results differ from ``F.linear`` only by summation order (fp32 rounding, ~1e-6 relative).

The oneDNN path is taken for CPU fp32 tensors with autocast off and requires grad through a custom
autograd function whose backward is two more oneDNN GEMMs. Everywhere else (CUDA, bf16 autocast,
``torch.compile`` tracing, oneDNN missing, ``ULD_ONEDNN_LINEAR=0``) it is exactly ``F.linear``.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import Tensor, nn

_ENABLED = (
    os.environ.get("ULD_ONEDNN_LINEAR", "1") != "0"
    and torch.backends.mkldnn.is_available()
    and hasattr(torch.ops.mkldnn, "_linear_pointwise")
)
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
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return _gemm(x, weight, bias)

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        x, weight = ctx.saved_tensors
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = _gemm(grad_out, weight.t(), None)  # (B, out) @ (out, in)
        if ctx.needs_input_grad[1]:
            grad_w = _gemm(grad_out.t(), x.t(), None)  # (out, B) @ (B, in)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = grad_out.sum(0)
        return grad_x, grad_w, grad_b


def set_onednn(enabled: bool) -> None:
    """Turn the oneDNN path on or off for this process (benchmarks compare both; off = ``F.linear``)."""
    global _ENABLED
    _ENABLED = enabled and torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def use_onednn(x: Tensor) -> bool:
    """Whether ``linear`` takes the oneDNN path for this input."""
    return (
        _ENABLED
        and x.device.type == "cpu"
        and x.dtype == torch.float32
        and not torch.is_autocast_enabled("cpu")
    )


def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """``F.linear(x, weight, bias)``, on oneDNN for CPU fp32 (see the module docstring)."""
    if not use_onednn(x) or weight.dtype != torch.float32 or min(weight.shape) < _MIN_WIDTH:
        return F.linear(x, weight, bias)
    lead = x.shape[:-1]
    y = _OneDnnLinear.apply(x.reshape(-1, x.shape[-1]), weight, bias)
    return y.reshape(*lead, weight.shape[0])


class Linear(nn.Linear):
    """``nn.Linear`` computed by ``linear``: a drop-in with the same parameters and state_dict."""

    def forward(self, x: Tensor) -> Tensor:
        return linear(x, self.weight, self.bias)
