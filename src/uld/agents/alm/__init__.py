"""ALM, Aligned Latent Models (Ghugare et al., ICLR 2023), as specified in docs/alm.md; registered as `--agent alm`."""

from __future__ import annotations

from uld.agents.alm.config import ALMConfig, alm_protocol, reduced_config
from uld.agents.registry import AgentSpec, BuildContext, register_agent


def build(spec, config: ALMConfig, context: BuildContext):
    """The ALM agent and its FIFO replay sized by the run's budget."""
    from uld.agents.alm.agent import ALMAgent, make_buffer

    # The agent refuses discrete actions and pixels before the buffer allocates anything.
    agent = ALMAgent(spec, config, device=context.device, precision=context.precision, compiled=context.compiled)
    return agent, make_buffer(spec, config, context.seed, context.total_steps, context.device)


AGENT = register_agent(AgentSpec(
    name="alm", config=ALMConfig, build=build, small=reduced_config, title="ALM", protocol=alm_protocol,
    description="ALM: one lower bound of the return trains encoder, latent model and policy (docs/alm.md)",
    discrete_actions=False, pixels=False,
))
