"""Many seeds of ULD in one process: one network definition mapped over a leading seed axis.

The S seeds' parameters are stacked, (S, *shape) per tensor (``torch.func.stack_module_state``), and
every forward and backward pass is the single-seed one (uld/agents/uld/networks.py, losses.py) under
``torch.func.vmap``: a Linear becomes a batched matmul over seeds, a convolution a grouped one. Nothing
of the algorithm is restated here; this module only decides what is per seed and calls the losses.

Per seed, nothing is shared: weights and targets (stacked tensors), optimizer state (AdamW is
elementwise, so one optimizer over the stacked tensors is S optimizers; the gradient-norm clip of the
value networks is computed per seed), reward scales ((S,) tensors), the replay (one ReplayBuffer per
seed, each with its own sampling generator, contents and priorities), and the noise of exploration,
target policy smoothing and augmentation (one torch.Generator per seed, drawn outside the mapped
functions in the order a single-seed ULDAgent draws from torch's global generator).

Seed k of an S-seed agent starts from the weights a single-seed ULDAgent built with
``torch.manual_seed(seed_k)`` has, and ``seed_state_dict(k)`` is exactly a ULDAgent's state_dict, so
each seed's checkpoint is a single-seed checkpoint (``uld eval`` loads it as one).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call, stack_module_state, vmap

from uld.agents.uld import losses
from uld.agents.uld.agent import ULDAgent, make_buffer, shift_augment
from uld.agents.uld.config import ULDConfig
from uld.envs.base import EnvSpec
from uld.errors import UldError
from uld.replay.buffer import Batch, ReplayBuffer

ONLINE = ("encoder", "policy", "value")
TARGETS = ("encoder_target", "policy_target", "value_target")


class _Networks(nn.Module):
    """The six networks of one seed under one module, so that one functional_call swaps in a seed's
    tensors; forward(fn, *args) runs fn(networks, *args) with them."""

    def __init__(self, agent: ULDAgent):
        super().__init__()
        for name in ONLINE + TARGETS:
            self.add_module(name, getattr(agent, name))

    def forward(self, fn, *args):
        return fn(self, *args)


def _stack_batches(batches: list[Batch]) -> Batch:
    return Batch(*(torch.stack([getattr(b, name) for b in batches])
                   for name in ("index", "obs", "action", "reward", "terminated")))


def _per_seed_clip_(grads: list[Tensor], max_norm: float) -> Tensor:
    """clip_grad_norm_ of each seed's gradients on its own: norm over every tensor of a seed, scaled
    by min(1, max_norm / (norm + 1e-6)) as torch.nn.utils.clip_grad_norm_ does. Returns the (S,) norms."""
    norm = torch.stack([g.flatten(1).pow(2).sum(1) for g in grads]).sum(0).sqrt()
    scale = (max_norm / (norm + 1e-6)).clamp(max=1.0)
    for g in grads:
        g.mul_(scale.view(-1, *([1] * (g.dim() - 1))))
    return norm


class StackedULD:
    """S ULD agents trained in lock-step with stacked parameters (S = len(seeds); S = 1 is allowed).

    act(obs (S, *obs_shape), explore) -> actions (S, action_dim); update(buffers) takes one replay per
    seed and returns metrics as (S,) tensors. Continuous actions, the default representation learning
    and fp32 arithmetic only (others raise UldError).
    """

    def __init__(self, spec: EnvSpec, config: ULDConfig, seeds: list[int], device: str | torch.device = "cpu"):
        if spec.discrete:
            raise UldError("training several seeds in one process supports continuous actions only; "
                           "train discrete-action envs one seed at a time (--seed)")
        if not config.model_based_representation:
            raise UldError("training several seeds in one process needs --uld.model-based-representation "
                           "(the default); train that design-study variant one seed at a time (--seed)")
        self.spec, self.config, self.seeds = spec, config, list(seeds)
        self.device = torch.device(device)
        agents = []
        for seed in self.seeds:  # each seed's initial weights are those of a single-seed agent with that seed
            torch.manual_seed(seed)
            agents.append(ULDAgent(spec, config, device=self.device, cuda_graphs=False))
        self.networks = _Networks(agents[0])  # the template: its own tensors are never used for a seed
        self.params: dict[str, Tensor] = {}
        for name in ONLINE + TARGETS:
            stacked, _ = stack_module_state([getattr(agent, name) for agent in agents])
            self.params.update({f"{name}.{key}": value.detach().requires_grad_(name in ONLINE)
                                for key, value in stacked.items()})
        del agents
        cfg = self.config
        self.encoder_optimizer = self._adamw("encoder", cfg.encoder_lr)
        self.value_optimizer = self._adamw("value", cfg.value_lr)
        self.policy_optimizer = self._adamw("policy", cfg.policy_lr)
        self.bins = losses.reward_bins(cfg.num_bins, cfg.bin_range).to(self.device)
        self.training_step = 0
        S = len(self.seeds)
        self.reward_scale = torch.ones(S, dtype=torch.float64, device=self.device)
        self.target_reward_scale = torch.ones(S, dtype=torch.float64, device=self.device)
        # Noise of exploration, target smoothing and augmentation: one stream per seed.
        self.generators = []
        for seed in self.seeds:
            generator = torch.Generator(self.device)
            generator.manual_seed(seed)
            self.generators.append(generator)

    def _adamw(self, network: str, lr: float) -> torch.optim.AdamW:
        return torch.optim.AdamW(self._group(network), lr=lr, weight_decay=self.config.weight_decay,
                                 betas=(0.9, 0.999), eps=1e-8, fused=True)

    def _group(self, network: str) -> list[Tensor]:
        """The stacked tensors of one network, in the order of its module's parameters()."""
        return [value for key, value in self.params.items() if key.split(".", 1)[0] == network]

    def _subset(self, *networks: str) -> dict[str, Tensor]:
        return {key: value for key, value in self.params.items() if key.split(".", 1)[0] in networks}

    def _fixed(self, *networks: str) -> dict[str, Tensor]:
        """Networks a loss reads but does not train: detached, so that no gradient reaches them."""
        return {key: value.detach() for key, value in self._subset(*networks).items()}

    @property
    def num_seeds(self) -> int:
        return len(self.seeds)

    # ---- acting -------------------------------------------------------------------------------

    @torch.no_grad()
    def act(self, obs, explore: bool) -> Tensor:
        """Actions in [-1, 1] for one observation per seed, (S, *obs_shape) -> (S, action_dim) on the CPU."""
        obs_t = torch.as_tensor(obs, device=self.device)
        if not self.spec.pixels:
            obs_t = obs_t.float()

        def policy(nets, o):
            return nets.policy(nets.encoder.f(o.unsqueeze(0)))[0][0]

        params = self._subset("encoder", "policy")
        action = vmap(lambda p, o: functional_call(self.networks, p, (policy, o)))(params, obs_t)
        if explore:
            noise = torch.stack([torch.randn(1, self.spec.action_dim, device=self.device, generator=g)[0]
                                 for g in self.generators])
            action = (action + self.config.exploration_noise * noise).clamp(-1, 1)
        return action.cpu()

    # ---- learning -----------------------------------------------------------------------------

    def update(self, buffers: list[ReplayBuffer]) -> dict[str, Tensor]:
        """One training iteration for every seed, on the schedule of ULDAgent.update; metrics (S,)."""
        cfg = self.config
        self.training_step += 1
        for buffer in buffers:
            buffer.refresh()
        metrics: dict[str, Tensor] = {}
        if (self.training_step - 1) % cfg.target_update_period == 0:
            for target, online in zip(TARGETS, ONLINE):
                torch._foreach_copy_(self._group(target), self._group(online))
            self.target_reward_scale.copy_(self.reward_scale)
            if cfg.reward_scaling:
                self.reward_scale.copy_(torch.stack([buffer.reward_scale() for buffer in buffers]))
            for _ in range(cfg.target_update_period):
                metrics.update(self.update_encoder(*self.encoder_inputs(buffers)))
        metrics.update(self.update_value_and_policy(buffers, *self.value_policy_inputs(buffers)))
        return metrics

    def _prepare_obs(self, obs: Tensor, generator: torch.Generator) -> Tensor:
        """ULDAgent._prepare_obs for one seed, with that seed's generator."""
        obs = obs.transpose(0, 1)
        if self.spec.pixels:
            return shift_augment(obs, generator=generator) if self.config.pixel_augmentation else obs
        return obs.float()

    def encoder_inputs(self, buffers: list[ReplayBuffer]) -> tuple[Batch, Tensor, Tensor]:
        """What an encoder update draws: each seed's batch, its prepared observations (S, H + 1, B, ...)
        and its done gate (S,)."""
        cfg = self.config
        batches = [buffer.sample(cfg.batch_size, cfg.encoder_window) for buffer in buffers]
        obs = torch.stack([self._prepare_obs(b.obs[:, : cfg.enc_horizon + 1], g)
                           for b, g in zip(batches, self.generators)])
        use_done = torch.stack([buffer.ever_terminated for buffer in buffers])
        return _stack_batches(batches), obs, use_done

    def value_policy_inputs(self, buffers: list[ReplayBuffer]) -> tuple[Batch, Tensor, Tensor]:
        """What a value + policy update draws: batches, prepared observations (S, 2, B, ...), target noise (S, B, A)."""
        cfg = self.config
        batches, obs, noise = [], [], []
        for buffer, generator in zip(buffers, self.generators):
            batch = buffer.sample(cfg.batch_size, cfg.q_horizon)
            batches.append(batch)
            obs.append(self._prepare_obs(batch.obs[:, :: cfg.q_horizon], generator))
            noise.append(torch.randn(cfg.batch_size, self.spec.action_dim, device=self.device, generator=generator))
        return _stack_batches(batches), torch.stack(obs), torch.stack(noise)

    def update_encoder(self, batch: Batch, obs: Tensor, use_done: Tensor) -> dict[str, Tensor]:
        """One encoder step of every seed on the given inputs (ULDAgent._update_encoder)."""
        cfg, H = self.config, self.config.enc_horizon
        zsa_target = cfg.dynamics_target == "zsa"

        def encoder_loss(networks, obs, action, reward, terminated, use_done):
            next_action = None
            with torch.no_grad():
                target_encoder = networks.encoder_target if cfg.target_encoder else networks.encoder
                target = target_encoder.f(obs[1:].flatten(0, 1)).unflatten(0, (H, obs.shape[1])).transpose(0, 1)
                if zsa_target:
                    next_action = action[:, 1 : H + 1]
                    target = target_encoder.g(target, next_action)
            return losses.encoder_loss(networks.encoder, obs[0], action[:, :H], reward[:, :H], terminated[:, :H],
                                       target, bins=self.bins, dynamics_weight=cfg.dynamics_weight,
                                       reward_weight=cfg.reward_weight, done_weight=cfg.done_weight,
                                       use_done=use_done, next_action=next_action)

        def seed_loss(trained, fixed, *inputs):
            return functional_call(self.networks, {**trained, **fixed}, (encoder_loss, *inputs))

        loss, metrics = vmap(seed_loss)(self._subset("encoder"), self._fixed("encoder_target"), obs, batch.action,
                                        batch.reward, batch.terminated, use_done)
        self._step(self.encoder_optimizer, "encoder", loss)
        return metrics

    def update_value_and_policy(self, buffers: list[ReplayBuffer], batch: Batch, obs: Tensor,
                                noise: Tensor) -> dict[str, Tensor]:
        """One value step (clipped per seed), one policy step and the priority update of every seed."""
        cfg = self.config

        def value_loss(networks, obs, action, reward, terminated, noise, reward_scale, target_reward_scale):
            with torch.no_grad():
                R, ND = losses.n_step_return(reward, terminated, cfg.discount)
                target_encoder = networks.encoder_target if cfg.target_encoder else networks.encoder
                zs_next = target_encoder.f(obs[1])
                next_action, _ = networks.policy_target(zs_next)
                noise = (cfg.target_policy_noise * noise).clamp(-cfg.target_noise_clip, cfg.target_noise_clip)
                next_action = (next_action + noise).clamp(-1, 1)
                next_q = networks.value_target(target_encoder.g(zs_next, next_action))
                y = losses.critic_target(R, ND, next_q, discount=cfg.discount, horizon=cfg.q_horizon,
                                         reward_scale=reward_scale, target_reward_scale=target_reward_scale,
                                         clipped_double_q=cfg.clipped_double_q)
                zs = networks.encoder.f(obs[0])
                zsa = networks.encoder.g(zs, action[:, 0])
            loss, td_error, metrics = losses.critic_loss(networks.value, zsa, y, loss_type=cfg.critic_loss)
            return loss, (td_error, zs, metrics)

        def actor_loss(networks, zs):
            return losses.actor_loss(networks.encoder, networks.value, networks.policy, zs,
                                     pre_activation_weight=cfg.pre_activation_weight)

        def seed_loss(fn):
            return lambda trained, fixed, *inputs: functional_call(self.networks, {**trained, **fixed}, (fn, *inputs))

        fixed = self._fixed("encoder", "encoder_target", "policy_target", "value_target")
        loss, (td_error, zs, metrics) = vmap(seed_loss(value_loss))(
            self._subset("value"), fixed, obs, batch.action, batch.reward, batch.terminated, noise,
            self.reward_scale, self.target_reward_scale)
        self._step(self.value_optimizer, "value", loss, clip=cfg.value_grad_clip)

        loss, actor_metrics = vmap(seed_loss(actor_loss))(self._subset("policy"), self._fixed("encoder", "value"), zs)
        self._step(self.policy_optimizer, "policy", loss)

        for k, buffer in enumerate(buffers):
            buffer.update_priorities(batch.index[k], td_error[k])
        metrics.update(actor_metrics)
        return metrics

    def _step(self, optimizer: torch.optim.AdamW, network: str, loss: Tensor, clip: float | None = None) -> None:
        """Gradients of each seed's loss, (S,), with respect to that seed's slice of the network, then a step.

        Seeds share no tensor, so the gradient of the sum of their losses is, for each seed's slice,
        the gradient of that seed's loss alone: one backward pass through the mapped graph gives all.
        """
        optimizer.zero_grad(set_to_none=True)
        loss.sum().backward()
        if clip is not None:
            _per_seed_clip_([param.grad for param in self._group(network)], clip)
        optimizer.step()

    # ---- state --------------------------------------------------------------------------------

    def seed_state_dict(self, k: int) -> dict:
        """Seed k's state in exactly the form of ULDAgent.state_dict (a single-seed checkpoint)."""
        state: dict[str, Any] = {
            name: {key.split(".", 1)[1]: value[k].clone() for key, value in self._subset(name).items()}
            for name in ONLINE + TARGETS}
        for name in ("encoder_optimizer", "value_optimizer", "policy_optimizer"):
            full = getattr(self, name).state_dict()
            state[name] = {"param_groups": full["param_groups"],
                           "state": {i: {key: (value.clone() if key == "step" else value[k].clone())
                                         for key, value in per_param.items()}
                                     for i, per_param in full["state"].items()}}
        state["counters"] = {"training_step": self.training_step,
                             "reward_scale": self.reward_scale[k].cpu().clone(),
                             "target_reward_scale": self.target_reward_scale[k].cpu().clone()}
        state["generator"] = self.generators[k].get_state()
        return state

    def load_seed_state_dicts(self, states: list[dict]) -> None:
        """Restore every seed from its seed_state_dict (in the order of `seeds`)."""
        if len(states) != self.num_seeds:
            raise ValueError(f"{len(states)} states for {self.num_seeds} seeds")
        with torch.no_grad():
            for name in ONLINE + TARGETS:
                for key, value in self._subset(name).items():
                    value.copy_(torch.stack([torch.as_tensor(s[name][key.split(".", 1)[1]]) for s in states]))
        for name in ("encoder_optimizer", "value_optimizer", "policy_optimizer"):
            per_seed = [s[name] for s in states]
            stacked = {"param_groups": per_seed[0]["param_groups"],
                       "state": {i: {key: (value if key == "step" else
                                           torch.stack([s["state"][i][key] for s in per_seed]))
                                     for key, value in per_param.items()}
                                 for i, per_param in per_seed[0]["state"].items()}}
            getattr(self, name).load_state_dict(stacked)
        steps = {int(s["counters"]["training_step"]) for s in states}
        if len(steps) != 1:
            raise UldError(f"the seeds' checkpoints are at different training steps ({sorted(steps)}); "
                           "resume each seed on its own")
        self.training_step = steps.pop()
        self.reward_scale.copy_(torch.stack([torch.as_tensor(s["counters"]["reward_scale"]) for s in states]))
        self.target_reward_scale.copy_(torch.stack([torch.as_tensor(s["counters"]["target_reward_scale"])
                                                    for s in states]))
        for generator, s in zip(self.generators, states):
            if "generator" in s:
                generator.set_state(s["generator"])


def make_buffers(spec: EnvSpec, config: ULDConfig, seeds: list[int], device) -> list[ReplayBuffer]:
    """One replay per seed, each seeded with its seed (as make_buffer does for a single run)."""
    return [make_buffer(spec, config, seed, device) for seed in seeds]

