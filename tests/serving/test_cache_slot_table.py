"""The slot table's state machine on CPU: after every add / place / pin / evict the
table is asserted (STYLE.md), including "never evict what a running batch uses". Pins and
in-flight references belong to the adapter lifecycle (test_lifecycle.py), which names the
pinned versions to `place` and evicts a version only once no request uses it."""

from __future__ import annotations

import pytest
import torch

from modeling.serve_forms import AdapterSet
from serving.slot_table import NoFreeSlot, SlotTable

D = 4


def frozen():
    return {"lm.shared.weight": torch.zeros(8, D)}


def prompt_set(value: float, length: int = 2) -> AdapterSet:
    """A set whose prompt rows are all `value` (so each slot's content is recognisable)."""
    return AdapterSet(prompt=torch.full((length, D), value))


def make_table(capacity: int = 3, budget: int = 10_000, on_event=None) -> SlotTable:
    return SlotTable(capacity, budget, frozen(), D, torch.zeros(()), on_event)


def key(name: str) -> tuple[str, int, str]:
    return (name, 1, "vqa")


def keys(table: SlotTable) -> list[tuple[str, int, str] | None]:
    """The key of every slot, in slot order (None: empty)."""
    return [None if info is None else info.key for info in table.snapshot()]


def idle(table: SlotTable, name: str, adapter_set: AdapterSet) -> int:
    """Place `name` for one row that ends at once: the slot stays filled but unheld."""
    slot = table.place(key(name), adapter_set)
    table.leave(slot)
    return slot


def test_place_pin_rows_and_evict_step_by_step():
    table = make_table()
    assert idle(table, "a", prompt_set(1)) == 0
    assert keys(table) == [key("a"), None, None]
    assert table.place(key("b"), prompt_set(2)) == 1  # a running row holds b
    assert idle(table, "c", prompt_set(3)) == 2
    assert idle(table, "a", prompt_set(1)) == 0  # hit: same slot, now most recent
    assert idle(table, "d", prompt_set(4)) == 2  # LRU unheld one is c (b held by a row)
    assert keys(table) == [key("a"), key("b"), key("d")]
    pinned = {("a", 1)}
    assert table.place(key("d"), prompt_set(4), pinned) == 2  # a row holds d
    with pytest.raises(NoFreeSlot, match="in use or pinned"):
        table.place(key("e"), prompt_set(5), pinned)
    assert keys(table) == [key("a"), key("b"), key("d")]  # a failed add changes nothing
    with pytest.raises(RuntimeError, match="still hold slots"):
        table.evict(("b", 1))  # a row still decodes with b: never freed
    assert keys(table) == [key("a"), key("b"), key("d")]
    table.leave(1)  # b's row ended
    assert table.evict(("b", 1)) == [1]
    assert keys(table) == [key("a"), None, key("d")]
    table.leave(2)
    assert idle(table, "e", prompt_set(5)) == 1  # a free slot first
    assert idle(table, "f", prompt_set(6)) == 0  # then the unheld LRU (a, no longer pinned)
    assert keys(table) == [key("f"), key("e"), key("d")]
    with pytest.raises(RuntimeError, match="no row holds"):
        table.leave(0)


def test_rows_hold_slots_and_a_free_slot_goes_to_the_next_set():
    """With more (adapter, task) sets than slots, every set gets a slot once the rows
    before it end (requests that merely wait hold no slot: test_lifecycle.py)."""
    table = make_table(capacity=2)
    first = table.place(key("a"), prompt_set(1))
    second = table.place(key("b"), prompt_set(2))
    with pytest.raises(NoFreeSlot):
        table.place(key("c"), prompt_set(3))  # both slots held by running rows
    table.leave(first)
    assert table.place(key("c"), prompt_set(3)) == first
    table.leave(second)
    assert keys(table) == [key("c"), key("b")]
    assert [info.rows for info in table.snapshot()] == [1, 0]


def test_bank_rows_follow_slots_and_numbers_never_move():
    events = []
    table = make_table(on_event=events.append)
    idle(table, "a", prompt_set(1, length=1))
    idle(table, "b", prompt_set(2, length=3))
    bank = table.bank()
    assert bank.prompt_length.tolist() == [1, 3, 0]
    assert torch.equal(bank.prompt[1, :3], torch.full((3, D), 2.0))
    table.evict(("a", 1))
    idle(table, "c", prompt_set(7, length=2))
    assert table.bank() is bank  # c fits the bank's shapes: written into slot 0 in place
    assert bank.prompt_length.tolist() == [2, 3, 0]  # c took slot 0; b stayed in slot 1
    assert torch.equal(bank.prompt[0, :2], torch.full((2, D), 7.0))
    idle(table, "d", prompt_set(5, length=4))  # longer than any prompt in the bank
    restacked = table.bank()
    assert restacked is not bank and restacked.prompt_length.tolist() == [2, 3, 4]
    assert events.count("restack") == 2  # the first build and the longer prompt only
    assert torch.equal(restacked.prompt[2], torch.full((4, D), 5.0))


def test_byte_budget_evicts_lru_and_refuses_what_never_fits():
    one_set = 2 * D * 4  # a length-2 prompt in float32
    table = make_table(capacity=8, budget=2 * one_set)
    idle(table, "a", prompt_set(1))
    idle(table, "b", prompt_set(2))
    idle(table, "c", prompt_set(3))
    assert keys(table)[:3] == [key("c"), key("b"), None]
    assert sum(info.nbytes for info in table.snapshot() if info is not None) == 2 * one_set
    with pytest.raises(NoFreeSlot, match="budget"):
        table.place(key("big"), prompt_set(9, length=10))
    (state,) = [info for info in table.snapshot() if info is not None and info.key == key("b")]
    assert state.nbytes == one_set and state.rows == 0
