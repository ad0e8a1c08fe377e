"""ULD networks: state encoder f, state-action encoder g with its latent model head, policy, value.

Shapes and activations follow docs/algorithm.md, Networks. Layer norms carry no learnable affine.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from uld.agents.linear import Linear


# Without autograd (the target encoder's pass over H next states), the pixel encoder takes large
# batches in chunks of this many images, so that each conv map fits the CPU's last-level cache (one
# unchunked pass is much slower; the figures are in docs/speed.md). Every layer treats images independently,
# so the result is that of one pass, to fp32 rounding (convolution algorithms depend on batch size).
NO_GRAD_CHUNK = 128


def ln_act(x: Tensor, act) -> Tensor:
    """Layer norm over the last dim without affine parameters, then the activation."""
    return act(F.layer_norm(x, x.shape[-1:]))


def init_weights(module: nn.Module) -> None:
    """Xavier-uniform with the ReLU gain sqrt(2), zero bias, for every Linear and Conv2d."""
    if isinstance(module, (nn.Linear, nn.Conv2d)):
        nn.init.xavier_uniform_(module.weight, gain=math.sqrt(2))
        nn.init.zeros_(module.bias)


class MLP(nn.Module):
    """Linear -> ln_act -> Linear -> ln_act -> Linear (linear output)."""

    def __init__(self, in_dim: int, out_dim: int, hidden_dim: int, act):
        super().__init__()
        self.l1 = Linear(in_dim, hidden_dim)
        self.l2 = Linear(hidden_dim, hidden_dim)
        self.l3 = Linear(hidden_dim, out_dim)
        self.act = act

    def forward(self, x: Tensor) -> Tensor:
        x = ln_act(self.l1(x), self.act)
        x = ln_act(self.l2(x), self.act)
        return self.l3(x)


class VectorStateEncoder(nn.Module):
    """f for vector observations: zs = ln_act_elu(MLP_elu(obs -> zs))."""

    def __init__(self, obs_dim: int, zs_dim: int, hidden_dim: int):
        super().__init__()
        self.mlp = MLP(obs_dim, zs_dim, hidden_dim, F.elu)

    def forward(self, obs: Tensor) -> Tensor:
        return ln_act(self.mlp(obs), F.elu)


class PixelStateEncoder(nn.Module):
    """f for image stacks: four 3x3 convolutions with ELU, then Linear -> ln_act_elu."""

    def __init__(self, in_channels: int, zs_dim: int, image_size: int = 84):
        super().__init__()
        self.convs = nn.ModuleList(
            [
                nn.Conv2d(in_channels, 32, 3, stride=2),
                nn.Conv2d(32, 32, 3, stride=2),
                nn.Conv2d(32, 32, 3, stride=2),
                nn.Conv2d(32, 32, 3, stride=1),
            ]
        )
        side = image_size
        for conv in self.convs:
            side = (side - 3) // conv.stride[0] + 1
        self.linear = Linear(32 * side * side, zs_dim)

    def forward(self, obs: Tensor) -> Tensor:
        if not torch.is_grad_enabled() and obs.shape[0] > NO_GRAD_CHUNK:
            return torch.cat([self._forward(chunk) for chunk in obs.split(NO_GRAD_CHUNK)])
        return self._forward(obs)

    def _forward(self, obs: Tensor) -> Tensor:
        # Channels-last (NHWC) is oneDNN's native layout: the convolutions run faster on a CPU than on
        # NCHW, which oneDNN would reorder at every call (docs/speed.md); the values agree to fp32 rounding. The
        # scaling and the ELUs work in place on fresh tensors that autograd does not need to keep (a
        # convolution's backward uses its input, not its output; ELU's can use its output).
        # The layout changes on the uint8 frames (a quarter of the bytes), then they become floats.
        # Under torch.func.vmap (many seeds, uld/agents/stacked.py) the layout cannot be chosen: the
        # convolutions become grouped ones over the seeds, in the default layout.
        if torch.compiler.is_compiling() or not torch._C._functorch.is_functorch_wrapped_tensor(obs):
            obs = obs.contiguous(memory_format=torch.channels_last)
        x = obs.to(torch.float32, copy=True).div_(255.0).sub_(0.5)
        for conv in self.convs:
            x = F.elu(conv(x), inplace=True)
        return ln_act(self.linear(x.flatten(1)), F.elu)


class Encoder(nn.Module):
    """f (state encoder), g (state-action encoder) and the latent model head on zsa."""

    def __init__(self, obs_shape: tuple[int, ...], action_dim: int, zs_dim: int, zsa_dim: int,
                 za_dim: int, hidden_dim: int, num_bins: int, pixels: bool, nonlinear_model: bool = False):
        super().__init__()
        if pixels:
            self.state_encoder = PixelStateEncoder(obs_shape[0], zs_dim, obs_shape[-1])
        else:
            self.state_encoder = VectorStateEncoder(obs_shape[0], zs_dim, hidden_dim)
        self.action_encoder = Linear(action_dim, za_dim)
        self.state_action_encoder = MLP(zs_dim + za_dim, zsa_dim, hidden_dim, F.elu)
        if nonlinear_model:  # design study: a non-linear latent model
            self.model = MLP(zsa_dim, 1 + zs_dim + num_bins, hidden_dim, F.elu)
        else:
            self.model = Linear(zsa_dim, 1 + zs_dim + num_bins)
        self.zs_dim = zs_dim
        self.apply(init_weights)

    def f(self, obs: Tensor) -> Tensor:
        """zs = f(s)."""
        return self.state_encoder(obs)

    def g(self, zs: Tensor, action: Tensor) -> Tensor:
        """zsa = g(zs, a): linear output, no norm, no activation."""
        za = F.elu(self.action_encoder(action))
        return self.state_action_encoder(torch.cat([zs, za], dim=-1))

    def predict(self, zsa: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """The latent model: (done (..., 1), next zs (..., zs_dim), reward logits (..., bins))."""
        out = self.model(zsa)
        return out[..., :1], out[..., 1 : 1 + self.zs_dim], out[..., 1 + self.zs_dim :]


def gumbel_noise(shape: tuple[int, ...], device: torch.device | str, generator: torch.Generator | None = None,
                 dtype: torch.dtype = torch.float32) -> Tensor:
    """Standard Gumbel draws, -log(E) with E ~ Exponential(1), as F.gumbel_softmax draws them (in `dtype`:
    the logits' dtype, bf16 under autocast)."""
    return -torch.empty(shape, device=device, dtype=dtype).exponential_(generator=generator).log()


class Policy(nn.Module):
    """pi(zs): an MLP with ReLU and layer norm; tanh for continuous actions, logits for discrete."""

    def __init__(self, zs_dim: int, action_dim: int, hidden_dim: int, discrete: bool, gumbel_tau: float):
        super().__init__()
        self.mlp = MLP(zs_dim, action_dim, hidden_dim, F.relu)
        self.discrete, self.gumbel_tau = discrete, gumbel_tau
        self.apply(init_weights)

    def forward(self, zs: Tensor, gumbel: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Return (action fed to g, pre-activation). Discrete: a soft Gumbel-softmax sample,
        softmax((pre + gumbel) / tau), with `gumbel` drawn here from torch's generator unless given
        (a many-seed agent draws each seed's outside the mapped function, uld/agents/stacked.py)."""
        pre = self.mlp(zs)
        if self.discrete:
            if gumbel is None:
                gumbel = gumbel_noise(pre.shape, pre.device, dtype=pre.dtype)
            return F.softmax((pre + gumbel.to(pre.dtype)) / self.gumbel_tau, dim=-1), pre
        return torch.tanh(pre), pre


class Value(nn.Module):
    """Two independent Q heads on zsa: Linear(ln_act_elu(MLP_elu(zsa))). Output (B, 2)."""

    def __init__(self, zsa_dim: int, hidden_dim: int, linear: bool = False):
        super().__init__()
        self.linear = linear
        if linear:  # design study: Q linear in zsa
            self.out1, self.out2 = Linear(zsa_dim, 1), Linear(zsa_dim, 1)
        else:
            self.q1 = MLP(zsa_dim, hidden_dim, hidden_dim, F.elu)
            self.q2 = MLP(zsa_dim, hidden_dim, hidden_dim, F.elu)
            self.out1, self.out2 = Linear(hidden_dim, 1), Linear(hidden_dim, 1)
        self.apply(init_weights)

    def forward(self, zsa: Tensor) -> Tensor:
        if self.linear:
            h1 = h2 = zsa
        else:
            h1, h2 = ln_act(self.q1(zsa), F.elu), ln_act(self.q2(zsa), F.elu)
        # The scalar outputs stay in fp32 under bf16 autocast: bf16's 8-bit mantissa would round Q
        # (tens to hundreds) to steps coarser than the TD errors it learns from.
        with torch.autocast(zsa.device.type, enabled=False):
            return torch.cat([self.out1(h1.float()), self.out2(h2.float())], dim=-1)
