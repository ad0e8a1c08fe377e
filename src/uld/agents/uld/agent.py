"""The ULD agent: acting, and the update schedule of docs/algorithm.md (Update schedule, Acting)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from uld.agents.common import autocast, check_precision, frozen, load_parts_state_dict, parts_state_dict, target_copy
from uld.agents.compile import compile_networks
from uld.agents.uld import losses
from uld.agents.uld.config import ULDConfig
from uld.agents.uld.graphs import UpdateGraphs
from uld.agents.uld.networks import Encoder, Policy, Value
from uld.envs.base import EnvSpec
from uld.replay.buffer import ReplayBuffer
from uld.replay.frames import FrameStackBuffer


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


def _adamw(params, lr: float, weight_decay: float, capturable: bool = False) -> torch.optim.AdamW:
    """AdamW with the fused kernel: one pass over all parameters (6x faster than foreach on a CPU).

    capturable: the step counts live on the device, so that the step can be replayed in a CUDA graph.
    """
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, betas=(0.9, 0.999), eps=1e-8, fused=True,
                             capturable=capturable)


class ULDAgent:
    """ULD / MR.Q: model-based representation learning plus a TD3-style actor-critic on the embeddings."""

    def __init__(self, spec: EnvSpec, config: ULDConfig = ULDConfig(), device: str | torch.device = "cpu",
                 precision: str = "fp32", compiled: bool = False, cuda_graphs: bool = True):
        self.spec = spec
        self.precision = check_precision(precision)
        self.config = config.for_discrete() if spec.discrete else config
        self.device = torch.device(device)
        cfg = self.config
        self.encoder = Encoder(spec.obs_shape, spec.action_dim, cfg.zs_dim, cfg.zsa_dim, cfg.za_dim,
                               cfg.hidden_dim, cfg.num_bins, spec.pixels,
                               nonlinear_model=cfg.latent_model == "mlp").to(self.device)
        self.policy = Policy(cfg.zs_dim, spec.action_dim, cfg.hidden_dim, spec.discrete, cfg.gumbel_tau).to(self.device)
        self.value = Value(cfg.zsa_dim, cfg.hidden_dim, linear=cfg.value_model == "linear").to(self.device)
        self.encoder_target = target_copy(self.encoder)
        self.policy_target = target_copy(self.policy)
        self.value_target = target_copy(self.value)
        if compiled:
            # The Encoder has no forward of its own: its parts are compiled, except the single Linear
            # layers (action encoder, linear latent model). One GEMM has nothing to fuse, and every
            # Linear shares one code object, whose variants (two layers, batch shapes, dtypes under
            # autocast) would exceed torch.compile's recompile limit.
            compile_networks(*(part for encoder in (self.encoder, self.encoder_target)
                               for part in (encoder.state_encoder, encoder.state_action_encoder, encoder.model)
                               if not isinstance(part, torch.nn.Linear)),
                             self.policy, self.policy_target, self.value, self.value_target)
        # CUDA graphs replay the two kinds of update on a GPU (uld/agents/uld/graphs.py); elsewhere the
        # eager update runs as written.
        self.graphs = UpdateGraphs(self.device) if cuda_graphs and self.device.type == "cuda" else None
        capturable = self.graphs is not None
        self.encoder_optimizer = _adamw(self.encoder.parameters(), cfg.encoder_lr, cfg.weight_decay, capturable)
        self.value_optimizer = _adamw(self.value.parameters(), cfg.value_lr, cfg.weight_decay, capturable)
        self.policy_optimizer = _adamw(self.policy.parameters(), cfg.policy_lr, cfg.weight_decay, capturable)
        # The critic gives the encoder no gradient (docs/algorithm.md, Critic), except in the design
        # study's variant without a model-based representation, where the critic loss trains it.
        self.critic_trains_encoder = not cfg.model_based_representation
        self._value_step_optimizers = [self.value_optimizer]
        if self.critic_trains_encoder:
            self._value_step_optimizers.append(self.encoder_optimizer)
        self.bins = losses.reward_bins(cfg.num_bins, cfg.bin_range).to(self.device)
        self.training_step = 0
        # Device tensors, so that an update reads them without a host sync (and a graph reads the current value).
        self.reward_scale = torch.ones((), dtype=torch.float64, device=self.device)
        self.target_reward_scale = torch.ones((), dtype=torch.float64, device=self.device)
        self._target_pairs = [
            (list(target.parameters()) + list(target.buffers()), list(online.parameters()) + list(online.buffers()))
            for online, target in ((self.encoder, self.encoder_target), (self.policy, self.policy_target),
                                   (self.value, self.value_target))
        ]

    # ---- acting -------------------------------------------------------------------------------

    @torch.no_grad()
    def act(self, obs: np.ndarray, explore: bool) -> np.ndarray | int:
        """The action for one observation: in [-1, 1] (continuous) or an index (discrete)."""
        obs_t = torch.as_tensor(obs, device=self.device).unsqueeze(0)
        zs = self.encoder.f(obs_t.float() if not self.spec.pixels else obs_t)
        action, pre = self.policy(zs)
        sigma = self.config.exploration_noise
        if self.spec.discrete:
            if not explore:
                return int(pre.argmax(-1))  # greedy evaluation (docs/algorithm.md, difference 5)
            return int((action + sigma * torch.randn_like(action)).argmax(-1))
        if explore:
            action = (action + sigma * torch.randn_like(action)).clamp(-1, 1)
        return action[0].cpu().numpy()

    # ---- learning -----------------------------------------------------------------------------

    def _autocast(self):
        """bf16 autocast for one forward pass when asked for (agents/common.py); not cached inside CUDA graphs."""
        return autocast(self.device, self.precision, cache=self.graphs is None)

    def update(self, buffer: ReplayBuffer) -> dict[str, Tensor]:
        """One training iteration: maybe a target copy and encoder burst, then value and policy.

        The schedule is decided on the host from the step count; the updates themselves read and
        write device tensors only (no value comes back to the host), so they can be replayed as CUDA
        graphs: `self.graphs.run` replays the captured update, or runs the function as written.
        """
        cfg = self.config
        self.training_step += 1
        buffer.refresh()  # the slots written since the last update enter the sum tree before any draw
        run = self.graphs.run if self.graphs is not None else (lambda kind, update, buffer: update(buffer))
        metrics: dict[str, Tensor] = {}
        if (self.training_step - 1) % cfg.target_update_period == 0:
            self._copy_targets()
            self.target_reward_scale.copy_(self.reward_scale)
            if cfg.reward_scaling:
                self.reward_scale.copy_(buffer.reward_scale())
            if cfg.model_based_representation:
                for _ in range(cfg.target_update_period):
                    metrics.update(run("encoder", self._update_encoder, buffer))
        metrics.update(run("value_policy", self._update_value_and_policy, buffer))
        return metrics

    def _copy_targets(self) -> None:
        """Hard target copies (docs/algorithm.md, Update schedule), in place: the targets keep their tensors,
        which a CUDA graph reads by address."""
        for target, online in self._target_pairs:
            torch._foreach_copy_(target, online)

    @property
    def _encoder_for_targets(self) -> Encoder:
        """The target encoder, or the online one in the design study's no-target-encoder variant."""
        return self.encoder_target if self.config.target_encoder else self.encoder

    def _prepare_obs(self, obs: Tensor) -> Tensor:
        """(B, T, *obs_shape) -> (T, B, *obs_shape): float vectors, or uint8 frames (shift-augmented
        unless the config turns augmentation off).

        Time-major, so that the batch of one time step, or of all steps after the first, is a view
        of one block rather than a copy (for pixels the augmentation writes that order directly).
        """
        obs = obs.transpose(0, 1)
        if self.spec.pixels:  # uint8 frames: the encoder scales them (docs/algorithm.md, Networks)
            return shift_augment(obs) if self.config.pixel_augmentation else obs
        return obs.float()

    def _update_encoder(self, buffer: ReplayBuffer) -> dict[str, Tensor]:
        cfg = self.config
        H = cfg.enc_horizon
        batch = buffer.sample(cfg.batch_size, cfg.encoder_window)
        obs = self._prepare_obs(batch.obs[:, : H + 1])  # (H + 1, B, ...)
        next_action = None
        with torch.no_grad(), self._autocast():
            target_encoder = self._encoder_for_targets
            target = target_encoder.f(obs[1:].flatten(0, 1)).unflatten(0, (H, obs.shape[1])).transpose(0, 1)
            if cfg.dynamics_target == "zsa":  # design study: the target is the next state-action embedding
                next_action = batch.action[:, 1 : H + 1]
                target = target_encoder.g(target, next_action)
        with self._autocast():
            loss, metrics = losses.encoder_loss(
                self.encoder, obs0=obs[0], action=batch.action[:, :H], reward=batch.reward[:, :H],
                terminated=batch.terminated[:, :H], target_zs=target, bins=self.bins,
                dynamics_weight=cfg.dynamics_weight, reward_weight=cfg.reward_weight, done_weight=cfg.done_weight,
                use_done=buffer.ever_terminated, next_action=next_action,
            )
        self.encoder_optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.encoder_optimizer.step()
        return metrics

    def _target_action(self, zs_next: Tensor) -> Tensor:
        cfg = self.config
        action, pre = self.policy_target(zs_next)
        noise = (cfg.target_policy_noise * torch.randn_like(action)).clamp(-cfg.target_noise_clip, cfg.target_noise_clip)
        if self.spec.discrete:
            return F.one_hot((action + noise).argmax(-1), self.spec.action_dim).float()
        return (action + noise).clamp(-1, 1)

    def _update_value_and_policy(self, buffer: ReplayBuffer) -> dict[str, Tensor]:
        """A value step, then a policy step, on one batch of H_Q-step subsequences; then the batch's priorities."""
        batch = buffer.sample(self.config.batch_size, self.config.q_horizon)
        zs, td_error, metrics = self._value_step(batch)
        metrics.update(self._policy_step(zs))
        buffer.update_priorities(batch.index, td_error)
        return metrics

    def _value_step(self, batch) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        """The critic's update (docs/algorithm.md, Critic). Returns zs = f(s_0), detached, for the policy
        step, and |Q - y| for the priorities."""
        cfg = self.config
        # Steps 0 and q_horizon of the q_horizon + 1 sampled, as a strided view rather than a copy.
        obs = self._prepare_obs(batch.obs[:, :: cfg.q_horizon])  # (2, B, ...)
        with torch.no_grad(), self._autocast():
            R, ND = losses.n_step_return(batch.reward, batch.terminated, cfg.discount)
            target_encoder = self._encoder_for_targets
            zs_next = target_encoder.f(obs[1])
            next_q = self.value_target(target_encoder.g(zs_next, self._target_action(zs_next)))
            y = losses.critic_target(R, ND, next_q, discount=cfg.discount, horizon=cfg.q_horizon,
                                     reward_scale=self.reward_scale, target_reward_scale=self.target_reward_scale,
                                     clipped_double_q=cfg.clipped_double_q)
        with self._autocast():
            with torch.set_grad_enabled(self.critic_trains_encoder):
                zs = self.encoder.f(obs[0])
                zsa = self.encoder.g(zs, batch.action[:, 0])
            value_loss, td_error, metrics = losses.critic_loss(self.value, zsa, y, loss_type=cfg.critic_loss)
        for optimizer in self._value_step_optimizers:
            optimizer.zero_grad(set_to_none=True)
        value_loss.backward()
        torch.nn.utils.clip_grad_norm_(self.value.parameters(), cfg.value_grad_clip, foreach=True)
        for optimizer in self._value_step_optimizers:
            optimizer.step()
        return zs.detach(), td_error, metrics

    def _policy_step(self, zs: Tensor) -> dict[str, Tensor]:
        """The actor's update (docs/algorithm.md, Actor): its gradient flows through g and Q to the action
        only, so the encoder and the value are frozen rather than given weight gradients to discard."""
        with frozen(self.encoder, self.value), self._autocast():  # a new autocast block: the value just changed
            policy_loss, metrics = losses.actor_loss(self.encoder, self.value, self.policy, zs,
                                                     pre_activation_weight=self.config.pre_activation_weight)
            self.policy_optimizer.zero_grad(set_to_none=True)
            policy_loss.backward()
        self.policy_optimizer.step()
        return metrics

    # ---- state --------------------------------------------------------------------------------

    _MODULES = ("encoder", "policy", "value", "encoder_target", "policy_target", "value_target",
                "encoder_optimizer", "value_optimizer", "policy_optimizer")

    def state_dict(self) -> dict:
        """Networks, targets, optimizers, reward scales and counters."""
        state = parts_state_dict(self, self._MODULES)
        state["counters"] = {"training_step": self.training_step, "reward_scale": self.reward_scale.cpu().clone(),
                             "target_reward_scale": self.target_reward_scale.cpu().clone()}
        return state

    def load_state_dict(self, state: dict) -> None:
        load_parts_state_dict(self, state, self._MODULES)
        counters = state["counters"]
        self.training_step = int(counters["training_step"])
        self.reward_scale.copy_(torch.as_tensor(counters["reward_scale"]))
        self.target_reward_scale.copy_(torch.as_tensor(counters["target_reward_scale"]))
        if self.graphs is not None:
            self.graphs.reset()  # the optimizers' state tensors were replaced: capture again


def make_buffer(spec: EnvSpec, config: ULDConfig, seed: int, device: str | torch.device = "cpu") -> ReplayBuffer:
    """The replay ULD learns from: LAP-prioritized H-step subsequences (docs/algorithm.md, Replay), on `device`.

    Pixel observations go to a FrameStackBuffer, which stores each frame once and rebuilds the stacks.
    """
    options = dict(prioritized=config.prioritized, alpha=config.alpha, min_priority=config.min_priority, seed=seed,
                   device=device)
    if spec.pixels:
        return FrameStackBuffer(spec.obs_shape, spec.action_dim, config.buffer_capacity, config.horizon,
                                history=spec.frame_history, **options)
    return ReplayBuffer(spec.obs_shape, spec.action_dim, config.buffer_capacity, config.horizon,
                        obs_dtype=torch.float32, **options)
