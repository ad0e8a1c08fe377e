"""ULD's update, written once for one seed or many (docs/algorithm.md, Update schedule, Encoder, Critic, Actor).

`UpdateSchedule.iteration` is the schedule: every `target_update_period` iterations the targets are
copied, the reward scales move on and the encoder trains for a burst; every iteration the value and
the policy take one step each. The three loss functions below are what each step computes, as
functions of the six networks (`nets`: anything with encoder, policy, value and their _target
attributes) and of the tensors one seed's step reads; the noise they use is an input, drawn by the
caller, so that the functions are pure.

Both agents run this one definition:

- `ULDAgent` (uld/agents/uld/agent.py) calls the functions on its own modules, for one seed;
- `StackedULD` (uld/agents/stacked.py) maps the same functions over a leading seed axis with
  ``torch.func.vmap`` (seed k's tensors swapped in by ``functional_call``), for many.

What differs between them is only how gradients reach the optimizers (one seed's modules, or stacked
tensors with a per-seed gradient clip) and where the noise comes from (torch's generator, or one per seed).
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch
from torch import Tensor

from uld.agents.uld import losses
from uld.agents.uld.config import ULDConfig

Autocast = Callable[[], AbstractContextManager[Any]]


def shift_augment(obs: Tensor, pad: int = 4, generator: torch.Generator | None = None) -> Tensor:
    """DrQ augmentation: replicate-pad by `pad`, then crop back at a random integer shift per image.

    obs: (..., C, H, W), any dtype and any strides on the leading dims; returns a contiguous tensor
    of the same shape and dtype. Each image gets its own shift (dy, dx) in [0, 2 * pad] along each
    axis, drawn in the order of the leading dims. Pad-then-crop is computed as one gather: output
    pixel (i, j) is input pixel (clamp(i + dy - pad), clamp(j + dx - pad)), which is exactly what
    replicate padding gives there. On uint8 frames this moves a quarter of the bytes of padding float
    images, and the gather writes the output in the order of the leading dims as given. The shifts
    come from `generator` (default: torch's global one; a seed of a many-seed agent has its own).
    """
    *lead, c, h, w = obs.shape
    dy = torch.randint(0, 2 * pad + 1, (*lead, 1), device=obs.device, generator=generator)
    dx = torch.randint(0, 2 * pad + 1, (*lead, 1), device=obs.device, generator=generator)
    rows = (dy + torch.arange(h, device=obs.device) - pad).clamp_(0, h - 1)  # (..., H)
    cols = (dx + torch.arange(w, device=obs.device) - pad).clamp_(0, w - 1)  # (..., W)
    index = (rows[..., :, None] * w + cols[..., None, :]).view(*lead, 1, h * w).expand(*lead, c, h * w)
    return obs.flatten(-2).gather(-1, index).view(*lead, c, h, w)


def prepare_obs(obs: Tensor, config: ULDConfig, pixels: bool, generator: torch.Generator | None = None) -> Tensor:
    """(B, T, *obs_shape) -> (T, B, *obs_shape): float vectors, or uint8 frames (shift-augmented
    unless the config turns augmentation off; the shifts come from `generator`).

    Time-major, so that the batch of one time step, or of all steps after the first, is a view
    of one block rather than a copy (for pixels the augmentation writes that order directly).
    """
    obs = obs.transpose(0, 1)
    if pixels:  # uint8 frames: the encoder scales them (docs/algorithm.md, Networks)
        return shift_augment(obs, generator=generator) if config.pixel_augmentation else obs
    return obs.float()


def _target_encoder(nets, config: ULDConfig):
    """The target encoder, or the online one in the design study's no-target-encoder variant."""
    return nets.encoder_target if config.target_encoder else nets.encoder


def encoder_step_loss(nets, config: ULDConfig, bins: Tensor, obs: Tensor, action: Tensor, reward: Tensor,
                      terminated: Tensor, use_done: Tensor, *, autocast: Autocast = nullcontext
                      ) -> tuple[Tensor, dict[str, Tensor]]:
    """The encoder's loss on one batch (docs/algorithm.md, Encoder): the latent model unrolled H_enc steps
    from f(s_0), against the target encoder's embeddings of s_1 .. s_H. obs: (H + 1, B, ...), prepared."""
    H = config.enc_horizon
    next_action = None
    with torch.no_grad(), autocast():
        target_encoder = _target_encoder(nets, config)
        target = target_encoder.f(obs[1:].flatten(0, 1)).unflatten(0, (H, obs.shape[1])).transpose(0, 1)
        if config.dynamics_target == "zsa":  # design study: the target is the next state-action embedding
            next_action = action[:, 1 : H + 1]
            target = target_encoder.g(target, next_action)
    with autocast():  # a block of its own: autocast's cache must not keep casts made without gradients
        return losses.encoder_loss(nets.encoder, obs0=obs[0], action=action[:, :H], reward=reward[:, :H],
                                   terminated=terminated[:, :H], target_zs=target, bins=bins,
                                   dynamics_weight=config.dynamics_weight, reward_weight=config.reward_weight,
                                   done_weight=config.done_weight, use_done=use_done, next_action=next_action,
                                   infonce_weight=config.infonce_weight,
                                   infonce_temperature=config.infonce_temperature,
                                   infonce_masking=config.infonce_masking)


def target_action(policy_target, zs_next: Tensor, noise: Tensor, config: ULDConfig, discrete: bool,
                  gumbel: Tensor | None = None) -> Tensor:
    """The target policy's action with clipped Gaussian smoothing (docs/algorithm.md, Critic); noise ~ N(0, 1),
    (B, action_dim). Discrete: the one-hot of the noisy argmax of the policy's Gumbel-softmax sample
    (`gumbel`: its Gumbel draws, drawn by the policy when not given)."""
    action, _ = policy_target(zs_next, gumbel)
    noise = (config.target_policy_noise * noise).clamp(-config.target_noise_clip, config.target_noise_clip)
    if discrete:  # a comparison rather than F.one_hot, which checks its indices on the host
        index = (action + noise).argmax(-1, keepdim=True)
        return (index == torch.arange(action.shape[-1], device=action.device)).float()
    return (action + noise).clamp(-1, 1)


def value_step_loss(nets, config: ULDConfig, obs: Tensor, action: Tensor, reward: Tensor, terminated: Tensor,
                    noise: Tensor, reward_scale: Tensor, target_reward_scale: Tensor, *, discrete: bool,
                    target_gumbel: Tensor | None = None, critic_trains_encoder: bool = False,
                    autocast: Autocast = nullcontext
                    ) -> tuple[Tensor, tuple[Tensor, Tensor, dict[str, Tensor]]]:
    """The critic's loss on one batch of H_Q-step subsequences (docs/algorithm.md, Critic).

    obs: (2, B, ...), the prepared observations of steps 0 and H_Q; noise: the target policy's N(0, 1)
    draws (and target_gumbel its Gumbel draws, for discrete actions). Returns (loss, (|Q - y| for the
    priorities, zs = f(s_0) detached for the policy step, metrics)).
    The encoder takes no gradient from this loss, except in the design study's variant without a
    model-based representation (critic_trains_encoder).
    """
    with torch.no_grad(), autocast():
        R, ND = losses.n_step_return(reward, terminated, config.discount)
        target_encoder = _target_encoder(nets, config)
        zs_next = target_encoder.f(obs[1])
        next_q = nets.value_target(target_encoder.g(zs_next, target_action(nets.policy_target, zs_next, noise,
                                                                           config, discrete, target_gumbel)))
        y = losses.critic_target(R, ND, next_q, discount=config.discount, horizon=config.q_horizon,
                                 reward_scale=reward_scale, target_reward_scale=target_reward_scale,
                                 clipped_double_q=config.clipped_double_q)
    with autocast():
        with torch.set_grad_enabled(critic_trains_encoder):
            zs = nets.encoder.f(obs[0])
            zsa = nets.encoder.g(zs, action[:, 0])
        loss, td_error, metrics = losses.critic_loss(nets.value, zsa, y, loss_type=config.critic_loss)
    return loss, (td_error, zs.detach(), metrics)


def policy_step_loss(nets, config: ULDConfig, zs: Tensor, gumbel: Tensor | None = None, *,
                     autocast: Autocast = nullcontext) -> tuple[Tensor, dict[str, Tensor]]:
    """The actor's loss (docs/algorithm.md, Actor) on the value step's zs (gumbel: the policy's Gumbel
    draws, for discrete actions): its gradient is meant for the policy only; the caller keeps it from the
    encoder's and the value's weights."""
    with autocast():  # a new autocast block: the value just changed
        return losses.actor_loss(nets.encoder, nets.value, nets.policy, zs,
                                 pre_activation_weight=config.pre_activation_weight, gumbel=gumbel)


class UpdateSchedule:
    """The update schedule of docs/algorithm.md, shared by the one-seed and the many-seed agent.

    An agent sets config, training_step, reward_scale and target_reward_scale (device tensors, () or
    (S,)), graphs (an UpdateGraphs, or None to run eagerly), and supplies the hooks below. `source` is
    what its updates draw from: one ReplayBuffer, or one per seed.
    """

    config: ULDConfig
    training_step: int
    reward_scale: Tensor
    target_reward_scale: Tensor
    graphs: Any

    def iteration(self, source) -> dict[str, Tensor]:
        """One training iteration: maybe target copies, new reward scales and an encoder burst; then value and policy.

        The schedule is decided on the host from the step count; the updates themselves read and
        write device tensors only (no value comes back to the host), so they can be replayed as CUDA
        graphs (uld/agents/uld/graphs.py).
        """
        cfg = self.config
        self.training_step += 1
        for buffer in self.buffers(source):
            buffer.refresh()  # the slots written since the last update enter the sum tree before any draw
        metrics: dict[str, Tensor] = {}
        if (self.training_step - 1) % cfg.target_update_period == 0:
            self._copy_targets()
            self.target_reward_scale.copy_(self.reward_scale)
            if cfg.reward_scaling:
                scales = torch.stack([buffer.reward_scale() for buffer in self.buffers(source)])
                self.reward_scale.copy_(scales.view_as(self.reward_scale))
            if cfg.model_based_representation:
                for _ in range(cfg.target_update_period):
                    metrics.update(self._run("encoder", self._update_encoder, source))
        metrics.update(self._run("value_policy", self._update_value_and_policy, source))
        return metrics

    def _run(self, kind: str, update: Callable[[Any], dict[str, Tensor]], source) -> dict[str, Tensor]:
        if self.graphs is None:
            return update(source)
        return self.graphs.run(kind, update, source)

    # ---- hooks --------------------------------------------------------------------------------

    def buffers(self, source) -> list:
        """The replays in `source`, in the order of the seeds."""
        raise NotImplementedError

    def trained_parameters(self) -> list[Tensor]:
        """Every tensor an optimizer steps (their gradients are reset before a CUDA graph is captured)."""
        raise NotImplementedError

    def own_generators(self) -> list[torch.Generator]:
        """The agent's own random generators an update draws from (besides the replays' and torch's default)."""
        raise NotImplementedError

    def _copy_targets(self) -> None:
        raise NotImplementedError

    def _update_encoder(self, source) -> dict[str, Tensor]:
        raise NotImplementedError

    def _update_value_and_policy(self, source) -> dict[str, Tensor]:
        raise NotImplementedError
