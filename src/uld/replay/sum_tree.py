"""A sum tree over non-negative weights in one tensor: O(log N) updates and O(B log N) proportional sampling.

LAP (docs/algorithm.md, Replay) samples start indices with probability proportional to their priority.
Recomputing a cumulative sum over a 1M-slot buffer for every batch would cost O(capacity) per
training step; the tree keeps every update and every draw logarithmic.

Layout. One float64 tensor of 2L entries on the buffer's device, L = the capacity rounded up to a
power of two: node 1 is the root, the children of node n are 2n and 2n + 1, leaves are L .. 2L - 1.
Viewed as (L, 2), row n holds the two children of node n, so a level is read with one gather.
Updates and draws walk the log2(L) levels with a fixed number of tensor operations each and no
value ever read back to the host: the same code runs on a CPU, on a GPU, and inside a CUDA graph.
"""

from __future__ import annotations

import torch
from torch import Tensor


class SumTree:
    """Binary tree whose leaves hold weights and whose inner nodes hold the sums of their children."""

    def __init__(self, capacity: int, device: torch.device | str = "cpu"):
        self.capacity = capacity
        self._leaves = 1 << max(1, (capacity - 1).bit_length())
        self._depth = self._leaves.bit_length() - 1
        self._tree = torch.zeros(2 * self._leaves, dtype=torch.float64, device=device)
        self.nbytes = self._tree.nbytes
        self._pairs = self._tree.view(-1, 2)  # row n: children of node n

    def written_tensors(self) -> list[Tensor]:
        """The tensors `set` writes in place (what a failed CUDA graph capture must restore)."""
        return [self._tree]

    @property
    def total(self) -> Tensor:
        """Sum of all weights (a 0-d tensor on the tree's device)."""
        return self._tree[1]

    def get(self, index: Tensor) -> Tensor:
        """The weights stored at the given leaves."""
        return self._tree[self._leaves + index]

    def set(self, index: Tensor, weight: Tensor) -> None:
        """Set several leaves at once and the inner nodes above them.

        Where an index repeats, every occurrence must carry the same weight (the buffer resolves
        repeated priority updates before calling): parents are then written with identical sums by
        every occurrence, so the result does not depend on the order of the writes.
        """
        node = index + self._leaves
        self._tree[node] = weight.to(torch.float64)
        for _ in range(self._depth):
            node = node >> 1
            self._tree[node] = self._pairs[node].sum(1)

    def rebuild(self, leaves: Tensor) -> None:
        """Set every leaf (capacity weights; the rest are zero) and recompute the tree bottom-up."""
        self._tree.zero_()
        self._tree[self._leaves : self._leaves + self.capacity] = leaves
        width = self._leaves
        while width > 1:
            self._tree[width // 2 : width] = self._tree[width : 2 * width].view(-1, 2).sum(1)
            width //= 2

    def sample(self, batch_size: int, generator: torch.Generator) -> Tensor:
        """Draw leaf indices with probability weight / total, independently, with replacement.

        Returns int64 indices on the tree's device. With a zero total (nothing to draw) the result is
        the last stored leaf, clamped into range: callers check `total` beforehand where it can be 0.
        """
        mass = torch.rand(batch_size, generator=generator, dtype=torch.float64, device=self._tree.device) * self._tree[1]
        return self.descend(mass)

    def descend(self, mass: Tensor) -> Tensor:
        """The leaf at which the running sum of weights passes each `mass` (float64, in [0, total])."""
        node = torch.ones(mass.shape[0], dtype=torch.int64, device=self._tree.device)
        for _ in range(self._depth):
            children = self._pairs[node]
            left_mass, right_mass = children[:, 0], children[:, 1]
            # Never descend into an empty subtree, even when rounding puts `mass` on its border (an
            # empty left subtree, mass >= 0, is left for the right one).
            go_right = (mass >= left_mass) & (right_mass > 0)
            mass = torch.where(go_right, mass - left_mass, mass)
            node = torch.add(go_right, node, alpha=2)  # 2 node + go_right
        return (node - self._leaves).clamp_(max=self.capacity - 1)
