"""torch.compile for an agent's networks: the same modules, same parameters, same state_dict.

Each network's forward is compiled in place (``nn.Module.compile``), so an agent keeps one copy of its
algorithm and checkpoints stay interchangeable between compiled and eager runs. Shapes are static
(``dynamic=False``): an agent sees a handful of batch shapes (acting, the update batch, the encoder's
H-step batch), each compiled once.

Where it should pay: on GPUs, where it removes kernel launches (not measured yet: no GPU here). On a
2-core CPU the compiled step measures the same as the eager one (``benchmarks/speed.py --compile``):
the GEMMs, which compilation does not speed up, are most of the step.
"""

from __future__ import annotations

from torch import nn


def compile_networks(*modules: nn.Module) -> None:
    """Compile each module's forward in place."""
    for module in modules:
        module.compile(dynamic=False)
