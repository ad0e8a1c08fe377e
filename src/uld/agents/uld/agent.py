"""The ULD agent: acting, and the update schedule of docs/algorithm.md (Update schedule, Acting)."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from uld.agents.common import (
    autocast,
    check_precision,
    frozen,
    load_parts_state_dict,
    output_dtype,
    parts_state_dict,
    target_copy,
)
from uld.agents.compile import compile_networks
from uld.agents.uld import losses
from uld.agents.uld.config import ULDConfig
from uld.agents.uld.graphs import CudaGraphBackend, UpdateGraphs
from uld.agents.uld.networks import Encoder, Policy, Value, gumbel_noise
from uld.agents.uld.update import (
    UpdateSchedule,
    encoder_step_loss,
    policy_step_loss,
    prepare_obs,
    target_action,
    value_step_loss,
)
from uld.agents.uld.update import shift_augment as shift_augment  # re-exported: part of this module's API
from uld.envs.base import EnvSpec
from uld.replay.buffer import ReplayBuffer
from uld.replay.frames import FrameStackBuffer


def _adamw(params, lr: float, weight_decay: float, capturable: bool = False) -> torch.optim.AdamW:
    """AdamW with the fused kernel: one pass over all parameters (6x faster than foreach on a CPU).

    capturable: the step counts live on the device, so that the step can be replayed in a CUDA graph.
    """
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, betas=(0.9, 0.999), eps=1e-8, fused=True,
                             capturable=capturable)


def restore_optimizer_flags(optimizers: list[torch.optim.Optimizer]) -> None:
    """Give loaded optimizers back the flags they were made with (capturable, fused, ...).

    Optimizer.load_state_dict replaces each param group with the saved one, flags included: a checkpoint
    written with --no-cuda-graphs or on a CPU would turn `capturable` off in a run that captures graphs
    (the capture then fails), and one written under graphs would keep it on in an eager run. The step
    counts go to the parameters' device, where a capturable or fused step reads them.
    """
    for optimizer in optimizers:
        for group in optimizer.param_groups:
            for flag in ("capturable", "fused", "foreach", "differentiable"):
                group[flag] = optimizer.defaults[flag]
            for param in group["params"]:
                state = optimizer.state.get(param, {})
                if isinstance(state.get("step"), Tensor) and (group["capturable"] or group["fused"]):
                    state["step"] = state["step"].to(param.device, torch.float32)


class HostToDevice:
    """Copies an observation from the host to the device without making the host wait.

    From pageable memory a CUDA copy blocks until the queued work (the previous update's graphs) is
    done; from pinned memory it is queued like a kernel. The pinned tensor is reused: the caller reads
    its result back before it copies again, so the previous copy from it has finished by then.
    """

    def __init__(self, device: torch.device):
        self.device = device
        self._pinned: Tensor | None = None

    def __call__(self, array) -> Tensor:
        host = torch.as_tensor(np.asarray(array))
        if self.device.type != "cuda":
            return host.to(self.device)
        if self._pinned is None or self._pinned.shape != host.shape or self._pinned.dtype != host.dtype:
            self._pinned = torch.empty(host.shape, dtype=host.dtype, pin_memory=True)
        self._pinned.copy_(host)
        return self._pinned.to(self.device, non_blocking=True)


class ULDAgent(UpdateSchedule):
    """ULD / MR.Q: model-based representation learning plus a TD3-style actor-critic on the embeddings.

    One seed: the update of uld/agents/uld/update.py run on this agent's own modules (StackedULD maps
    the same update over many seeds).
    """

    def __init__(self, spec: EnvSpec, config: ULDConfig = ULDConfig(), device: str | torch.device = "cpu",
                 precision: str = "fp32", compiled: bool = False, cuda_graphs: bool = True,
                 graph_backend: CudaGraphBackend | None = None):
        """graph_backend: the torch.cuda calls of the graphs (a seam: tests run the graphed path on a CPU
        through a stand-in; given, graphs are on whatever the device)."""
        self.spec = spec
        self.precision = check_precision(precision)
        self.config = config.for_discrete() if spec.discrete else config
        self.device = torch.device(device)
        cfg = self.config
        self.encoder = Encoder(spec.obs_shape, spec.action_dim, cfg.zs_dim, cfg.zsa_dim, cfg.za_dim,
                               cfg.encoder_width, cfg.num_bins, spec.pixels,
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
        graphed = graph_backend is not None or (cuda_graphs and self.device.type == "cuda")
        self.graphs = UpdateGraphs(self, graph_backend) if graphed else None
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
        self._host_to_device = HostToDevice(self.device)
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
        obs_t = self._host_to_device(obs).unsqueeze(0)
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
        """One training iteration on `buffer` (UpdateSchedule.iteration); metrics as device tensors."""
        return self.iteration(buffer)

    def buffers(self, source: ReplayBuffer) -> list[ReplayBuffer]:
        return [source]

    def trained_parameters(self) -> list[Tensor]:
        return [p for module in (self.encoder, self.policy, self.value) for p in module.parameters()]

    def own_generators(self) -> list[torch.Generator]:
        return []  # the noise comes from torch's default generator

    def _copy_targets(self) -> None:
        """Hard target copies (docs/algorithm.md, Update schedule), in place: the targets keep their tensors,
        which a CUDA graph reads by address."""
        for target, online in self._target_pairs:
            torch._foreach_copy_(target, online)

    def _prepare_obs(self, obs: Tensor) -> Tensor:
        return prepare_obs(obs, self.config, self.spec.pixels)

    def _gumbel(self, batch_size: int) -> Tensor | None:
        """The discrete policy's Gumbel draws for a batch (None for continuous actions)."""
        if not self.spec.discrete:
            return None
        return gumbel_noise((batch_size, self.spec.action_dim), self.device, dtype=output_dtype(self.precision))

    def _target_action(self, zs_next: Tensor) -> Tensor:
        gumbel = self._gumbel(zs_next.shape[0])
        noise = torch.randn(zs_next.shape[0], self.spec.action_dim, device=self.device, dtype=output_dtype(self.precision))
        return target_action(self.policy_target, zs_next, noise, self.config, self.spec.discrete, gumbel)

    def _update_encoder(self, buffer: ReplayBuffer) -> dict[str, Tensor]:
        cfg = self.config
        batch = buffer.sample(cfg.batch_size, cfg.encoder_window)
        obs = self._prepare_obs(batch.obs[:, : cfg.enc_horizon + 1])  # (H + 1, B, ...)
        loss, metrics = encoder_step_loss(self, cfg, self.bins, obs, batch.action, batch.reward, batch.terminated,
                                          buffer.ever_terminated, autocast=self._autocast)
        self.encoder_optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.encoder_optimizer.step()
        return metrics

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
        gumbel = self._gumbel(cfg.batch_size)  # the target policy's Gumbel draws, then its smoothing noise
        noise = torch.randn(cfg.batch_size, self.spec.action_dim, device=self.device, dtype=output_dtype(self.precision))
        value_loss, (td_error, zs, metrics) = value_step_loss(
            self, cfg, obs, batch.action, batch.reward, batch.terminated, noise, self.reward_scale,
            self.target_reward_scale, discrete=self.spec.discrete, target_gumbel=gumbel,
            critic_trains_encoder=self.critic_trains_encoder, autocast=self._autocast)
        for optimizer in self._value_step_optimizers:
            optimizer.zero_grad(set_to_none=True)
        value_loss.backward()
        if cfg.value_grad_clip is not None:  # DR.Q removes the clip (spec/DRQ.md, D6)
            torch.nn.utils.clip_grad_norm_(self.value.parameters(), cfg.value_grad_clip, foreach=True)
        for optimizer in self._value_step_optimizers:
            optimizer.step()
        return zs, td_error, metrics

    def _policy_step(self, zs: Tensor) -> dict[str, Tensor]:
        """The actor's update (docs/algorithm.md, Actor): its gradient flows through g and Q to the action
        only, so the encoder and the value are frozen rather than given weight gradients to discard."""
        with frozen(self.encoder, self.value):
            policy_loss, metrics = policy_step_loss(self, self.config, zs, self._gumbel(self.config.batch_size),
                                                    autocast=self._autocast)
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
        restore_optimizer_flags([self.encoder_optimizer, self.value_optimizer, self.policy_optimizer])
        if self.graphs is not None:
            self.graphs.reset()  # the optimizers' state tensors were replaced: capture again


def make_buffer(spec: EnvSpec, config: ULDConfig, seed: int, device: str | torch.device = "cpu") -> ReplayBuffer:
    """The replay ULD learns from: LAP-prioritized H-step subsequences (docs/algorithm.md, Replay), on `device`,
    faded by age when the config asks for it (DR.Q).

    Pixel observations go to a FrameStackBuffer, which stores each frame once and rebuilds the stacks.
    """
    # DR.Q fades prioritized sampling only (spec/DRQ.md, D3): a uniform replay stays uniform.
    fade = config.fade if config.prioritized else None
    options = dict(prioritized=config.prioritized, alpha=config.alpha, min_priority=config.min_priority, seed=seed,
                   device=device, fade=fade, fade_floor=config.fade_floor)
    if spec.pixels:
        return FrameStackBuffer(spec.obs_shape, spec.action_dim, config.buffer_capacity, config.horizon,
                                history=spec.frame_history, **options)
    return ReplayBuffer(spec.obs_shape, spec.action_dim, config.buffer_capacity, config.horizon,
                        obs_dtype=torch.float32, **options)
