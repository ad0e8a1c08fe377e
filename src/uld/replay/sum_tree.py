"""A sum tree over non-negative weights: O(log N) updates and O(B log N) proportional sampling.

LAP (spec: Replay buffer) samples start indices with probability proportional to their priority.
Recomputing a cumulative sum over a 1M-slot buffer for every batch would cost O(capacity) per
training step; the tree keeps every update and every draw logarithmic.
"""

from __future__ import annotations

import numpy as np


class SumTree:
    """Binary tree whose leaves hold weights and whose inner nodes hold the sums of their children."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self._leaves = 1 << max(1, (capacity - 1).bit_length())
        self._tree = np.zeros(2 * self._leaves, dtype=np.float64)

    @property
    def total(self) -> float:
        """Sum of all weights."""
        return float(self._tree[1])

    def get(self, index: np.ndarray | int) -> np.ndarray | float:
        """The weight stored at one or several leaves."""
        return self._tree[self._leaves + np.asarray(index)]

    def set_one(self, index: int, weight: float) -> None:
        """Set one leaf; a scalar path walk is cheaper than array bookkeeping for a single update."""
        node = self._leaves + int(index)
        tree = self._tree
        tree[node] = weight
        node >>= 1
        while node:
            tree[node] = tree[2 * node] + tree[2 * node + 1]
            node >>= 1

    def set_many(self, index: np.ndarray, weight: np.ndarray) -> None:
        """Set several leaves at once (duplicates take the last value)."""
        nodes = self._leaves + np.asarray(index, dtype=np.int64)
        self._tree[nodes] = weight
        nodes = np.unique(nodes >> 1)
        while nodes[0] > 0:
            self._tree[nodes] = self._tree[2 * nodes] + self._tree[2 * nodes + 1]
            nodes = np.unique(nodes >> 1)

    def sample(self, batch_size: int, rng: np.random.Generator) -> np.ndarray:
        """Draw leaf indices with probability weight / total, independently, with replacement."""
        tree = self._tree
        mass = rng.random(batch_size) * tree[1]
        node = np.ones(batch_size, dtype=np.int64)
        while node[0] < self._leaves:
            left = 2 * node
            left_mass, right_mass = tree[left], tree[left + 1]
            # Never descend into an empty subtree, even when rounding puts `mass` on its border.
            go_right = ((mass >= left_mass) & (right_mass > 0)) | (left_mass <= 0)
            mass = np.where(go_right, mass - left_mass, mass)
            node = left + go_right
        return node - self._leaves

    def state_dict(self) -> dict[str, np.ndarray]:
        return {"tree": self._tree.copy()}

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        self._tree[:] = state["tree"]
