"""Host -> accelerator tier: which adapter set sits in which slot of the stacked bank.

A slot holds one adapter set for one task, keyed `(name, version, task)`. The compute
reads only `bank()` (a `StackedWeights` on the device) and each row's slot number; it
knows nothing of this table (STYLE.md, "cache apart from compute").

Rules:
- a slot keeps its number while it is occupied, so rows already decoding keep reading
  the right weights when other slots change;
- a batch row holds its slot from `activate` until `leave`; eviction is LRU over slots
  that no row holds and whose adapter is not pinned: what a running batch uses is never
  evicted;
- requests that wait (loading, queued) hold their adapter version (`acquire`/`release`)
  but no slot: a version with waiting requests is kept in service after a hot-swap, yet
  its slots may be reused meanwhile, so waiting requests never starve the batch of slots;
- a byte budget and a slot count bound the table.

Every method takes one lock; in the server only the engine thread mutates the table and
other threads read `snapshot()`.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from dataclasses import dataclass

import torch

from modeling.bank import StackedWeights, stack_weights, write_slot
from modeling.serve_forms import ServeWeights

SlotKey = tuple[str, int, str]  # (adapter name, version, task)
AdapterKey = tuple[str, int]  # (adapter name, version)


class NoFreeSlot(RuntimeError):
    """Every slot (or the byte budget) is taken by adapters in use or pinned."""


@dataclass
class SlotInfo:
    key: SlotKey
    nbytes: int
    last_used: float


class SlotTable:
    """A fixed number of slots over one device bank, with LRU, pins and refcounts."""

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
        self._weights: list[ServeWeights | None] = [None] * capacity
        self._rows = [0] * capacity  # batch rows holding each slot
        self._refs: Counter[AdapterKey] = Counter()
        self._pinned: set[AdapterKey] = set()
        self._bank: StackedWeights | None = None
        self._lock = threading.RLock()
        self._on_event = on_event or (lambda event: None)

    # --- queries -------------------------------------------------------------------------
    def lookup(self, key: SlotKey) -> int | None:
        """The slot holding `key`, or None."""
        with self._lock:
            for slot, info in enumerate(self._slots):
                if info is not None and info.key == key:
                    return slot
            return None

    def used_bytes(self) -> int:
        with self._lock:
            return sum(info.nbytes for info in self._slots if info is not None)

    def refs(self, adapter: AdapterKey) -> int:
        with self._lock:
            return self._refs[adapter]

    def snapshot(self) -> list[SlotKey | None]:
        """The key of every slot, in slot order (None: empty)."""
        with self._lock:
            return [None if info is None else info.key for info in self._slots]

    def adapter_state(self, adapter: AdapterKey) -> dict:
        """Device bytes, slot count, last use, refcount and pin of one adapter."""
        with self._lock:
            infos = [i for i in self._slots if i is not None and i.key[:2] == adapter]
            return {"bytes": sum(i.nbytes for i in infos), "slots": len(infos),
                    "last_used": max((i.last_used for i in infos), default=0.0),
                    "in_flight": self._refs[adapter], "pinned": adapter in self._pinned}

    # --- refcounts and pins --------------------------------------------------------------
    def acquire(self, adapter: AdapterKey) -> None:
        """One more in-flight request uses `adapter` (`evict(adapter)` keeps its slots)."""
        with self._lock:
            self._refs[adapter] += 1

    def release(self, adapter: AdapterKey) -> int:
        """One request using `adapter` ended; returns how many still use it."""
        with self._lock:
            if self._refs[adapter] <= 0:
                raise RuntimeError(f"release of {adapter} without a matching acquire")
            self._refs[adapter] -= 1
            left = self._refs[adapter]
            if left == 0:
                del self._refs[adapter]
            return left

    def pin(self, adapter: AdapterKey) -> None:
        with self._lock:
            self._pinned.add(adapter)

    def unpin(self, adapter: AdapterKey) -> None:
        with self._lock:
            self._pinned.discard(adapter)

    # --- placement -----------------------------------------------------------------------
    def activate(self, key: SlotKey, weights: ServeWeights) -> int:
        """Put `weights` in a slot (or find it there) for one batch row; returns the slot.

        The row holds the slot until `leave(slot)`. Evicts LRU slots that no row holds and
        no pin keeps to make room; raises NoFreeSlot when every slot or byte is held.
        """
        with self._lock:
            slot = self.lookup(key)
            if slot is not None:
                self._slots[slot].last_used = time.time()
                self._rows[slot] += 1
                self._on_event("hit")
                return slot
            self._on_event("miss")
            nbytes = self._device_bytes(weights)
            if nbytes > self.budget_bytes:
                raise NoFreeSlot(f"adapter set {key} needs {nbytes} bytes; the device budget "
                                 f"is {self.budget_bytes}")
            while None not in self._slots or self.used_bytes() + nbytes > self.budget_bytes:
                self._evict_one(key)
            slot = self._slots.index(None)
            self._slots[slot] = SlotInfo(key, nbytes, time.time())
            self._weights[slot] = weights
            self._rows[slot] = 1
            if self._bank is not None and not write_slot(self._bank, slot, weights,
                                                         self._frozen):
                self._bank = None  # a new site or a longer rank / prompt: restack once
            return slot

    def leave(self, slot: int) -> None:
        """A batch row that held `slot` ended."""
        with self._lock:
            if self._rows[slot] <= 0:
                raise RuntimeError(f"leave of slot {slot} that no row holds")
            self._rows[slot] -= 1

    def _evict_one(self, wanted: SlotKey) -> None:
        candidates = [(info.last_used, slot) for slot, info in enumerate(self._slots)
                      if info is not None and self._rows[slot] == 0
                      and info.key[:2] not in self._pinned]
        if not candidates:
            raise NoFreeSlot(f"no slot for {wanted}: all {self.capacity} slots hold adapters "
                             "in use or pinned")
        self._free(min(candidates)[1])

    def _evictable(self, adapter: AdapterKey) -> bool:
        """No request (waiting or running) uses `adapter` and no pin keeps it."""
        return self._refs[adapter] == 0 and adapter not in self._pinned

    def _free(self, slot: int) -> None:
        assert self._rows[slot] == 0, "a slot held by a batch row is never freed"
        self._slots[slot] = None
        self._weights[slot] = None  # the bank keeps the stale rows: no batch row reads them
        self._on_event("eviction")

    def evict(self, adapter: AdapterKey) -> list[int]:
        """Free every slot of `adapter` if it is idle and unpinned; returns the freed slots."""
        with self._lock:
            if not self._evictable(adapter):
                return []
            freed = [slot for slot, info in enumerate(self._slots)
                     if info is not None and info.key[:2] == adapter]
            for slot in freed:
                self._free(slot)
            return freed

    def touch(self, slot: int) -> None:
        with self._lock:
            if self._slots[slot] is not None:
                self._slots[slot].last_used = time.time()

    # --- the bank the compute reads ------------------------------------------------------
    def bank(self) -> StackedWeights:
        """Stacked weights of every slot, the same object until a restack.

        A set placed in a slot is written into the existing bank in place when it fits its
        shapes (`modeling.bank.write_slot`: one slot's bytes); a new site, or a longer rank,
        width, prompt or prefix than the bank holds, restacks every slot once. Slot numbers
        never move. A freed slot's rows keep stale values, which no batch row reads.
        """
        with self._lock:
            if self._bank is None:
                sets = [w if w is not None else ServeWeights() for w in self._weights]
                self._bank = stack_weights(sets, self._frozen, self._d_model, self._like)
                self._on_event("restack")
            return self._bank

    def _device_bytes(self, weights: ServeWeights) -> int:
        """Bytes `weights` take in the bank's dtype (host copies are float32)."""
        return sum(t.numel() for t in weights.tensors()) * self._like.element_size()
