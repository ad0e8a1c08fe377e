"""torch.compile for an agent's networks: the same modules, same parameters, same state_dict.

Each network's forward is compiled in place (``nn.Module.compile``), so an agent keeps one copy of its
algorithm and checkpoints stay interchangeable between compiled and eager runs. Shapes are static
(``dynamic=False``): an agent sees a handful of batch shapes (acting, the update batch, the encoder's
H-step batch), each compiled once.

Where it should pay: on GPUs, where it removes kernel launches. On a CPU the GEMMs, which compilation
does not speed up, are most of the step (figures: docs/speed.md, ``benchmarks/speed.py --compile``).
"""

from __future__ import annotations

from torch import nn


def compile_networks(*modules: nn.Module) -> None:
    """Compile each module's forward in place."""
    for module in modules:
        module.compile(dynamic=False)
