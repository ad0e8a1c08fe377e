"""MR.Q's design study as named variants of the ULD config: each changes exactly what its name says."""

from __future__ import annotations

from dataclasses import replace

from uld.agents.uld.config import ULDConfig

VARIANTS: dict[str, dict] = {
    "default": {},
    "linear-value": {"value_model": "linear"},
    "dynamics-target-zsa": {"dynamics_target": "zsa"},
    "no-target-encoder": {"target_encoder": False},
    "linear-value+zsa-target+no-target-encoder": {
        "value_model": "linear", "dynamics_target": "zsa", "target_encoder": False,
    },
    "nonlinear-model": {"latent_model": "mlp"},
    "no-reward-scaling": {"reward_scaling": False},
    "no-clipped-double-q": {"clipped_double_q": False},
    "mse": {"critic_loss": "mse"},
    "no-model-based-representation": {"model_based_representation": False},
    "1-step-return": {"q_horizon": 1},
    "no-unroll": {"enc_horizon": 1},
}
"""Variant name -> the ULDConfig fields it changes (the design study of MR.Q, Fujimoto et al. 2025)."""


def variant(name: str, base: ULDConfig = ULDConfig()) -> ULDConfig:
    """The config of one design-study variant, built on `base`."""
    if name not in VARIANTS:
        raise KeyError(f"unknown design-study variant {name!r}; the variants are {', '.join(VARIANTS)}")
    return replace(base, **VARIANTS[name])


def variant_args(name: str) -> list[str]:
    """The `uld train` options that select a variant (e.g. ["--uld.value-model", "linear"])."""
    from uld.agents.registry import get_agent

    return get_agent("uld").variant_args(name)
