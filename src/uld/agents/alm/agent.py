"""The ALM agent: acting, and one training iteration of docs/alm.md (steps 1-5)."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from uld.agents.alm import losses
from uld.agents.alm.config import ALMConfig
from uld.agents.alm.networks import (
    Actor,
    Classifier,
    Critic,
    Encoder,
    LatentModel,
    Reward,
    count_parameters,
    truncated_normal_sample,
)
from uld.agents.common import (
    autocast,
    check_precision,
    load_parts_state_dict,
    parts_state_dict,
    polyak_update,
    target_copy,
)
from uld.agents.compile import compile_networks
from uld.agents.registry import get_agent
from uld.envs.base import EnvSpec
from uld.replay.buffer import ReplayBuffer

__all__ = ["ALMAgent", "make_buffer", "polyak_update"]


def _adam(modules: list[nn.Module], lr: float) -> torch.optim.Adam:
    return torch.optim.Adam([p for module in modules for p in module.parameters()], lr=lr, foreach=True)


class ALMAgent:
    """ALM: encoder, latent model and policy trained on one lower bound of the expected return."""

    def __init__(self, spec: EnvSpec, config: ALMConfig = ALMConfig(), device: str | torch.device = "cpu",
                 precision: str = "fp32", compiled: bool = False):
        get_agent("alm").check_supports(spec)
        self.spec, self.config, self.precision = spec, config, check_precision(precision)
        self.device = torch.device(device)
        obs_dim, action_dim, cfg = spec.obs_shape[0], spec.action_dim, config
        self.encoder = Encoder(obs_dim, cfg.latent_dim, cfg.hidden_dim).to(self.device)
        self.model = LatentModel(cfg.latent_dim, action_dim, cfg.model_hidden_dim).to(self.device)
        self.reward = Reward(cfg.latent_dim, action_dim, cfg.hidden_dim).to(self.device)
        self.classifier = Classifier(cfg.latent_dim, action_dim, cfg.hidden_dim).to(self.device)
        self.critic = Critic(cfg.latent_dim, action_dim, cfg.hidden_dim).to(self.device)
        self.actor = Actor(cfg.latent_dim, action_dim, cfg.hidden_dim).to(self.device)
        self.encoder_target = target_copy(self.encoder)
        self.critic_target = target_copy(self.critic)
        if compiled:
            compile_networks(self.encoder, self.model, self.reward, self.classifier, self.critic, self.actor,
                             self.encoder_target, self.critic_target)
        self.model_optimizer = _adam([self.encoder, self.model], cfg.lr)
        self.reward_optimizer = _adam([self.reward, self.classifier], cfg.lr)
        self.critic_optimizer = _adam([self.critic], cfg.lr)
        self.actor_optimizer = _adam([self.actor], cfg.lr)
        self.training_step = 0

    @property
    def num_parameters(self) -> int:
        """Trainable parameters (targets excluded)."""
        return count_parameters(self.encoder, self.model, self.reward, self.classifier, self.critic, self.actor)

    @property
    def exploration_std(self) -> float:
        """The scheduled policy std at the current training step (docs/alm.md, exploration std)."""
        return self.config.exploration_std(self.training_step)

    # ---- acting -------------------------------------------------------------------------------

    @torch.no_grad()
    def act(self, obs: np.ndarray, explore: bool) -> np.ndarray:
        """The action in [-1, 1]^A for one observation; z is sampled from the online encoder.

        Exploring adds unclipped noise with the scheduled std; evaluating takes the mean action
        (docs/alm.md, evaluation). Both stay within the bounds.
        """
        obs_t = torch.as_tensor(obs, device=self.device, dtype=torch.float32).unsqueeze(0)
        mean = self.actor(self.encoder(obs_t).rsample())
        action = truncated_normal_sample(mean, self.exploration_std, clip=None) if explore else mean
        return action[0].cpu().numpy()

    # ---- learning -----------------------------------------------------------------------------

    def _autocast(self) -> torch.autocast:
        """One loss's forward pass in the run's precision (agents/common.py: one block per forward pass)."""
        return autocast(self.device, self.precision)

    def _step(self, optimizer: torch.optim.Optimizer, loss: Tensor) -> Tensor:
        """One Adam step on the optimizer's parameters with the gradient-norm clip; returns the norm."""
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        params = [p for group in optimizer.param_groups for p in group["params"]]
        norm = torch.nn.utils.clip_grad_norm_(params, self.config.grad_clip, foreach=True)
        optimizer.step()
        return norm.detach()

    def update(self, buffer: ReplayBuffer) -> dict[str, Tensor]:
        """One training iteration: model, reward + classifier, critic, actor, then the targets."""
        cfg = self.config
        std = self.exploration_std
        sequences = buffer.sample(cfg.batch_size, cfg.seq_len)
        transitions = buffer.sample(cfg.batch_size, 1)
        obs, next_obs = transitions.obs[:, 0], transitions.obs[:, 1]
        action, reward, terminated = transitions.action[:, 0], transitions.reward[:, 0], transitions.terminated[:, 0]
        metrics: dict[str, Tensor] = {}

        with self._autocast():
            loss, m = losses.model_loss(encoder=self.encoder, encoder_target=self.encoder_target, model=self.model,
                                        reward=self.reward, critic=self.critic, actor=self.actor, obs=sequences.obs,
                                        action=sequences.action, terminated=sequences.terminated, std=std,
                                        clip=cfg.noise_clip)
        metrics.update(m)
        metrics["model/grad_norm"] = self._step(self.model_optimizer, loss)

        with self._autocast():
            loss, m = losses.reward_classifier_loss(encoder_target=self.encoder_target, model=self.model,
                                                    reward=self.reward, classifier=self.classifier, obs=obs,
                                                    action=action, reward_target=reward, next_obs=next_obs)
        metrics.update(m)
        metrics["reward/grad_norm"] = self._step(self.reward_optimizer, loss)

        with self._autocast():
            loss, m = losses.critic_loss(encoder_target=self.encoder_target, critic=self.critic,
                                         critic_target=self.critic_target, actor=self.actor, obs=obs, action=action,
                                         reward=reward, terminated=terminated, next_obs=next_obs, std=std,
                                         clip=cfg.noise_clip, discount=cfg.discount)
        metrics.update(m)
        metrics["critic/grad_norm"] = self._step(self.critic_optimizer, loss)

        with self._autocast():
            loss, m = losses.actor_loss(encoder_target=self.encoder_target, model=self.model, reward=self.reward,
                                        classifier=self.classifier, critic=self.critic, actor=self.actor, obs=obs,
                                        std=std, clip=cfg.noise_clip, discount=cfg.discount,
                                        td_lambda=cfg.td_lambda, horizon=cfg.seq_len,
                                        classifier_weight=cfg.classifier_weight)
        metrics.update(m)
        metrics["actor/grad_norm"] = self._step(self.actor_optimizer, loss)

        polyak_update(self.encoder, self.encoder_target, cfg.tau)
        polyak_update(self.critic, self.critic_target, cfg.tau)
        self.training_step += 1
        metrics["actor/std"] = torch.tensor(std)
        return metrics

    # ---- state --------------------------------------------------------------------------------

    _MODULES = ("encoder", "model", "reward", "classifier", "critic", "actor", "encoder_target", "critic_target",
                "model_optimizer", "reward_optimizer", "critic_optimizer", "actor_optimizer")

    def state_dict(self) -> dict:
        """Networks, targets, optimizers and the training-step counter (it sets the exploration std)."""
        state = parts_state_dict(self, self._MODULES)
        state["counters"] = {"training_step": self.training_step}
        return state

    def load_state_dict(self, state: dict) -> None:
        """Restore what state_dict returned (optimizer moments copied, not shared: agents/common.py)."""
        load_parts_state_dict(self, state, self._MODULES)
        self.training_step = int(state["counters"]["training_step"])


def make_buffer(spec: EnvSpec, config: ALMConfig, seed: int, total_steps: int,
                device: str | torch.device = "cpu") -> ReplayBuffer:
    """ALM's FIFO replay: uniform K-step sequences; transitions are its 1-step prefixes (docs/alm.md, replay).

    The ring keeps min(capacity, total steps) transitions, plus one slot per time-limited episode for
    its final observation (uld's buffer stores each observation once); episodes that terminate early
    make the oldest transitions leave a little sooner.
    """
    transitions = config.capacity_for(spec.name, total_steps)
    slots = transitions + transitions // max(spec.max_episode_steps, 1) + 1
    return ReplayBuffer(spec.obs_shape, spec.action_dim, max(slots, config.seq_len + 2), config.seq_len,
                        prioritized=False, seed=seed, device=device)
