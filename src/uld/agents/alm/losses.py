"""ALM losses, written as in docs/alm.md (One training iteration): functions from networks and tensors
to a loss and metrics.

Index convention for a batch of sequences: obs[:, t] is s_t; action[:, t] is a_t; reward[:, t] and
terminated[:, t] are r_t and d_t, the outcome of taking a_t in s_t. Each loss decides which networks
it trains: the others are used frozen (their parameters get no gradient, their inputs still do) or
under no_grad, so calling backward() on a loss fills .grad on exactly the networks it updates.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from uld.agents.alm.networks import (
    Actor,
    Classifier,
    Critic,
    Encoder,
    LatentModel,
    Reward,
    truncated_normal_sample,
)
from uld.agents.common import frozen

Metrics = dict[str, Tensor]


def gaussian_kl(mean_p: Tensor, std_p: Tensor, mean_q: Tensor, std_q: Tensor) -> Tensor:
    """KL(p || q) of two diagonal Gaussians, summed over the last (latent) dim."""
    var_p, var_q = std_p.pow(2), std_q.pow(2)
    kl = torch.log(std_q / std_p) + (var_p + (mean_p - mean_q).pow(2)) / (2 * var_q) - 0.5
    return kl.sum(-1)


def lambda_returns(reward: Tensor, next_value: Tensor, discount: float, td_lambda: float) -> Tensor:
    """G_K = v_K; G_t = r_t + γ((1 − λ) v_{t+1} + λ G_{t+1}) for t < K (docs/alm.md, Actor).

    reward[:, t] = r̂_t and next_value[:, t] = v_{t+1}, both (B, K); returns G_0..G_{K-1}, (B, K).
    """
    horizon = reward.shape[1]
    G = next_value[:, -1]
    returns = []
    for t in reversed(range(horizon)):
        G = reward[:, t] + discount * ((1 - td_lambda) * next_value[:, t] + td_lambda * G)
        returns.append(G)
    return torch.stack(returns[::-1], dim=1)


def classifier_labels(batch_size: int, device: torch.device | str = "cpu") -> Tensor:
    """1 (real) for the first B - B//2 rows, 0 (model-generated) for the last B//2 rows."""
    labels = torch.zeros(batch_size, dtype=torch.long, device=device)
    labels[: batch_size - batch_size // 2] = 1
    return labels


def model_loss(
    *,
    encoder: Encoder,
    encoder_target: Encoder,
    model: LatentModel,
    reward: Reward,
    critic: Critic,
    actor: Actor,
    obs: Tensor,
    action: Tensor,
    terminated: Tensor,
    std: float,
    clip: float,
) -> tuple[Tensor, Metrics]:
    """Representation + model: the lower bound on a K-step sequence, minimized over e and m (docs/alm.md, step 1).

    L = Σ_t [KL(m(z_t, a_t) || ē(s_{t+1})) − R(z_t, a_t)] − min Q(z_K, a_K), with z_0 ~ e(s_0) and
    z_{t+1} ~ m(z_t, a_t), both reparameterized. R and Q are frozen, π is used without gradient.
    Steps after a terminal are masked (their observations belong to the next episode), and so is
    the value at z_K when the episode ended inside the sequence.
    """
    horizon = action.shape[1]
    with torch.no_grad():
        target = encoder_target(obs[:, 1:])
    with frozen(reward, critic):
        z = encoder(obs[:, 0]).rsample()
        alive = torch.ones_like(terminated[:, 0])
        kl_sum = reward_sum = torch.zeros_like(alive)
        for t in range(horizon):
            prior = model(z, action[:, t])
            kl = gaussian_kl(prior.mean.float(), prior.std.float(), target.mean[:, t].float(), target.std[:, t].float())
            kl_sum = kl_sum + alive * kl
            reward_sum = reward_sum + alive * reward(z, action[:, t]).float()
            alive = alive * (1.0 - terminated[:, t])
            z = prior.rsample()
        with torch.no_grad():
            final_action = truncated_normal_sample(actor(z), std, clip)
        value = critic.min_q(z, final_action).float()
    loss = (kl_sum - reward_sum - alive * value).mean()
    return loss, {
        "model/loss": loss.detach(),
        "model/kl": kl_sum.detach().mean() / horizon,
        "model/reward": reward_sum.detach().mean() / horizon,
        "model/value": value.detach().mean(),
    }


def reward_classifier_loss(
    *,
    encoder_target: Encoder,
    model: LatentModel,
    reward: Reward,
    classifier: Classifier,
    obs: Tensor,
    action: Tensor,
    reward_target: Tensor,
    next_obs: Tensor,
) -> tuple[Tensor, Metrics]:
    """Reward MSE on real (z, a, r) plus the classifier's cross-entropy (docs/alm.md, step 2).

    Latents come from ē without gradient. The classifier sees the first half of the batch with the
    real next latent z' ~ ē(s') (label 1) and the second half with a model sample z' ~ m(z, a) (label 0).
    """
    batch_size = obs.shape[0]
    with torch.no_grad():
        z = encoder_target(obs).rsample()
        next_z_real = encoder_target(next_obs).rsample()
        next_z_model = model(z, action).rsample()
    reward_mse = (reward(z, action).float() - reward_target).pow(2).mean()
    labels = classifier_labels(batch_size, obs.device)
    next_z = torch.where(labels.bool()[:, None], next_z_real, next_z_model)
    logits = classifier(z, action, next_z).float()
    classifier_ce = F.cross_entropy(logits, labels)
    loss = reward_mse + classifier_ce
    return loss, {
        "reward/mse": reward_mse.detach(),
        "classifier/ce": classifier_ce.detach(),
        "classifier/accuracy": (logits.detach().argmax(-1) == labels).float().mean(),
    }


def critic_loss(
    *,
    encoder_target: Encoder,
    critic: Critic,
    critic_target: Critic,
    actor: Actor,
    obs: Tensor,
    action: Tensor,
    reward: Tensor,
    terminated: Tensor,
    next_obs: Tensor,
    std: float,
    clip: float,
    discount: float,
) -> tuple[Tensor, Metrics]:
    """Mean of both Q heads' MSE to y = r + γ(1 − d) min Q̄(z', a'), on real data (docs/alm.md, step 3)."""
    with torch.no_grad():
        z = encoder_target(obs).rsample()
        next_z = encoder_target(next_obs).rsample()
        next_action = truncated_normal_sample(actor(next_z), std, clip)
        y = reward + discount * (1.0 - terminated) * critic_target.min_q(next_z, next_action).float()
    q = critic(z, action).float()
    loss = (q - y[:, None]).pow(2).mean()
    return loss, {
        "critic/loss": loss.detach(),
        "critic/q_mean": q.detach().mean(),
        "critic/target_mean": y.mean(),
    }


def actor_loss(
    *,
    encoder_target: Encoder,
    model: LatentModel,
    reward: Reward,
    classifier: Classifier,
    critic: Critic,
    actor: Actor,
    obs: Tensor,
    std: float,
    clip: float,
    discount: float,
    td_lambda: float,
    horizon: int,
    classifier_weight: float,
) -> tuple[Tensor, Metrics]:
    """−mean over t < K and batch of γ^t G_t on a K-step imagined rollout (docs/alm.md, step 4).

    z_0 ~ ē(s) without gradient; a_t ~ π(z_t.detach()); z_{t+1} ~ m(z_t, a_t), so the gradient of
    later rewards and values reaches earlier actions through the frozen model. r̂_t = R(z_t, a_t) +
    λ_c·bonus(z_t, a_t, z_{t+1}); v_t = min Q(z_t, a_t.detach()).
    """
    with torch.no_grad():
        z = encoder_target(obs).rsample()
    rewards, bonuses, next_values = [], [], []
    with frozen(model, reward, classifier, critic):
        a = truncated_normal_sample(actor(z), std, clip)
        for _ in range(horizon):
            next_z = model(z, a).rsample()
            bonus = classifier.bonus(z, a, next_z).float()
            rewards.append(reward(z, a).float() + classifier_weight * bonus)
            bonuses.append(bonus)
            # a_{t+1} serves twice: detached in v_{t+1}, with its gradient in the next model step.
            z, a = next_z, truncated_normal_sample(actor(next_z.detach()), std, clip)
            next_values.append(critic.min_q(z, a.detach()).float())
        G = lambda_returns(torch.stack(rewards, 1), torch.stack(next_values, 1), discount, td_lambda)
    weights = discount ** torch.arange(horizon, dtype=G.dtype, device=G.device)
    loss = -(weights * G).mean()
    return loss, {
        "actor/loss": loss.detach(),
        "actor/bonus": torch.stack(bonuses).detach().mean(),
        "actor/return": G.detach()[:, 0].mean(),
    }
