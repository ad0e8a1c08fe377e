"""DR.Q hyperparameters: ULD's, with the values DR.Q changes (spec/DRQ.md, section 5; docs/drq.md)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from uld.agents.uld.config import SMALL, ULDConfig


@dataclass(frozen=True)
class DRQConfig(ULDConfig):
    """Every hyperparameter of DR.Q: ULD's update with these defaults (the released DR.Q's); the fields
    not restated here keep ULD's values, which DR.Q shares (spec/DRQ.md, section 1)."""

    done_weight: float = 0.0
    """encoder loss / no termination loss (spec D1)."""
    infonce_weight: float = 0.1
    """encoder loss / weight of the InfoNCE term at each unroll step (spec D1, section 5 "InfoNCE weight")."""
    infonce_temperature: float = 0.1
    """encoder loss / InfoNCE temperature tau, fixed (spec D2, section 5 "InfoNCE temperature")."""
    infonce_masking: Literal["alive-fraction", "per-sample"] = "alive-fraction"
    """encoder loss / the released code's InfoNCE masking: batch mean times the fraction of rows alive (spec D2)."""
    fade: float = 0.9999
    """replay / fade factor per insertion of the faded LAP sampling (spec D3, section 5 "fade factor")."""
    fade_floor: float = 0.1
    """replay / floor of the fade factor (spec D3, section 5 "fade floor")."""
    reward_scaling: bool = False
    """critic / value targets in raw reward units, not divided by the mean |r| (spec D4)."""
    value_grad_clip: float | None = None
    """critic / no gradient-norm clip of the value networks (spec D6)."""
    pre_activation_weight: float = 0.0
    """policy / no pre-activation penalty (spec D7)."""
    encoder_hidden_dim: int | None = 750
    """sizes / hidden width of the encoder's MLPs f and g (spec D8; value and policy keep hidden_dim 512)."""
    encoder_lr: float = 3e-4
    """optim / AdamW learning rate of the encoder (spec D9)."""
    weight_decay: float = 1e-2
    """optim / AdamW weight decay of the encoder, value and policy (spec D10)."""


def reduced_config(**overrides) -> DRQConfig:
    """DR.Q at `--small` size: ULD's reduced sizes, with the encoder widened in DR.Q's ratio 750 / 512."""
    return DRQConfig(**{**SMALL, "encoder_hidden_dim": 188, **overrides})
