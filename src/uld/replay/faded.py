"""Faded prioritized replay (DR.Q, spec/DRQ.md D3): a start's weight is its LAP weight times an age factor.

P(i) ∝ w_i · max(fade^age_i, floor), where w_i is what the replay would sample with unfaded (priority
if valid, else 0) and age_i counts the insertions since slot i was written. Every insertion changes
every slot's factor, so keeping the factors themselves in a sum tree would cost a pass over the ring
per step. Two observations make it O(log N):

- A factor only changes until it reaches the floor: after A insertions (the first age with
  fade^A <= floor) it is the constant `floor`. Slots that old sit in a sum tree of their own, with
  leaves w_i · floor. Exactly one slot (the one written A insertions earlier) crosses at each
  insertion: its leaf moves from one tree to the other, O(log N).
- The younger slots all fade by the same ratio at each insertion, so their tree holds them relative
  to a reference insertion count `ref`: leaf w_i · fade^(ref - birth_i), and the true weights are the
  leaves times c = fade^(clock - ref). Nothing is rewritten when the clock moves; `ref` moves to the
  clock every `renormalise_every` insertions (before fade^(ref - birth) could overflow float64), and
  the young tree is then rebuilt from the stored w_i, O(N) once per that many insertions.

A draw splits its uniform mass between the two trees: below c · (young total) it descends the young
tree with mass / c, otherwise the old tree with what is left. Draws, gathers and weight updates are
tensor operations with no value read back to the host (a CUDA graph replays them, as SumTree's).
The host knows which slot each insertion wrote, so it decides the crossings; the births, the clock and
`ref` are device tensors, written with the replay's other staged adds before its next read.
"""

from __future__ import annotations

import math
from collections import deque

import torch
from torch import Tensor

from uld.replay.sum_tree import SumTree

RENORMALISE_RANGE = 2.0**200
"""How far fade^(ref - birth) may grow before `ref` moves to the clock (float64 reaches 1.8e308)."""


def floor_age(fade: float, floor: float) -> int:
    """A: the first age at which fade^age <= floor (the factor is the floor from then on)."""
    age = max(0, math.ceil(math.log(floor) / math.log(fade)) - 1)
    while fade**age > floor:  # math.log rounds: settle the boundary on the exact powers used
        age += 1
    return age


