"""ALM hyperparameters and run protocol (docs/alm.md, Hyperparameters)."""

from __future__ import annotations

from dataclasses import dataclass

from uld.envs.protocol import Protocol


@dataclass(frozen=True)
class ALMConfig:
    """Every hyperparameter of the ALM agent; the defaults are the published ones."""

    latent_dim: int = 50
    """sizes / latent size of z."""
    hidden_dim: int = 512
    """sizes / hidden width of encoder, reward, classifier, critic and actor."""
    model_hidden_dim: int = 1024
    """sizes / hidden width of the latent model m."""
    seq_len: int = 3
    """sequence length K: model unroll and imagination horizon."""
    batch_size: int = 512
    """batch size: sequences for the model loss, and transitions for the other losses."""
    discount: float = 0.99
    """gamma (critic target and lambda-returns)."""
    td_lambda: float = 0.95
    """lambda of the lambda-returns in the actor loss."""
    tau: float = 0.005
    """tau: Polyak rate of the target encoder and target critics, every step."""
    classifier_weight: float = 0.1
    """classifier bonus weight lambda_c in the imagined reward."""
    lr: float = 1e-4
    """optimizer / Adam learning rate of each of the four optimizers ({e, m}, {R, C}, critic, actor)."""
    grad_clip: float = 100.0
    """optimizer / gradient-norm clip applied to each optimizer's parameters."""
    buffer_capacity: int = 100_000
    """replay / FIFO capacity in transitions (the ring holds min(this, total steps))."""
    humanoid_buffer_capacity: int = 500_000
    """replay / FIFO capacity for Humanoid envs."""
    random_steps: int = 5_000
    """random steps / uniformly random actions before training starts."""
    exploration_std_start: float = 1.0
    """exploration std / at the end of the random phase."""
    exploration_std_end: float = 0.1
    """exploration std / after the decay."""
    exploration_decay_steps: int = 100_000
    """exploration std / linear decay length, in training steps after the random phase."""
    noise_clip: float = 0.3
    """noise clip of the sampled action (target policy, imagination)."""

    def exploration_std(self, training_step: int) -> float:
        """The scheduled std of the policy's truncated normal after `training_step` updates."""
        fraction = min(training_step / max(self.exploration_decay_steps, 1), 1.0)
        return self.exploration_std_start + fraction * (self.exploration_std_end - self.exploration_std_start)

    def capacity_for(self, env_name: str, total_steps: int) -> int:
        """Transitions the FIFO replay keeps: min(capacity, total steps), Humanoid's larger (docs/alm.md, replay)."""
        humanoid = env_name.partition(":")[2].startswith("Humanoid")
        return min(self.humanoid_buffer_capacity if humanoid else self.buffer_capacity, total_steps)


ALM_EVAL_EVERY = 5_000
ALM_EVAL_EPISODES = 5
ALM_LONG_BUDGET_ENVS = ("Ant", "Humanoid")
"""Gym env names (before "-v") ALM trains for 500k steps; every other env gets 300k (docs/alm.md, budgets)."""


def alm_protocol(env_name: str) -> Protocol:
    """ALM's budget and evaluation cadence for an env (docs/alm.md: evaluation, budgets)."""
    domain, _, env_id = env_name.partition(":")
    long = domain == "gym" and env_id.split("-v")[0] in ALM_LONG_BUDGET_ENVS
    return Protocol(steps=500_000 if long else 300_000, eval_every=ALM_EVAL_EVERY, eval_episodes=ALM_EVAL_EPISODES)


def reduced_config(**overrides) -> ALMConfig:
    """The same algorithm at a size a laptop CPU trains in minutes (for learning tests and demos)."""
    small = dict(
        latent_dim=32,
        hidden_dim=128,
        model_hidden_dim=128,
        batch_size=64,
        lr=3e-4,  # small networks on small tasks take the larger step well
        random_steps=1_000,
        exploration_decay_steps=10_000,
    )
    small.update(overrides)
    return ALMConfig(**small)
