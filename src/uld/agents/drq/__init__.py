"""DR.Q (Lyu et al., ICML 2026): ULD's update with DR.Q's configuration (docs/drq.md); registered as `--agent drq`.

DR.Q has no update of its own: its differences from MR.Q are options of ULD's one update
(uld/agents/uld/update.py) and of the replay (uld/replay/faded.py), set by DRQConfig. So it trains
with everything ULD's agent has: many seeds in one process, CUDA graphs, bf16, resume and export.
"""

from __future__ import annotations

from uld.agents.drq.config import DRQConfig, reduced_config
from uld.agents.registry import AgentSpec, BuildContext, register_agent, stacked_uld
from uld.agents.uld import build as build_uld
from uld.agents.uld.design_study import VARIANTS

# MR.Q's design-study switches, less the one DR.Q already makes (its default is without reward scaling).
DESIGN_STUDY = {name: fields for name, fields in VARIANTS.items() if name != "no-reward-scaling"}


def build(spec, config: DRQConfig, context: BuildContext):
    """ULD's agent and replay: they take everything DR.Q changes from the config (the faded replay included)."""
    return build_uld(spec, config, context)


AGENT = register_agent(AgentSpec(
    name="drq", config=DRQConfig, build=build, small=reduced_config, title="DR.Q",
    description="DR.Q: ULD's update with an InfoNCE term, faded prioritized replay and DR.Q's settings (docs/drq.md)",
    discrete_actions=True, pixels=True, design_study=DESIGN_STUDY, build_seeds=stacked_uld,
))

__all__ = ["DRQConfig", "reduced_config"]
