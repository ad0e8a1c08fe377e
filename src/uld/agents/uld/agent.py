"""The ULD agent: acting, and the update schedule of spec/ULD.md (Update schedule, Acting)."""

from __future__ import annotations

import copy

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

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
        if precision not in ("fp32", "bf16"):
            raise ValueError(f"precision must be fp32 or bf16, got {precision!r}")
        self.spec = spec
        self.precision = precision
        self.config = config.for_discrete() if spec.discrete else config
        self.device = torch.device(device)
        cfg = self.config
        self.encoder = Encoder(spec.obs_shape, spec.action_dim, cfg.zs_dim, cfg.zsa_dim, cfg.za_dim,
                               cfg.hidden_dim, cfg.num_bins, spec.pixels,
                               nonlinear_model=cfg.latent_model == "mlp").to(self.device)
        self.policy = Policy(cfg.zs_dim, spec.action_dim, cfg.hidden_dim, spec.discrete, cfg.gumbel_tau).to(self.device)
        self.value = Value(cfg.zsa_dim, cfg.hidden_dim, linear=cfg.value_model == "linear").to(self.device)
        self.encoder_target = copy.deepcopy(self.encoder).requires_grad_(False)
        self.policy_target = copy.deepcopy(self.policy).requires_grad_(False)
        self.value_target = copy.deepcopy(self.value).requires_grad_(False)
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
                return int(pre.argmax(-1))  # greedy evaluation (spec: "correct" item 5)
            return int((action + sigma * torch.randn_like(action)).argmax(-1))
        if explore:
            action = (action + sigma * torch.randn_like(action)).clamp(-1, 1)
        return action[0].cpu().numpy()

    # ---- learning -----------------------------------------------------------------------------

    def _autocast(self):
        """bf16 autocast for the matmuls when asked for (losses and optimizer states stay fp32).

        Autocast keeps the bf16 copies of the weights it made until its block exits, so each block
        must end before the optimizer step that changes those weights: one block per forward pass.
        """
        # Inside a CUDA graph the cast weights are not cached: a cached copy would be baked into the graph.
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.precision == "bf16",
                              cache_enabled=self.graphs is None)

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
        """Hard target copies (spec: Update schedule), in place: the targets keep their tensors."""
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
        if self.spec.pixels:  # uint8 frames: the encoder scales them (spec: Networks, pixel encoder)
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
                self.encoder, obs[0], batch.action[:, :H], batch.reward[:, :H], batch.terminated[:, :H], target,
                self.bins, cfg.dynamics_weight, cfg.reward_weight, cfg.done_weight, buffer.ever_terminated,
                next_action,
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
        cfg = self.config
        batch = buffer.sample(cfg.batch_size, cfg.q_horizon)
        # Steps 0 and q_horizon of the q_horizon + 1 sampled, as a strided view rather than a copy.
        obs = self._prepare_obs(batch.obs[:, :: cfg.q_horizon])  # (2, B, ...)
        with torch.no_grad(), self._autocast():
            R, ND = losses.n_step_return(batch.reward, batch.terminated, cfg.discount)
            target_encoder = self._encoder_for_targets
            zs_next = target_encoder.f(obs[1])
            next_q = self.value_target(target_encoder.g(zs_next, self._target_action(zs_next)))
            y = losses.critic_target(R, ND, next_q, cfg.discount, cfg.q_horizon,
                                     self.reward_scale, self.target_reward_scale, cfg.clipped_double_q)
        # The critic gives the encoder no gradient, except in the design study's variant without a
        # model-based representation, where the critic loss is what trains the encoder.
        with self._autocast():
            with torch.set_grad_enabled(not cfg.model_based_representation):
                zs = self.encoder.f(obs[0])
                zsa = self.encoder.g(zs, batch.action[:, 0])
            value_loss, td_error, metrics = losses.critic_loss(self.value, zsa, y, cfg.critic_loss)
        zs = zs.detach()

        self.value_optimizer.zero_grad(set_to_none=True)
        if not cfg.model_based_representation:
            self.encoder_optimizer.zero_grad(set_to_none=True)
        value_loss.backward()
        torch.nn.utils.clip_grad_norm_(self.value.parameters(), cfg.value_grad_clip, foreach=True)
        self.value_optimizer.step()
        if not cfg.model_based_representation:
            self.encoder_optimizer.step()

        # The actor's gradient flows through g and Q to the action only: no weight gradients there.
        self.encoder.requires_grad_(False)
        self.value.requires_grad_(False)
        with self._autocast():  # a new block: the value weights changed in the step above
            policy_loss, actor_metrics = losses.actor_loss(self.encoder, self.value, self.policy, zs,
                                                           cfg.pre_activation_weight)
        self.policy_optimizer.zero_grad(set_to_none=True)
        policy_loss.backward()
        self.policy_optimizer.step()
        self.encoder.requires_grad_(True)
        self.value.requires_grad_(True)

        buffer.update_priorities(batch.index, td_error)
        metrics.update(actor_metrics)
        return metrics

    # ---- state --------------------------------------------------------------------------------

    _MODULES = ("encoder", "policy", "value", "encoder_target", "policy_target", "value_target",
                "encoder_optimizer", "value_optimizer", "policy_optimizer")

    def state_dict(self) -> dict:
        """Networks, targets, optimizers, reward scales and counters."""
        state = {name: getattr(self, name).state_dict() for name in self._MODULES}
        state["counters"] = {"training_step": self.training_step, "reward_scale": self.reward_scale.cpu().clone(),
                             "target_reward_scale": self.target_reward_scale.cpu().clone()}
        return state

    def load_state_dict(self, state: dict) -> None:
        for name in self._MODULES:
            getattr(self, name).load_state_dict(state[name])
        counters = state["counters"]
        self.training_step = int(counters["training_step"])
        self.reward_scale.copy_(torch.as_tensor(counters["reward_scale"]))
        self.target_reward_scale.copy_(torch.as_tensor(counters["target_reward_scale"]))
        if self.graphs is not None:
            self.graphs.reset()  # the optimizers' state tensors were replaced: capture again


def make_buffer(spec: EnvSpec, config: ULDConfig, seed: int, device: str | torch.device = "cpu") -> ReplayBuffer:
    """The replay ULD learns from: LAP-prioritized H-step subsequences (spec: Replay buffer), on `device`.

    Pixel observations go to a FrameStackBuffer, which stores each frame once and rebuilds the stacks.
    """
    options = dict(prioritized=config.prioritized, alpha=config.alpha, min_priority=config.min_priority, seed=seed,
                   device=device)
    if spec.pixels:
        return FrameStackBuffer(spec.obs_shape, spec.action_dim, config.buffer_capacity, config.horizon,
                                history=spec.frame_history, **options)
    return ReplayBuffer(spec.obs_shape, spec.action_dim, config.buffer_capacity, config.horizon,
                        obs_dtype=torch.float32, **options)
