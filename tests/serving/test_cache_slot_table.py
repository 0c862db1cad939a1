"""The slot table's state machine on CPU: after every add / activate / pin / evict the
table is asserted (STYLE.md), including "never evict what a running batch uses" and
"waiting requests never keep slots from the batch"."""

from __future__ import annotations

import pytest
import torch

from modeling.serve_forms import ServeWeights
from serving.slot_table import NoFreeSlot, SlotTable

D = 4


def frozen():
    return {"lm.shared.weight": torch.zeros(8, D)}


def prompt_set(value: float, length: int = 2) -> ServeWeights:
    """A set whose prompt rows are all `value` (so each slot's content is recognisable)."""
    return ServeWeights(prompt=torch.full((length, D), value))


def table(capacity: int = 3, budget: int = 10_000, on_event=None) -> SlotTable:
    return SlotTable(capacity, budget, frozen(), D, torch.zeros(()), on_event)


def key(name: str) -> tuple[str, int, str]:
    return (name, 1, "vqa")


def idle(slots: SlotTable, name: str, weights: ServeWeights) -> int:
    """Activate `name` for one row that ends at once: the slot stays filled but unheld."""
    slot = slots.activate(key(name), weights)
    slots.leave(slot)
    return slot


def test_activate_pin_rows_and_evict_step_by_step():
    slots = table()
    assert idle(slots, "a", prompt_set(1)) == 0
    assert slots.snapshot() == [key("a"), None, None]
    assert slots.activate(key("b"), prompt_set(2)) == 1  # a running row holds b
    assert idle(slots, "c", prompt_set(3)) == 2
    assert idle(slots, "a", prompt_set(1)) == 0  # hit: same slot, now most recent
    assert idle(slots, "d", prompt_set(4)) == 2  # LRU unheld one is c (b held by a row)
    assert slots.snapshot() == [key("a"), key("b"), key("d")]
    slots.pin(("a", 1))
    assert slots.activate(key("d"), prompt_set(4)) == 2  # a row holds d
    with pytest.raises(NoFreeSlot, match="in use or pinned"):
        slots.activate(key("e"), prompt_set(5))
    assert slots.snapshot() == [key("a"), key("b"), key("d")]  # a failed add changes nothing
    slots.acquire(("b", 1))  # a request for b waits in the queue
    slots.leave(1)  # b's row ended
    assert slots.evict(("b", 1)) == []  # retiring b waits for its queued request
    assert slots.release(("b", 1)) == 0
    assert slots.evict(("b", 1)) == [1]
    assert slots.snapshot() == [key("a"), None, key("d")]
    slots.unpin(("a", 1))
    slots.leave(2)
    assert idle(slots, "e", prompt_set(5)) == 1  # a free slot first
    assert idle(slots, "f", prompt_set(6)) == 0  # then the unheld LRU (a)
    assert slots.snapshot() == [key("f"), key("e"), key("d")]
    with pytest.raises(RuntimeError, match="without a matching acquire"):
        slots.release(("a", 1))
    with pytest.raises(RuntimeError, match="no row holds"):
        slots.leave(0)


def test_requests_waiting_for_an_adapter_do_not_keep_its_slots_from_other_rows():
    """Queued requests hold their version, not a slot: with more (adapter, task) sets than
    slots, every set still gets a slot once the rows before it end."""
    slots = table(capacity=2)
    for name in "abc":
        slots.acquire((name, 1))  # one request waits for each adapter
    first = slots.activate(key("a"), prompt_set(1))
    second = slots.activate(key("b"), prompt_set(2))
    with pytest.raises(NoFreeSlot):
        slots.activate(key("c"), prompt_set(3))  # both slots held by running rows
    slots.leave(first)
    assert slots.activate(key("c"), prompt_set(3)) == first  # a's slot, though a still waits
    slots.leave(second)
    assert slots.snapshot() == [key("c"), key("b")]


def test_bank_rows_follow_slots_and_numbers_never_move():
    events = []
    slots = table(on_event=events.append)
    idle(slots, "a", prompt_set(1, length=1))
    idle(slots, "b", prompt_set(2, length=3))
    bank = slots.bank()
    assert bank.prompt_length.tolist() == [1, 3, 0]
    assert torch.equal(bank.prompt[1, :3], torch.full((3, D), 2.0))
    slots.evict(("a", 1))
    idle(slots, "c", prompt_set(7, length=2))
    assert slots.bank() is bank  # c fits the bank's shapes: written into slot 0 in place
    assert bank.prompt_length.tolist() == [2, 3, 0]  # c took slot 0; b stayed in slot 1
    assert torch.equal(bank.prompt[0, :2], torch.full((2, D), 7.0))
    idle(slots, "d", prompt_set(5, length=4))  # longer than any prompt in the bank
    restacked = slots.bank()
    assert restacked is not bank and restacked.prompt_length.tolist() == [2, 3, 4]
    assert events.count("restack") == 2  # the first build and the longer prompt only
    assert torch.equal(restacked.prompt[2], torch.full((4, D), 5.0))


def test_byte_budget_evicts_lru_and_refuses_what_never_fits():
    one_set = 2 * D * 4  # a length-2 prompt in float32
    slots = table(capacity=8, budget=2 * one_set)
    idle(slots, "a", prompt_set(1))
    idle(slots, "b", prompt_set(2))
    idle(slots, "c", prompt_set(3))
    assert slots.snapshot()[:3] == [key("c"), key("b"), None]
    assert slots.used_bytes() == 2 * one_set
    with pytest.raises(NoFreeSlot, match="budget"):
        slots.activate(key("big"), prompt_set(9, length=10))
    state = slots.adapter_state(("b", 1))
    assert state["bytes"] == one_set and state["slots"] == 1 and state["in_flight"] == 0