class FadedTree:
    """The sampling weights of a replay, faded by age: SumTree's interface (set, get, total, sample,
    rebuild) over the unfaded weights w_i, plus `insert(slot)` at each insertion.

    Args:
        capacity: slots of the replay.
        fade: factor per insertion, in (0, 1).
        floor: the factor's lower bound, in (0, 1].
        device: the replay's device.
        renormalise_every: insertions between moves of the reference (default: the most that keeps
            the young leaves below RENORMALISE_RANGE).
    """

    def __init__(self, capacity: int, fade: float, floor: float, device: torch.device | str = "cpu",
                 renormalise_every: int | None = None):
        if not 0 < fade < 1 or not 0 < floor <= 1:
            raise ValueError(f"the fade must be in (0, 1) and the floor in (0, 1], got {fade} and {floor}")
        self.capacity, self.fade, self.floor = capacity, fade, floor
        self.device = torch.device(device)
        self.floor_age = floor_age(fade, floor)
        self.renormalise_every = renormalise_every or max(1, int(math.log(RENORMALISE_RANGE) / -math.log(fade)))
        self.young, self.old = SumTree(capacity, self.device), SumTree(capacity, self.device)
        self.nbytes = self.young.nbytes + self.old.nbytes + capacity * 16
        self._weight = torch.zeros(capacity, dtype=torch.float64, device=self.device)  # unfaded w_i
        self._birth = torch.zeros(capacity, dtype=torch.int64, device=self.device)
        self._clock_ref = torch.zeros(2, dtype=torch.int64, device=self.device)  # (clock, ref) on the device
        self.clock = self.ref = 0  # insertions so far; the young leaves' reference
        # Slots of the last A insertions, oldest first: the one that reaches the floor at the next insertion.
        self._recent: deque[int] = deque(maxlen=max(1, self.floor_age))
        self._births: dict[int, int] = {}  # births not yet on the device
        self._renormalise = False

    # ---- host side: insertions ----------------------------------------------------------------

    def insert(self, slot: int) -> list[int]:
        """Slot `slot` was written by the insertion that moves the clock on; returns the slots whose
        leaves must be set again: it, and the slot written A insertions earlier, which reaches the floor now."""
        crossed = [self._recent[0]] if self.floor_age and len(self._recent) == self.floor_age else []
        self._recent.append(slot)
        self.clock += 1
        self._births[slot] = self.clock  # age = clock - birth: 0 for the newest slot
        if self.clock - self.ref >= self.renormalise_every:
            self.ref, self._renormalise = self.clock, True
        return [slot, *crossed]

    def _sync(self) -> None:
        """Write the staged births, the clock and the reference to the device (nothing to do inside an update)."""
        if self._births:
            slots = torch.as_tensor(list(self._births), dtype=torch.int64).to(self.device)
            self._birth[slots] = torch.as_tensor(list(self._births.values()), dtype=torch.int64).to(self.device)
            self._births.clear()
            self._clock_ref.copy_(torch.tensor([self.clock, self.ref]))
        if self._renormalise:  # staged with a birth, so the reference on the device is the new one
            self._renormalise = False
            self._rebuild()

    # ---- the SumTree interface ----------------------------------------------------------------

    def _leaves(self, index: Tensor | slice, weight: Tensor) -> tuple[Tensor, Tensor]:
        """(young leaves, old leaves) of the slots `index` with unfaded weights `weight`."""
        clock, ref = self._clock_ref[0], self._clock_ref[1]
        birth = self._birth[index]
        young = (clock - birth) < self.floor_age
        relative = torch.pow(self.fade, (ref - birth).double())
        return torch.where(young, weight * relative, 0.0), torch.where(young, 0.0, weight * self.floor)

    def set(self, index: Tensor, weight: Tensor) -> None:
        """Set the unfaded weights of some slots (repeated slots carry equal weights, as for SumTree.set)."""
        self._sync()
        weight = weight.to(torch.float64)
        self._weight[index] = weight
        young, old = self._leaves(index, weight)
        self.young.set(index, young)
        self.old.set(index, old)

    def written_tensors(self) -> list[Tensor]:
        """The tensors `set` writes in place (what a failed CUDA graph capture must restore)."""
        return [self._weight, *self.young.written_tensors(), *self.old.written_tensors()]

    def rebuild(self, leaves: Tensor) -> None:
        """Set every slot's unfaded weight and recompute both trees."""
        self._weight.copy_(leaves)
        self._sync()
        self._rebuild()

    def _rebuild(self) -> None:
        young, old = self._leaves(slice(None), self._weight)
        self.young.rebuild(young)
        self.old.rebuild(old)

    def _scale(self) -> Tensor:
        """c = fade^(clock - ref): the young tree's leaves times c are the true weights."""
        return torch.pow(self.fade, (self._clock_ref[0] - self._clock_ref[1]).double())

    @property
    def total(self) -> Tensor:
        """Sum of the faded weights (a 0-d device tensor)."""
        self._sync()
        return self.young.total * self._scale() + self.old.total

    def get(self, index: Tensor) -> Tensor:
        """The faded weights of the given slots."""
        self._sync()
        return self.young.get(index) * self._scale() + self.old.get(index)

    def sample(self, batch_size: int, generator: torch.Generator) -> Tensor:
        """Slots drawn with probability faded weight / total, independently, with replacement."""
        self._sync()
        scale = self._scale()
        young_mass = self.young.total * scale
        mass = torch.rand(batch_size, generator=generator, dtype=torch.float64, device=self.device) * (
            young_mass + self.old.total)
        in_young = (mass < young_mass) | (self.old.total <= 0)
        from_young = self.young.descend(mass / scale)
        from_old = self.old.descend((mass - young_mass).clamp(min=0.0))
        return torch.where(in_young, from_young, from_old)

    # ---- state --------------------------------------------------------------------------------

    def state_dict(self, used: int) -> dict:
        """Births of the written slots, the clock, the reference and the recent insertions (the unfaded
        weights come back from the replay's priorities and validity)."""
        self._sync()
        return {"birth": self._birth[:used].cpu().clone(), "clock": self.clock, "ref": self.ref,
                "recent": torch.tensor(list(self._recent), dtype=torch.int64)}

    def load_state_dict(self, state: dict) -> None:
        """Restore what state_dict returned; the replay then calls rebuild with the unfaded weights."""
        birth = torch.as_tensor(state["birth"])
        self._birth.zero_()
        self._birth[: birth.shape[0]] = birth.to(self.device)
        self.clock, self.ref = int(state["clock"]), int(state["ref"])
        self._recent.clear()
        self._recent.extend(int(slot) for slot in torch.as_tensor(state["recent"]).tolist())
        self._births.clear()
        self._clock_ref.copy_(torch.tensor([self.clock, self.ref]))
        self._renormalise = False
