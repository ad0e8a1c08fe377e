"""Faded prioritized replay (uld/replay/faded.py): hand-computed sampling probabilities after a known
sequence of adds that wraps the ring, draws that follow them, renormalisation, and exact checkpoints."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import uld.replay.faded as faded
from uld.replay.buffer import ReplayBuffer
from uld.replay.faded import floor_age

FADE, FLOOR = 0.5, 0.2  # factors by age: 1, 0.5, 0.25, then the floor 0.2 from age 3 (0.125 < 0.2)


def _buffer(capacity: int = 8) -> ReplayBuffer:
    return ReplayBuffer((1,), 1, capacity, horizon=1, fade=FADE, fade_floor=FLOOR, seed=0)


def _add(buffer: ReplayBuffer, adds: range) -> None:
    """One episode that goes on: add i stores obs i, action 0, reward i, next obs i + 1."""
    for i in adds:
        buffer.add(np.array([i], np.float32), np.zeros(1, np.float32), float(i), np.array([i + 1], np.float32),
                   False, False)


# Ten adds into eight slots: add i writes slot i % 8 and its next observation into slot (i + 1) % 8. Adds 8 and
# 9 wrap the ring into slots 0 and 1, and add 9's next observation overwrites slot 2 (add 2's transition is
# forgotten, so start 2 is invalid). Ages after the tenth add: slot 1 (add 9) 0, slot 0 (add 8) 1, slot 7 2,
# slots 6, 5, 4, 3 at least 3, on the floor. Slot 4's priority is then set to max(|32|, 1)^0.4 = 4.
EXPECTED = np.array([0.5, 1.0, 0.0, 0.2, 4 * 0.2, 0.2, 0.2, 0.25])


def _known_state(buffer: ReplayBuffer) -> None:
    _add(buffer, range(10))
    buffer.update_priorities([4], torch.tensor([32.0]))


def test_floor_age_is_the_first_age_on_the_floor():
    assert floor_age(0.5, 0.2) == 3
    assert floor_age(0.5, 0.25) == 2  # 0.5^2 is exactly the floor
    assert floor_age(0.9999, 0.1) == 23_025  # DR.Q's: 0.9999^23025 = 0.09999..., 0.9999^23024 > 0.1
    assert floor_age(0.5, 1.0) == 0


@pytest.mark.parametrize("renormalise_range", [None, 2.0**2, 2.0])
def test_hand_computed_probabilities_after_a_ring_wrap(monkeypatch, renormalise_range):
    """P(i) = p_i v_i max(0.5^age_i, 0.2) / total, with the reference of the young slots moved every 2
    insertions, every insertion, or never (the weights are the same).

    Tolerance 1e-12 relative: each weight is a float64 product of at most three powers of 0.5 and a
    priority 4^1 computed as 32^0.4 (a pow, correct to a few ulps, 1e-16 each).
    """
    if renormalise_range is not None:
        monkeypatch.setattr(faded, "RENORMALISE_RANGE", renormalise_range)
    buffer = _buffer()
    _known_state(buffer)
    expected = torch.tensor(EXPECTED, dtype=torch.float64)
    weights = buffer.sampling_weight(np.arange(8))
    torch.testing.assert_close(weights, expected, rtol=1e-12, atol=0)
    torch.testing.assert_close(buffer.total_weight, expected.sum(), rtol=1e-12, atol=0)
    if renormalise_range == 2.0:
        assert buffer.tree.ref == buffer.tree.clock == 10


def test_draws_follow_the_faded_probabilities():
    """200,000 draws: each slot's frequency within 5 binomial standard deviations of its probability
    (sqrt(p (1 - p) / n) <= 0.0012); the buffer's generator is seeded, so the draws are the same every run."""
    buffer = _buffer()
    _known_state(buffer)
    n = 200_000
    counts = torch.bincount(buffer.sample_index(n), minlength=8).double() / n
    probability = torch.tensor(EXPECTED / EXPECTED.sum())
    tolerance = 5 * (probability * (1 - probability) / n).sqrt()
    assert counts[2] == 0  # an invalid start is never drawn
    assert ((counts - probability).abs() <= tolerance).all(), (counts, probability)


def test_a_slot_moves_to_the_floor_tree_when_its_factor_stops_changing():
    """After four adds, the first slot (age 3 = A) has left the fading tree for the floor tree, with weight
    1 x 0.2, and the fading tree holds the three newest (ages 2, 1, 0)."""
    buffer = _buffer(capacity=16)
    _add(buffer, range(4))
    tree = buffer.tree
    buffer.refresh()
    assert tree.old.get(torch.tensor([0])).item() == pytest.approx(FLOOR)  # age 3
    assert tree.young.get(torch.tensor([0])).item() == 0
    assert [tree.young.get(torch.tensor([slot])).item() > 0 for slot in range(1, 4)] == [True, True, True]


def test_checkpoint_restores_the_ages_and_sampling_continues_exactly():
    """A buffer loaded from a checkpoint has the same weights, and after the same further adds and
    priority updates it draws the same slots as the buffer that went on (bitwise)."""
    original = _buffer()
    _known_state(original)
    state = original.state_dict()
    assert set(state["fade"]) == {"birth", "clock", "ref", "recent"} and state["fade"]["clock"] == 10
    restored = _buffer()
    restored.load_state_dict(state)
    assert torch.equal(restored.sampling_weight(np.arange(8)), original.sampling_weight(np.arange(8)))
    for buffer in (original, restored):
        _add(buffer, range(10, 13))
        buffer.update_priorities([5, 6], torch.tensor([3.0, 7.0]))
    assert torch.equal(restored.sampling_weight(np.arange(8)), original.sampling_weight(np.arange(8)))
    assert torch.equal(restored.sample_index(64), original.sample_index(64))


def test_a_checkpoint_without_ages_is_refused_in_one_sentence():
    plain = ReplayBuffer((1,), 1, 8, horizon=1, seed=0)
    _add(plain, range(3))
    from uld.errors import UldError

    with pytest.raises(UldError, match="no fade ages"):
        _buffer().load_state_dict(plain.state_dict())
