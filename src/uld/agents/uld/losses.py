"""ULD losses, written as in docs/algorithm.md (Losses): pure functions from tensors to a loss and metrics.

Index convention for a batch of subsequences: obs[:, t] is s_t; action[:, t] is a_t; reward[:, t]
and terminated[:, t] are r_{t+1} and d_{t+1}, the outcome of taking a_t in s_t.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from uld.agents.uld.networks import Encoder, Policy, Value

Metrics = dict[str, Tensor]


def symexp(x: Tensor) -> Tensor:
    return torch.sign(x) * (torch.exp(x.abs()) - 1)


def reward_bins(num_bins: int, bin_range: float) -> Tensor:
    """Two-hot bin locations symexp(linspace(-range, range, num_bins)) (docs/algorithm.md, Encoder)."""
    return symexp(torch.linspace(-bin_range, bin_range, num_bins))


def two_hot(x: Tensor, bins: Tensor) -> Tensor:
    """Split each value's mass linearly between its two bracketing bins.

    Values beyond the outer bins put all their mass on the outer bin (docs/algorithm.md, difference 6).
    """
    x = x.clamp(bins[0], bins[-1])
    upper = torch.searchsorted(bins, x.contiguous()).clamp(1, len(bins) - 1)
    lower = upper - 1
    weight_upper = (x - bins[lower]) / (bins[upper] - bins[lower])
    # Out of place and from x: the same values, and torch.func.vmap maps it over seeds (uld/agents/stacked.py).
    encoded = x.new_zeros((*x.shape, len(bins))).scatter(-1, lower.unsqueeze(-1), (1 - weight_upper).unsqueeze(-1))
    return encoded.scatter_add(-1, upper.unsqueeze(-1), weight_upper.unsqueeze(-1))


def n_step_return(reward: Tensor, terminated: Tensor, discount: float) -> tuple[Tensor, Tensor]:
    """R = sum_i gamma^i r_{i+1} prod_{j<=i}(1 - d_j) and ND = prod_{j<=H}(1 - d_j).

    The reward of the terminal step counts; nothing after it does (docs/algorithm.md, difference 1).
    Shapes: (B, H) -> (B,), (B,).
    """
    not_done = 1.0 - terminated
    alive = torch.cumprod(torch.cat([torch.ones_like(not_done[:, :1]), not_done[:, :-1]], dim=1), dim=1)
    powers = discount ** torch.arange(reward.shape[1], dtype=reward.dtype, device=reward.device)
    R = (reward * alive * powers).sum(dim=1)
    ND = not_done.prod(dim=1)
    return R, ND


def info_nce(query: Tensor, key: Tensor, temperature: float) -> Tensor:
    """Per-query InfoNCE c_b = -log softmax_j(cos(q_b, k_j) / temperature)[b] (spec/DRQ.md, D2).

    query (B, D): the predicted next zs; key (B, D): the target encoder's zs of the true next states.
    The positive of query b is key b; the other keys of the batch are its negatives; one direction
    (a softmax over the keys of each query). Returns (B,).
    """
    logits = F.normalize(query.float(), dim=-1) @ F.normalize(key.float(), dim=-1).transpose(-2, -1) / temperature
    return -torch.diagonal(F.log_softmax(logits, dim=-1), dim1=-2, dim2=-1)


def encoder_loss(
    encoder: Encoder,
    obs0: Tensor,
    action: Tensor,
    reward: Tensor,
    terminated: Tensor,
    target_zs: Tensor,
    *,
    bins: Tensor,
    dynamics_weight: float,
    reward_weight: float,
    done_weight: float,
    use_done: bool | Tensor,
    next_action: Tensor | None = None,
    infonce_weight: float = 0.0,
    infonce_temperature: float = 0.1,
    infonce_masking: str = "alive-fraction",
) -> tuple[Tensor, Metrics]:
    """The latent model unrolled H_enc steps from zs = f(s_0) (docs/algorithm.md, Encoder).

    target_zs[:, i] = f_target(s_{i+1}). Predicted zs are fed back as they leave the head; steps
    after a terminal are masked; terms are summed over the unroll. `use_done` is False (or a false
    tensor) until the environment has ever terminated. Design study: with `next_action` (a_{i+1}), the dynamics term
    compares g(predicted zs, a_{i+1}) with target_zs[:, i] = g_target(f_target(s_{i+1}), a_{i+1}).

    DR.Q (docs/drq.md): with infonce_weight > 0, an InfoNCE term between the predicted zs and
    target_zs at each step; "alive-fraction" masking multiplies the step's batch mean by the
    fraction of rows not yet past a termination (the released code), "per-sample" masks each row's term.
    """
    zs = encoder.f(obs0)
    mask = torch.ones_like(reward[:, 0])
    dynamics = reward_ce = done_mse = infonce = zs.new_zeros(())
    for i in range(action.shape[1]):
        done_pred, zs, reward_logits = encoder.predict(encoder.g(zs, action[:, i]))
        predicted = zs if next_action is None else encoder.g(zs, next_action[:, i])
        dynamics = dynamics + (mask * (predicted.float() - target_zs[:, i].float()).pow(2).mean(-1)).mean()
        target_dist = two_hot(reward[:, i], bins)
        ce = -(target_dist * F.log_softmax(reward_logits.float(), dim=-1)).sum(-1)
        reward_ce = reward_ce + (mask * ce).mean()
        done_mse = done_mse + (mask * (done_pred.squeeze(-1).float() - terminated[:, i]).pow(2)).mean()
        if infonce_weight:
            c = info_nce(predicted, target_zs[:, i], infonce_temperature)
            infonce = infonce + ((mask * c).mean() if infonce_masking == "per-sample" else c.mean() * mask.mean())
        mask = mask * (1.0 - terminated[:, i])
    # The done term counts once the environment has ever terminated: a gate of 0 or 1 (a device
    # tensor in the agent, so that the update never branches on a value it would have to read back).
    loss = dynamics_weight * dynamics + reward_weight * reward_ce + done_weight * (done_mse * use_done)
    metrics = {
        "encoder/dynamics": dynamics.detach(),
        "encoder/reward_ce": reward_ce.detach(),
        "encoder/done_mse": done_mse.detach(),
    }
    if infonce_weight:  # DR.Q's term (spec/DRQ.md, D1): ULD's loss is left as it was, not + 0
        loss = loss + infonce_weight * infonce
        metrics["encoder/infonce"] = infonce.detach()
    return loss, {"encoder/loss": loss.detach(), **metrics}


def critic_target(
    R: Tensor,
    ND: Tensor,
    next_q: Tensor,
    *,
    discount: float,
    horizon: int,
    reward_scale: float | Tensor,
    target_reward_scale: float | Tensor,
    clipped_double_q: bool = True,
) -> Tensor:
    """y = (R + ND gamma^H min_j Q_target_j * target_reward_scale) / reward_scale. next_q: (B, 2).

    Design study: without clipped double Q, the bootstrap is the mean of the two heads.
    """
    bootstrap = (next_q.min(dim=-1).values if clipped_double_q else next_q.mean(dim=-1)) * target_reward_scale
    return ((R + ND * discount**horizon * bootstrap) / reward_scale).unsqueeze(-1)


def critic_loss(value: Value, zsa: Tensor, y: Tensor, *, loss_type: str = "huber") -> tuple[Tensor, Tensor, Metrics]:
    """Huber loss of both Q heads against y (docs/algorithm.md, Critic). Returns (loss, |Q - y| max over heads, metrics).

    Design study: loss_type "mse" replaces the Huber loss by the mean squared error.
    """
    q = value(zsa).float()
    if loss_type == "huber":
        loss = F.smooth_l1_loss(q, y.expand_as(q))
    else:
        loss = F.mse_loss(q, y.expand_as(q))
    td_error = (q.detach() - y).abs().max(dim=-1).values
    return loss, td_error, {
        "critic/loss": loss.detach(),
        "critic/q_mean": q.detach().mean(),
        "critic/q_max": q.detach().max(),
        "critic/q_min": q.detach().min(),
        "critic/target_mean": y.mean(),
    }


def actor_loss(
    encoder: Encoder, value: Value, policy: Policy, zs: Tensor, *, pre_activation_weight: float,
    gumbel: Tensor | None = None,
) -> tuple[Tensor, Metrics]:
    """-mean Q(g(zs, pi(zs))) over batch and both heads + weight * mean(pre^2) (docs/algorithm.md, Actor).

    Discrete actions: pi's Gumbel-softmax sample uses `gumbel` when given (Policy.forward)."""
    action, pre = policy(zs, gumbel)
    q = value(encoder.g(zs, action)).float()
    penalty = pre.float().pow(2).mean()
    # DR.Q drops the penalty (spec/DRQ.md, D7): with weight 0 it is logged but not added.
    loss = -q.mean() + pre_activation_weight * penalty if pre_activation_weight else -q.mean()
    return loss, {"actor/loss": loss.detach(), "actor/pre_activation": penalty.detach()}
