"""Many seeds of ULD in one process: one network definition mapped over a leading seed axis.

The S seeds' parameters are stacked, (S, *shape) per tensor (``torch.func.stack_module_state``), and
every forward and backward pass is the single-seed one (uld/agents/uld/update.py, with networks.py and
losses.py) under ``torch.func.vmap``: a Linear becomes a batched matmul over seeds, a convolution a
grouped one. Or, `looped`, one seed after the other on views of its slices of the stacked tensors: on a
CPU grouped convolutions are slower than S ordinary ones, and bf16 autocast does not reach inside vmap.
Nothing of the algorithm is restated here, schedule included (update.UpdateSchedule); this module only
decides what is per seed and how gradients reach the stacked tensors.

Per seed, nothing is shared: weights and targets (stacked tensors), optimizer state (AdamW is
elementwise, so one optimizer over the stacked tensors is S optimizers; the gradient-norm clip of the
value networks is computed per seed), reward scales ((S,) tensors), the replay (one ReplayBuffer per
seed, each with its own sampling generator, contents and priorities), and the noise of exploration,
target policy smoothing, Gumbel sampling and augmentation (one torch.Generator per seed, drawn outside the mapped
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
from torch.utils._pytree import tree_map

from uld.agents.common import autocast, check_precision, output_dtype
from uld.agents.uld import losses
from uld.agents.uld.agent import HostToDevice, ULDAgent, make_buffer, restore_optimizer_flags
from uld.agents.uld.config import ULDConfig
from uld.agents.uld.graphs import CudaGraphBackend, UpdateGraphs
from uld.agents.uld.networks import gumbel_noise
from uld.agents.uld.update import UpdateSchedule, encoder_step_loss, policy_step_loss, prepare_obs, value_step_loss
from uld.devices import load_generator_state, new_generator
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


class StackedULD(UpdateSchedule):
    """S ULD agents trained in lock-step with stacked parameters (S = len(seeds); S = 1 is allowed).

    act(obs (S, *obs_shape), explore) -> actions (S, action_dim), or (S,) indices for discrete actions;
    update(buffers) takes one replay per seed and returns metrics as (S,) tensors. The update is
    uld/agents/uld/update.py's, mapped over the seeds (with vmap, or one seed after the other: `looped`,
    the CPU's way for pixels and the only way for bf16). The default representation learning only (the
    design-study variant without it raises UldError).
    """

    def __init__(self, spec: EnvSpec, config: ULDConfig, seeds: list[int], device: str | torch.device = "cpu",
                 cuda_graphs: bool = True, looped: bool | None = None, precision: str = "fp32",
                 graph_backend: CudaGraphBackend | None = None):
        if not config.model_based_representation:
            raise UldError("training several seeds in one process needs --uld.model-based-representation "
                           "(the default); train that design-study variant one seed at a time (--seed)")
        self.spec, self.seeds = spec, list(seeds)
        self.device = torch.device(device)
        # How the seeds are mapped: vmap (batched matmuls, grouped convolutions), or one seed after the other
        # on its slice of the stacked tensors. On a CPU, grouped convolutions and their gradients are slower
        # than S ordinary ones (a pixel update of two seeds took twice as long as two one-seed updates), so
        # pixel encoders loop there; batched matmuls win for vectors (benchmarks/seeds.py, docs/seeds.md).
        self.looped = (self.device.type == "cpu" and spec.pixels) if looped is None else looped
        self.precision = check_precision(precision)
        if self.precision == "bf16":
            # bf16 autocast does not reach inside torch.func.vmap (the mapped matmuls would stay fp32).
            if looped is False:
                raise ValueError("bf16 needs the seeds mapped one after the other (looped), not vmap")
            self.looped = True
        self.config = config.for_discrete() if spec.discrete else config
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
        # CUDA graphs replay the mapped updates on a GPU, as for one seed (uld/agents/uld/graphs.py).
        graphed = graph_backend is not None or (cuda_graphs and self.device.type == "cuda")
        self.graphs = UpdateGraphs(self, graph_backend) if graphed else None  # graph_backend: as ULDAgent's
        self.encoder_optimizer = self._adamw("encoder", cfg.encoder_lr)
        self.value_optimizer = self._adamw("value", cfg.value_lr)
        self.policy_optimizer = self._adamw("policy", cfg.policy_lr)
        self.bins = losses.reward_bins(cfg.num_bins, cfg.bin_range).to(self.device)
        self.training_step = 0
        self._host_to_device = HostToDevice(self.device)
        S = len(self.seeds)
        self.reward_scale = torch.ones(S, dtype=torch.float64, device=self.device)
        self.target_reward_scale = torch.ones(S, dtype=torch.float64, device=self.device)
        # Noise of exploration, target smoothing and augmentation: one stream per seed.
        self.generators = [new_generator(self.device, seed) for seed in self.seeds]

    def _adamw(self, network: str, lr: float) -> torch.optim.AdamW:
        return torch.optim.AdamW(self._group(network), lr=lr, weight_decay=self.config.weight_decay,
                                 betas=(0.9, 0.999), eps=1e-8, fused=True, capturable=self.graphs is not None)

    def _group(self, network: str) -> list[Tensor]:
        """The stacked tensors of one network, in the order of its module's parameters()."""
        return [value for key, value in self.params.items() if key.split(".", 1)[0] == network]

    def _subset(self, *networks: str) -> dict[str, Tensor]:
        return {key: value for key, value in self.params.items() if key.split(".", 1)[0] in networks}

    def _fixed(self, *networks: str) -> dict[str, Tensor]:
        """Networks a loss reads but does not train: detached, so that no gradient reaches them."""
        return {key: value.detach() for key, value in self._subset(*networks).items()}

    def _mapped(self, fn, trained: dict[str, Tensor], fixed: dict[str, Tensor], *inputs):
        """fn(networks, *inputs) of every seed at once: seed k's tensors swapped into the template networks,
        mapped over the leading seed axis of the tensors and of the inputs."""
        def seed_fn(trained, fixed, *inputs):
            # Every tensor is given (no network shares one with another: the keys of self.params are distinct),
            # so torch's search for tied weights, about half the cost of a small act, is skipped.
            return functional_call(self.networks, {**trained, **fixed}, (fn, *inputs), tie_weights=False)
        if self.looped:
            # One seed after the other on views of its slices (unbind's backward stacks the gradients).
            tensors = {key: value.unbind(0) for key, value in {**trained, **fixed}.items()}
            slices = [x.unbind(0) for x in inputs]
            outputs = [seed_fn({key: value[k] for key, value in tensors.items()}, {}, *(x[k] for x in slices))
                       for k in range(self.num_seeds)]
            return tree_map(lambda *per_seed: torch.stack(per_seed), *outputs)
        return vmap(seed_fn)(trained, fixed, *inputs)

    def _autocast(self):
        """bf16 autocast for one forward pass when asked for, as ULDAgent's (not cached inside CUDA graphs)."""
        return autocast(self.device, self.precision, cache=self.graphs is None)

    @property
    def num_seeds(self) -> int:
        return len(self.seeds)

    # ---- acting -------------------------------------------------------------------------------

    @torch.no_grad()
    def act(self, obs, explore: bool) -> Tensor:
        """One action per seed for one observation per seed, (S, *obs_shape) -> on the CPU (S, action_dim)
        in [-1, 1], or (S,) indices for discrete actions (as ULDAgent.act, seed by seed)."""
        obs_t = self._host_to_device(obs)
        if not self.spec.pixels:
            obs_t = obs_t.float()

        def policy(nets, o, gumbel):
            action, pre = nets.policy(nets.encoder.f(o.unsqueeze(0)), gumbel.unsqueeze(0))
            return action[0], pre[0]

        # Per seed, in the order of ULDAgent.act: the policy's Gumbel draws (discrete), then the exploration noise.
        shape = (1, self.spec.action_dim)
        gumbel = torch.zeros(self.num_seeds, self.spec.action_dim, device=self.device)  # unused unless drawn
        noise = torch.zeros_like(gumbel)
        for k, g in enumerate(self.generators):
            if explore and self.spec.discrete:
                gumbel[k] = gumbel_noise(shape, self.device, g)[0]
            if explore:
                noise[k] = torch.randn(shape, device=self.device, generator=g)[0]
        action, pre = self._mapped(policy, self._subset("encoder", "policy"), {}, obs_t, gumbel)
        if self.spec.discrete:  # greedy evaluation on the pre-activations (docs/algorithm.md, difference 5)
            return (action + self.config.exploration_noise * noise if explore else pre).argmax(-1).cpu()
        if explore:
            action = (action + self.config.exploration_noise * noise).clamp(-1, 1)
        return action.cpu()

    # ---- learning -----------------------------------------------------------------------------

    def update(self, buffers: list[ReplayBuffer]) -> dict[str, Tensor]:
        """One training iteration for every seed (UpdateSchedule.iteration), one replay per seed; metrics (S,)."""
        return self.iteration(buffers)

    def buffers(self, source: list[ReplayBuffer]) -> list[ReplayBuffer]:
        return source

    def trained_parameters(self) -> list[Tensor]:
        return [value for key, value in self.params.items() if key.split(".", 1)[0] in ONLINE]

    def own_generators(self) -> list[torch.Generator]:
        return self.generators

    def _copy_targets(self) -> None:
        for target, online in zip(TARGETS, ONLINE):
            torch._foreach_copy_(self._group(target), self._group(online))

    def _update_encoder(self, buffers: list[ReplayBuffer]) -> dict[str, Tensor]:
        return self.update_encoder(*self.encoder_inputs(buffers))

    def _update_value_and_policy(self, buffers: list[ReplayBuffer]) -> dict[str, Tensor]:
        return self.update_value_and_policy(buffers, *self.value_policy_inputs(buffers))

    def encoder_inputs(self, buffers: list[ReplayBuffer]) -> tuple[Batch, Tensor, Tensor]:
        """What an encoder update draws: each seed's batch, its prepared observations (S, H + 1, B, ...)
        and its done gate (S,)."""
        cfg = self.config
        batches = [buffer.sample(cfg.batch_size, cfg.encoder_window) for buffer in buffers]
        obs = torch.stack([prepare_obs(b.obs[:, : cfg.enc_horizon + 1], cfg, self.spec.pixels, g)
                           for b, g in zip(batches, self.generators)])
        use_done = torch.stack([buffer.ever_terminated for buffer in buffers])
        return _stack_batches(batches), obs, use_done

    def value_policy_inputs(self, buffers: list[ReplayBuffer]) -> tuple[Batch, Tensor, Tensor, tuple[Tensor, ...]]:
        """What a value + policy update draws, in the order a ULDAgent draws it: batches, prepared observations
        (S, 2, B, ...), target smoothing noise (S, B, A), and for discrete actions the Gumbel draws of the target
        policy and of the policy, (S, B, A) each (an empty tuple for continuous actions)."""
        cfg = self.config
        shape = (cfg.batch_size, self.spec.action_dim)
        batches, obs, noise, gumbels = [], [], [], []
        for buffer, generator in zip(buffers, self.generators):
            batch = buffer.sample(cfg.batch_size, cfg.q_horizon)
            batches.append(batch)
            obs.append(prepare_obs(batch.obs[:, :: cfg.q_horizon], cfg, self.spec.pixels, generator))
            dtype = output_dtype(self.precision)
            target_gumbel = gumbel_noise(shape, self.device, generator, dtype) if self.spec.discrete else None
            noise.append(torch.randn(shape, device=self.device, generator=generator, dtype=dtype))
            if target_gumbel is not None:
                gumbels.append((target_gumbel, gumbel_noise(shape, self.device, generator, dtype)))
        stacked_gumbels = tuple(torch.stack(draws) for draws in zip(*gumbels))
        return _stack_batches(batches), torch.stack(obs), torch.stack(noise), stacked_gumbels

    def update_encoder(self, batch: Batch, obs: Tensor, use_done: Tensor) -> dict[str, Tensor]:
        """One encoder step of every seed on the given inputs (update.encoder_step_loss, mapped)."""
        def loss(nets, *inputs):
            return encoder_step_loss(nets, self.config, self.bins, *inputs, autocast=self._autocast)

        value, metrics = self._mapped(loss, self._subset("encoder"), self._fixed("encoder_target"), obs,
                                      batch.action, batch.reward, batch.terminated, use_done)
        self._step(self.encoder_optimizer, "encoder", value)
        return metrics

    def update_value_and_policy(self, buffers: list[ReplayBuffer], batch: Batch, obs: Tensor, noise: Tensor,
                                gumbels: tuple[Tensor, ...] = ()) -> dict[str, Tensor]:
        """One value step (clipped per seed), one policy step and the priority update of every seed
        (update.value_step_loss and policy_step_loss, mapped); gumbels: (target policy's, policy's) draws
        for discrete actions."""
        cfg = self.config
        target_gumbel, actor_gumbel = gumbels if gumbels else ((), ())

        def value_loss(nets, obs, action, reward, terminated, noise, reward_scale, target_reward_scale, *gumbel):
            return value_step_loss(nets, cfg, obs, action, reward, terminated, noise, reward_scale, target_reward_scale,
                                   discrete=self.spec.discrete, target_gumbel=gumbel[0] if gumbel else None,
                                   autocast=self._autocast)

        def policy_loss(nets, zs, *gumbel):
            return policy_step_loss(nets, cfg, zs, gumbel[0] if gumbel else None, autocast=self._autocast)

        fixed = self._fixed("encoder", "encoder_target", "policy_target", "value_target")
        loss, (td_error, zs, metrics) = self._mapped(
            value_loss, self._subset("value"), fixed, obs, batch.action, batch.reward, batch.terminated, noise,
            self.reward_scale, self.target_reward_scale, *([target_gumbel] if gumbels else []))
        self._step(self.value_optimizer, "value", loss, clip=cfg.value_grad_clip)

        loss, actor_metrics = self._mapped(policy_loss, self._subset("policy"), self._fixed("encoder", "value"), zs,
                                           *([actor_gumbel] if gumbels else []))
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
        restore_optimizer_flags([self.encoder_optimizer, self.value_optimizer, self.policy_optimizer])
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
                load_generator_state(generator, s["generator"])
        if self.graphs is not None:
            self.graphs.reset()  # the optimizers' state tensors were replaced: capture again


def make_buffers(spec: EnvSpec, config: ULDConfig, seeds: list[int], device) -> list[ReplayBuffer]:
    """One replay per seed, each seeded with its seed (as make_buffer does for a single run)."""
    return [make_buffer(spec, config, seed, device) for seed in seeds]

