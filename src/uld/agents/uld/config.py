"""ULD / MR.Q hyperparameters: the one set used for every domain (docs/algorithm.md)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal


@dataclass(frozen=True)
class ULDConfig:
    """Every hyperparameter of the ULD agent; the defaults are the published ones."""

    batch_size: int = 256
    """generic / batch size."""
    buffer_capacity: int = 1_000_000
    """generic / replay capacity (slots; each finished episode also takes one slot for its final observation)."""
    discount: float = 0.99
    """generic / discount gamma."""
    target_update_period: int = 250
    """generic / target update period T: training steps between hard target copies (and encoder bursts)."""
    random_steps: int = 10_000
    """exploration / uniformly random actions before training starts."""
    exploration_noise: float = 0.2
    """exploration / Gaussian noise sigma added to the policy's action (halved for discrete actions)."""
    target_policy_noise: float = 0.2
    """TD3 / target policy noise sigma (halved for discrete actions)."""
    target_noise_clip: float = 0.3
    """TD3 / target policy noise clip (halved for discrete actions)."""
    dynamics_weight: float = 1.0
    """encoder loss / weight of the latent dynamics term."""
    reward_weight: float = 0.1
    """encoder loss / weight of the reward cross-entropy term."""
    done_weight: float = 0.1
    """encoder loss / weight of the termination term."""
    enc_horizon: int = 5
    """encoder loss / unroll horizon H_enc."""
    q_horizon: int = 3
    """critic / n-step horizon H_Q."""
    value_grad_clip: float | None = 20.0
    """critic / global gradient-norm clip of the value networks (None: no clip, as DR.Q)."""
    prioritized: bool = True
    """replay / LAP prioritized sampling."""
    alpha: float = 0.4
    """replay / LAP exponent alpha."""
    min_priority: float = 1.0
    """replay / LAP minimum priority."""
    zs_dim: int = 512
    """sizes / state embedding zs."""
    zsa_dim: int = 512
    """sizes / state-action embedding zsa."""
    za_dim: int = 256
    """sizes / action embedding za."""
    hidden_dim: int = 512
    """sizes / hidden width of every MLP (the encoder's too, unless encoder_hidden_dim is set)."""
    encoder_hidden_dim: int | None = None
    """sizes / hidden width of the encoder's MLPs f, g and the MLP latent model (None: hidden_dim; DR.Q widens it)."""
    encoder_lr: float = 1e-4
    """optim / AdamW learning rate of the encoder."""
    value_lr: float = 3e-4
    """optim / AdamW learning rate of the value networks."""
    policy_lr: float = 3e-4
    """optim / AdamW learning rate of the policy."""
    weight_decay: float = 1e-4
    """optim / AdamW weight decay (all three optimizers)."""
    pre_activation_weight: float = 1e-5
    """policy / weight of the pre-activation penalty mean(pre^2)."""
    gumbel_tau: float = 10.0
    """policy / Gumbel-softmax temperature for discrete actions."""
    num_bins: int = 65
    """reward model / number of two-hot bins."""
    bin_range: float = 10.0
    """reward model / bins at symexp(linspace(-bin_range, bin_range, num_bins))."""
    pixel_augmentation: bool = True
    """pixels / DrQ shift augmentation (replicate-pad 4, random integer shift per image)."""
    infonce_weight: float = 0.0
    """encoder loss / weight of the InfoNCE term at each unroll step (0: none, as ULD; DR.Q's D1 uses 0.1)."""
    infonce_temperature: float = 0.1
    """encoder loss / temperature of the InfoNCE logits, cosine similarity / temperature (DR.Q's D2)."""
    infonce_masking: Literal["alive-fraction", "per-sample"] = "alive-fraction"
    """encoder loss / InfoNCE after a termination: the released DR.Q's batch mean scaled by the fraction of rows
    alive, or each sample's term masked (docs/drq.md)."""
    fade: float = 1.0
    """replay / faded prioritized replay: each start's weight times max(fade^age, fade_floor), age in insertions
    (1: no fade, as ULD; DR.Q's D3 uses 0.9999)."""
    fade_floor: float = 0.1
    """replay / the floor of the fade factor (DR.Q's D3)."""

    # Switches of MR.Q's design study (uld sweep --design-study). The defaults are the published algorithm; 1-step
    # returns and no unroll are q_horizon=1 and enc_horizon=1.
    value_model: Literal["mlp", "linear"] = "mlp"
    """design study / value function: the spec's MLP heads, or linear in zsa."""
    dynamics_target: Literal["zs", "zsa"] = "zs"
    """design study / dynamics target: next zs, or next zsa = g_target(f_target(s'), a') of the predicted zs."""
    target_encoder: bool = True
    """design study / use the target encoder for dynamics and value targets (False: the online encoder, detached)."""
    latent_model: Literal["linear", "mlp"] = "linear"
    """design study / latent model head on zsa: the spec's Linear, or a non-linear MLP."""
    reward_scaling: bool = True
    """design study / divide value targets by the mean |r| (False: reward scale fixed at 1)."""
    clipped_double_q: bool = True
    """design study / bootstrap from min over the two Q heads (False: their mean)."""
    critic_loss: Literal["huber", "mse"] = "huber"
    """design study / critic loss: Huber (smooth L1, beta 1) or MSE."""
    model_based_representation: bool = True
    """design study / train the encoder with the dynamics, reward and done losses (False: by the critic loss)."""

    @property
    def encoder_width(self) -> int:
        """Hidden width of the encoder's MLPs."""
        return self.hidden_dim if self.encoder_hidden_dim is None else self.encoder_hidden_dim

    @property
    def encoder_window(self) -> int:
        """Steps an encoder batch needs: H_enc, plus the next action when the dynamics target is zsa."""
        return self.enc_horizon + (1 if self.dynamics_target == "zsa" else 0)

    @property
    def horizon(self) -> int:
        """Length of the stored subsequences: max(H_enc, H_Q) (docs/algorithm.md, Replay)."""
        return max(self.encoder_window, self.q_horizon)

    def for_discrete(self) -> ULDConfig:
        """Discrete actions halve sigma, target noise and clip (docs/algorithm.md, Acting)."""
        return replace(
            self,
            exploration_noise=self.exploration_noise / 2,
            target_policy_noise=self.target_policy_noise / 2,
            target_noise_clip=self.target_noise_clip / 2,
        )


SMALL = dict(
    batch_size=64,
    zs_dim=128,
    zsa_dim=128,
    za_dim=64,
    hidden_dim=128,
    target_update_period=100,
    random_steps=1_000,
)
"""The fields `--small` changes: the same algorithm at a size a laptop CPU trains in minutes."""


def reduced_config(**overrides) -> ULDConfig:
    """The same algorithm at a size a laptop CPU trains in minutes (for learning tests and demos)."""
    return ULDConfig(**{**SMALL, **overrides})
