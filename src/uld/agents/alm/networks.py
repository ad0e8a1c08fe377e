"""ALM networks: encoder, latent model, reward, classifier, twin critic, actor (docs/alm.md, Networks).

Every Linear layer starts orthogonal with zero bias. The encoder and the latent model output a
diagonal Gaussian over the 50-d latent z; the actor outputs the mean of a truncated normal whose std
is scheduled from outside.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from uld.agents.linear import Linear

MEAN_BOUND = 30.0
"""Gaussian heads: mean = MEAN_BOUND * tanh(m / MEAN_BOUND)."""
STD_MIN, STD_MAX = 0.1, 10.0
"""Gaussian heads: the std is soft-clamped into [STD_MIN, STD_MAX]."""


def init_weights(module: nn.Module) -> None:
    """Orthogonal weights, zero bias, for every Linear layer."""
    if isinstance(module, nn.Linear):
        nn.init.orthogonal_(module.weight)
        nn.init.zeros_(module.bias)


def soft_clamp_mean(m: Tensor) -> Tensor:
    """mean = 30 tanh(m / 30): the identity near 0, bounded by ±30."""
    return MEAN_BOUND * torch.tanh(m / MEAN_BOUND)


def soft_clamp_std(x: Tensor) -> Tensor:
    """std = 10 - softplus(10 - x), then 0.1 + softplus(std - 0.1): smooth, within (0.1, ~10]."""
    std = STD_MAX - F.softplus(STD_MAX - x)
    return STD_MIN + F.softplus(std - STD_MIN)


class Gaussian:
    """A diagonal Gaussian given by its mean and std; `rsample` is reparameterized."""

    def __init__(self, mean: Tensor, std: Tensor):
        self.mean, self.std = mean, std

    def rsample(self) -> Tensor:
        return self.mean + self.std * torch.randn_like(self.std)


def gaussian_head(out: Tensor) -> Gaussian:
    """Split a 2·d output into the clamped mean and std of a diagonal Gaussian."""
    m, x = out.chunk(2, dim=-1)
    return Gaussian(soft_clamp_mean(m), soft_clamp_std(x))


def elu_mlp(in_dim: int, hidden_dim: int, out_dim: int) -> nn.Sequential:
    """Linear -> ELU -> Linear -> ELU -> Linear."""
    return nn.Sequential(
        Linear(in_dim, hidden_dim), nn.ELU(),
        Linear(hidden_dim, hidden_dim), nn.ELU(),
        Linear(hidden_dim, out_dim),
    )


def layer_norm_tanh_mlp(in_dim: int, hidden_dim: int, out_dim: int) -> nn.Sequential:
    """Linear -> LayerNorm -> Tanh -> Linear -> ELU -> Linear (reward, classifier and critic bodies)."""
    return nn.Sequential(
        Linear(in_dim, hidden_dim), nn.LayerNorm(hidden_dim), nn.Tanh(),
        Linear(hidden_dim, hidden_dim), nn.ELU(),
        Linear(hidden_dim, out_dim),
    )


class Encoder(nn.Module):
    """e(s): a Gaussian over z."""

    def __init__(self, obs_dim: int, latent_dim: int, hidden_dim: int):
        super().__init__()
        self.net = elu_mlp(obs_dim, hidden_dim, 2 * latent_dim)
        self.apply(init_weights)

    def forward(self, obs: Tensor) -> Gaussian:
        return gaussian_head(self.net(obs))


class LatentModel(nn.Module):
    """m(z, a): a Gaussian over the next z."""

    def __init__(self, latent_dim: int, action_dim: int, hidden_dim: int):
        super().__init__()
        self.net = elu_mlp(latent_dim + action_dim, hidden_dim, 2 * latent_dim)
        self.apply(init_weights)

    def forward(self, z: Tensor, action: Tensor) -> Gaussian:
        return gaussian_head(self.net(torch.cat([z, action], dim=-1)))


class Reward(nn.Module):
    """R(z, a): a scalar reward, shape (B,)."""

    def __init__(self, latent_dim: int, action_dim: int, hidden_dim: int):
        super().__init__()
        self.net = layer_norm_tanh_mlp(latent_dim + action_dim, hidden_dim, 1)
        self.apply(init_weights)

    def forward(self, z: Tensor, action: Tensor) -> Tensor:
        return self.net(torch.cat([z, action], dim=-1)).squeeze(-1)


class Classifier(nn.Module):
    """C(z, a, z'): two logits, [model-generated, real]; the bonus is logit[1] - logit[0]."""

    def __init__(self, latent_dim: int, action_dim: int, hidden_dim: int):
        super().__init__()
        self.net = layer_norm_tanh_mlp(2 * latent_dim + action_dim, hidden_dim, 2)
        self.apply(init_weights)

    def forward(self, z: Tensor, action: Tensor, next_z: Tensor) -> Tensor:
        return self.net(torch.cat([z, action, next_z], dim=-1))

    def bonus(self, z: Tensor, action: Tensor, next_z: Tensor) -> Tensor:
        """log C(real) - log C(model): how real the transition looks, shape (B,)."""
        logits = self(z, action, next_z)
        return logits[..., 1] - logits[..., 0]


class Critic(nn.Module):
    """Twin Q(z, a): output (B, 2)."""

    def __init__(self, latent_dim: int, action_dim: int, hidden_dim: int):
        super().__init__()
        self.q1 = layer_norm_tanh_mlp(latent_dim + action_dim, hidden_dim, 1)
        self.q2 = layer_norm_tanh_mlp(latent_dim + action_dim, hidden_dim, 1)
        self.apply(init_weights)

    def forward(self, z: Tensor, action: Tensor) -> Tensor:
        za = torch.cat([z, action], dim=-1)
        return torch.cat([self.q1(za), self.q2(za)], dim=-1)

    def min_q(self, z: Tensor, action: Tensor) -> Tensor:
        """min(Q1, Q2), shape (B,)."""
        return self(z, action).min(dim=-1).values


class Actor(nn.Module):
    """π(z): the tanh-squashed mean of the action distribution."""

    def __init__(self, latent_dim: int, action_dim: int, hidden_dim: int):
        super().__init__()
        self.net = elu_mlp(latent_dim, hidden_dim, action_dim)
        self.apply(init_weights)

    def forward(self, z: Tensor) -> Tensor:
        return torch.tanh(self.net(z))


def truncated_normal_sample(mean: Tensor, std: float, clip: float | None, low: float = -1.0,
                            high: float = 1.0) -> Tensor:
    """a = mean + clip(ε·std, ±clip), clamped to [low, high] with a straight-through gradient.

    The clamp changes the value only: the gradient with respect to `mean` is the identity even where
    the sample was clamped, so a policy at the bound still learns. `clip=None` leaves the noise
    unclipped (exploration).
    """
    noise = torch.randn_like(mean) * std
    if clip is not None:
        noise = noise.clamp(-clip, clip)
    sample = mean + noise
    return sample + (sample.clamp(low, high) - sample).detach()


def count_parameters(*modules: nn.Module) -> int:
    """Trainable parameters of the given modules."""
    return sum(p.numel() for module in modules for p in module.parameters() if p.requires_grad)
