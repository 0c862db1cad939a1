"""Host -> accelerator tier: which adapter set sits in which slot of the stacked bank.

A slot holds one adapter set for one task, keyed `(name, version, task)`. The compute
reads only `bank()` (a `AdapterBank` on the device) and each row's slot number; it
knows nothing of this table (STYLE.md, "cache apart from compute").

Rules:
- a slot keeps its number while it is occupied, so rows already decoding keep reading
  the right weights when other slots change;
- a batch row holds its slot from `place` until `leave`; eviction is LRU over slots that
  no row holds and whose adapter the caller does not name as pinned: what a running batch
  uses is never evicted, and `evict` of a slot a row holds is a bug (RuntimeError);
- a byte budget and a slot count bound the table.

The table keeps no pins and no in-flight counts: which versions serve, which are pinned
and when an old version leaves the device is `serving.lifecycle.AdapterLifecycle`'s
decision, made on the engine thread, the only thread that changes this table. Every
method takes one lock, so other threads may read `snapshot()`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Collection
from dataclasses import dataclass, replace

import torch

from modeling.bank import AdapterBank, build_bank, write_slot
from modeling.serve_forms import AdapterSet
from serving.adapter_store import AdapterKey

SlotKey = tuple[str, int, str]  # (adapter name, version, task)


class NoFreeSlot(RuntimeError):
    """Every slot (or the byte budget) is taken by adapters in use or pinned."""


@dataclass
class SlotInfo:
    """One occupied slot: its set's key, device bytes, last placement (unix s) and how
    many batch rows hold it."""

    key: SlotKey
    nbytes: int
    last_used: float
    rows: int = 0

    @property
    def adapter(self) -> AdapterKey:
        return self.key[:2]


class SlotTable:
    """A fixed number of slots over one device bank, with LRU and per-slot row counts."""

    def __init__(self, capacity: int, budget_bytes: int, frozen: dict[str, torch.Tensor],
                 d_model: int, like: torch.Tensor, on_event=None):
        """frozen: the backbone's tensors by name; like: a tensor of the bank's device/dtype.

        on_event(event): called with "hit", "miss", "eviction" or "restack" (metrics).
        """
        if capacity < 1:
            raise ValueError("a slot table needs at least one slot")
        self.capacity, self.budget_bytes = capacity, budget_bytes
        self._frozen, self._d_model, self._like = frozen, d_model, like
        self._slots: list[SlotInfo | None] = [None] * capacity
        self._weights: list[AdapterSet | None] = [None] * capacity
        self._bank: AdapterBank | None = None
        self._lock = threading.RLock()
        self._on_event = on_event or (lambda event: None)

    def snapshot(self) -> list[SlotInfo | None]:
        """A copy of every slot's state, in slot order (None: empty)."""
        with self._lock:
            return [None if info is None else replace(info) for info in self._slots]

    # --- placement -----------------------------------------------------------------------
    def place(self, key: SlotKey, adapter_set: AdapterSet,
              pinned: Collection[AdapterKey] = ()) -> int:
        """Put `adapter_set` in a slot (or find it there) for one batch row; returns the slot.

        The row holds the slot until `leave(slot)`. Evicts LRU slots that no row holds and
        whose adapter is not in `pinned` to make room; raises NoFreeSlot when every slot or
        byte is held.
        """
        with self._lock:
            slot = self._lookup(key)
            if slot is not None:
                self._slots[slot].last_used = time.time()
                self._slots[slot].rows += 1
                self._on_event("hit")
                return slot
            self._on_event("miss")
            nbytes = self.device_bytes(adapter_set)
            if nbytes > self.budget_bytes:
                raise NoFreeSlot(f"adapter set {key} needs {nbytes} bytes; the device budget "
                                 f"is {self.budget_bytes}")
            while None not in self._slots or self._used_bytes() + nbytes > self.budget_bytes:
                self._evict_one(key, pinned)
            slot = self._slots.index(None)
            self._slots[slot] = SlotInfo(key, nbytes, time.time(), rows=1)
            self._weights[slot] = adapter_set
            if self._bank is not None and not write_slot(self._bank, slot, adapter_set,
                                                         self._frozen):
                self._bank = None  # a new site or a longer rank / prompt: restack once
            return slot

    def leave(self, slot: int) -> None:
        """A batch row that held `slot` ended."""
        with self._lock:
            info = self._slots[slot]
            if info is None or info.rows <= 0:
                raise RuntimeError(f"leave of slot {slot} that no row holds")
            info.rows -= 1

    def evict(self, adapter: AdapterKey) -> list[int]:
        """Free every slot of `adapter`; returns the freed slots. The caller knows no
        request uses it: a slot a row still holds is a RuntimeError, nothing is freed."""
        with self._lock:
            freed = [slot for slot, info in enumerate(self._slots)
                     if info is not None and info.adapter == adapter]
            held = [slot for slot in freed if self._slots[slot].rows]
            if held:
                raise RuntimeError(f"evict of {adapter}: batch rows still hold slots {held}")
            for slot in freed:
                self._free(slot)
            return freed

    def _lookup(self, key: SlotKey) -> int | None:
        for slot, info in enumerate(self._slots):
            if info is not None and info.key == key:
                return slot
        return None

    def _used_bytes(self) -> int:
        return sum(info.nbytes for info in self._slots if info is not None)

    def _evict_one(self, wanted: SlotKey, pinned: Collection[AdapterKey]) -> None:
        candidates = [(info.last_used, slot) for slot, info in enumerate(self._slots)
                      if info is not None and info.rows == 0 and info.adapter not in pinned]
        if not candidates:
            raise NoFreeSlot(f"no slot for {wanted}: all {self.capacity} slots hold adapters "
                             "in use or pinned")
        self._free(min(candidates)[1])

    def _free(self, slot: int) -> None:
        self._slots[slot] = None
        self._weights[slot] = None  # the bank keeps the stale rows: no batch row reads them
        self._on_event("eviction")

    # --- the bank the compute reads ------------------------------------------------------
    def bank(self) -> AdapterBank:
        """Stacked weights of every slot, the same object until a restack.

        A set placed in a slot is written into the existing bank in place when it fits its
        shapes (`modeling.bank.write_slot`: one slot's bytes); a new site, or a longer rank,
        width, prompt or prefix than the bank holds, restacks every slot once. Slot numbers
        never move. A freed slot's rows keep stale values, which no batch row reads.
        """
        with self._lock:
            if self._bank is None:
                sets = [w if w is not None else AdapterSet() for w in self._weights]
                self._bank = build_bank(sets, self._frozen, self._d_model, self._like)
                self._on_event("restack")
            return self._bank

    def device_bytes(self, adapter_set: AdapterSet) -> int:
        """Bytes `adapter_set` takes in the bank's dtype (host copies are float32)."""
        return sum(t.numel() for t in adapter_set.tensors()) * self._like.element_size()
