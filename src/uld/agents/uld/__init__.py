"""ULD / MR.Q (Fujimoto et al., ICLR 2025), as specified in docs/algorithm.md; registered as `--agent uld`."""

from __future__ import annotations

from uld.agents.registry import AgentSpec, BuildContext, register_agent, stacked_uld
from uld.agents.uld.config import ULDConfig, reduced_config
from uld.agents.uld.design_study import VARIANTS


def build(spec, config: ULDConfig, context: BuildContext):
    """ULD's agent and its LAP-prioritized replay (faded when the config asks: DR.Q)."""
    from uld.agents.uld.agent import ULDAgent, make_buffer

    agent = ULDAgent(spec, config, device=context.device, precision=context.precision, compiled=context.compiled,
                     cuda_graphs=context.cuda_graphs)
    return agent, make_buffer(spec, config, context.seed, context.device)


AGENT = register_agent(AgentSpec(
    name="uld", config=ULDConfig, build=build, small=reduced_config, title="ULD",
    description="ULD / MR.Q: model-based representations and a TD3-style actor-critic (docs/algorithm.md)",
    discrete_actions=True, pixels=True, design_study=VARIANTS, build_seeds=stacked_uld,
))
