"""Comparisons of floating-point results against bounds derived from the computation, and a record of how
close each comes to its bound.

With ULD_TEST_RATIOS=<file>, every comparison appends `<test id>\t<what>\t<error / bound>` to the file, so that
one can run the numerics tests under several kernel choices (ATEN_CPU_CAPABILITY, ONEDNN_MAX_CPU_ISA,
ULD_ONEDNN_LINEAR) and tabulate the worst ratio of each case (scripts/numerics_ratios.py). A bound that a
kernel change brings near 1 is a bound that passes by luck of rounding.
"""

from __future__ import annotations

import os

import torch

FP32_EPS = torch.finfo(torch.float32).eps  # 2^-23: one rounding of fp32 is at most half of this, relative
BF16_EPS = torch.finfo(torch.bfloat16).eps  # 2^-7
# AdamW as both agents build it (uld.agents.uld.agent._adamw, StackedULD._adamw).
ADAM_EPS = 1e-8


def record(what: str, error: float, bound: float) -> float:
    """The ratio error / bound, appended to $ULD_TEST_RATIOS when it is set."""
    ratio = error / bound if bound > 0 else (0.0 if error == 0 else float("inf"))
    path = os.environ.get("ULD_TEST_RATIOS")
    if path:
        test = os.environ.get("PYTEST_CURRENT_TEST", "?").rsplit(" ", 1)[0]
        with open(path, "a") as f:
            f.write(f"{test}\t{what}\t{ratio:.6g}\n")
    return ratio


def assert_within(what: str, error: torch.Tensor | float, bound: torch.Tensor | float) -> None:
    """Every entry of |error| at most its bound (tensors broadcast); the worst ratio is recorded."""
    error_t = torch.as_tensor(error, dtype=torch.float64).abs()
    bound_t = torch.as_tensor(bound, dtype=torch.float64).expand_as(error_t) if error_t.dim() else \
        torch.as_tensor(bound, dtype=torch.float64)
    ratios = torch.where(bound_t > 0, error_t / bound_t.clamp_min(1e-300),
                         torch.where(error_t > 0, torch.inf, 0.0).to(torch.float64))
    worst = int(ratios.argmax()) if ratios.dim() else 0
    err, bnd = float(error_t.flatten()[worst]), float(bound_t.flatten()[worst])
    record(what, err, bnd)
    assert err <= bnd, f"{what}: |difference| {err:.3g} above its bound {bnd:.3g} (entry {worst})"


def sum_reorder_bound(term_sizes: torch.Tensor, n: int, eps: float = FP32_EPS) -> torch.Tensor:
    """How far two summation orders of n terms may end apart: each is within gamma_n = n u / (1 - n u) of the
    sum of the terms' magnitudes (u = eps / 2, Higham, Accuracy and Stability of Numerical Algorithms,
    Theorem 4.4), so the two are within twice that; `term_sizes` is that sum of magnitudes, entry by entry."""
    u = eps / 2
    return 2 * (n * u / (1 - n * u)) * term_sizes


def network_rounding_bound(outputs: torch.Tensor, layers: int, terms: int) -> torch.Tensor:
    """How far another kernel's fp32 outputs of a network may be from these, per row: each of `layers` layers
    sums at most `terms` products that the other kernel may reorder (sum_reorder_bound), and each is followed
    by a LayerNorm (or is the output), so that its terms are of the size of the row's largest output."""
    return layers * sum_reorder_bound(outputs.detach().double().abs().amax(-1), terms)


def adam_first_step(grad: torch.Tensor) -> torch.Tensor:
    """AdamW's first update direction, m_hat / (sqrt(v_hat) + eps) = g / (|g| + eps), in float64.

    The step moves a parameter by lr times this (besides weight decay): at most lr, and by nearly lr for any
    gradient far above eps, whatever its sign, so a gradient entry that is zero to rounding gets moved by up to
    lr in a direction rounding chose. Comparing the parameters of two runs after a first step therefore compares
    p1 - p2 with lr * (direction(g1) - direction(g2)) computed from the gradients each run actually had.
    """
    g = grad.double()
    return g / (g.abs() + ADAM_EPS)


def assert_same_argmax(what: str, actions, reference_logits: torch.Tensor, bound: torch.Tensor | float) -> None:
    """Actions computed by another kernel are the reference logits' argmax wherever rounding cannot decide.

    If each logit may be off by at most `bound` (per row), an argmax can flip only where the top two reference
    logits are within 2 x bound: a different action there is rounding, anywhere else an error. At least half
    of the rows must be decisive, so that the comparison checks something.
    """
    logits = torch.as_tensor(reference_logits).double()
    actions = torch.as_tensor(actions).long()
    bound_t = torch.as_tensor(bound, dtype=torch.float64).expand(len(logits))
    top = logits.topk(2, dim=-1).values
    margin = top[:, 0] - top[:, 1]
    decisive = margin > 2 * bound_t
    assert decisive.float().mean() >= 0.5, f"{what}: only {int(decisive.sum())} of {len(logits)} rows decisive"
    flipped = actions != logits.argmax(-1)
    assert not (flipped & decisive).any(), \
        f"{what}: rows {(flipped & decisive).nonzero().flatten().tolist()} differ where the margin exceeds 2 x bound"


def main(paths: list[str]) -> None:
    """Print the worst error / bound ratio of each test case in ratio files, one column per file."""
    import collections

    worst: dict[str, dict[str, float]] = collections.defaultdict(dict)
    for path in paths:
        for line in open(path):
            test, _, ratio = line.rstrip("\n").split("\t")
            case = test.split("::", 1)[-1]
            worst[case][path] = max(worst[case].get(path, 0.0), float(ratio))
    print("case\t" + "\t".join(paths))
    for case in sorted(worst):
        print(case + "\t" + "\t".join(f"{worst[case][p]:.3g}" if p in worst[case] else "-" for p in paths))


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
