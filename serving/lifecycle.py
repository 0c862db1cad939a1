"""The adapter lifecycle: which version of each name serves, pins, in-flight references
and the retirement of old versions, with one owner (STYLE.md, card 9).

    gRPC threads (both protocols)              engine thread, the only writer
    load(name, version | alias) --fetch, wait--> activate: new requests get the version;
                                                 the one it replaces retires
    unload(name)               ----------------> deactivate; the version retires
    pin(name, pinned)          ----------------> pin / unpin the active version
    active_version / active / state / index      reads, from any thread
                                                 engine: bind -> loaded -> place -> release

A version's life: `load` fetches it (registry -> host memory) on the calling thread, then
the engine thread makes it *active* (what a request that names no version gets). Each
request holds a reference on its version from `bind` to `release`, and a device slot from
`place` to `release`, so a hot-swap never changes the version of a request that already
started. A version that leaves service (hot-swap or unload) *retires*: its device slots are
freed when its last request ends (at once when none runs). A pin keeps the active
version's host copy and device slots from both LRUs; it belongs to that version, so a
hot-swap or an unload drops it. The host LRU keeps active, pinned and referenced versions
(`AdapterStore.evict_over_budget`); the device LRU never evicts a slot a batch row holds
nor a pinned version's (`SlotTable.place`).

Every change runs on the engine thread: gRPC threads queue it through `run` (the engine's
`call`) and wait for its result, so the slot table, the store's residency and this state
have one writer. Before the engine thread starts (and after it ends) `call` runs the
change on the caller, one at a time. Readers on other threads take the lock.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TypeVar

import grpc

from serving.adapter_store import AdapterKey, AdapterStore, HostAdapter
from serving.requests import Request, RequestError, error_for
from serving.slot_table import SlotTable

log = logging.getLogger("vladapter.serving")

T = TypeVar("T")
Runner = Callable[[Callable[[], T]], T]


def run_here(change: Callable[[], T]) -> T:
    """A runner for a lifecycle without an engine: the caller is the only writer."""
    return change()


def not_loaded(name: str) -> RequestError:
    return RequestError(grpc.StatusCode.NOT_FOUND,
                        f"adapter {name!r} is not loaded (Repository.Load it first)")


@dataclass
class VersionState:
    """Where one version is and how it is used; the fields of the proto `AdapterState`.

    state: READY (active), LOADING or UNAVAILABLE (`reason` says why); tier: registry,
    host or device; bytes: on the device when it has slots there, else in host memory.
    """

    name: str
    version: int
    aliases: list[str] = field(default_factory=list)
    tasks: list[str] = field(default_factory=list)
    state: str = "UNAVAILABLE"
    tier: str = "registry"
    bytes: int = 0
    last_used_unix: float = 0.0
    in_flight: int = 0
    pinned: bool = False
    reason: str = ""


class AdapterLifecycle:
    """The owner of active versions, pins, references and retirement over one adapter
    store (host tier) and one slot table (device tier)."""

    def __init__(self, store: AdapterStore, slot_table: SlotTable, run: Runner = run_here):
        """run(change): runs `change()` on the engine thread and returns its result."""
        self.store, self.slot_table, self._run = store, slot_table, run
        self._active: dict[str, int] = {}
        self._pinned: set[AdapterKey] = set()
        self._in_flight: Counter[AdapterKey] = Counter()
        self._retiring: set[AdapterKey] = set()  # out of service, requests still running
        self._lock = threading.Lock()  # for readers: only the writer changes the state
        self._writer: int | None = None  # the engine thread's ident while it runs

    def claim(self, thread_id: int | None) -> None:
        """The engine thread starts (its ident) or ends (None): while it runs, a change
        from any other thread is a bug (RuntimeError)."""
        self._writer = thread_id

    def _check_writer(self) -> None:
        if self._writer is not None and threading.get_ident() != self._writer:
            raise RuntimeError("the adapter lifecycle changes only on the engine thread")

    # --- the API of the protocol servicers (any thread; raise RequestError) --------------
    def resolve(self, name: str, version: int | None = None, alias: str | None = None) -> int:
        """A version number from the registry; version and alias None: `latest`, the
        highest version that is not yanked (as for every alias, whatever is active)."""
        try:
            return self.store.resolve(name, version, alias)
        except Exception as exc:
            raise error_for(exc) from None

    def prepare(self, name: str, version: int | None = None,
                alias: str | None = None) -> HostAdapter:
        """Resolve a version (version and alias None: the registry's latest) and fetch it
        into host memory, verified against this backbone, without serving it: every
        refusal `load` would give, and nothing changes (a fleet checks a Load on one
        replica before every replica serves it, serving.fleet)."""
        number = self.resolve(name, version, alias)
        try:
            return self.store.fetch(name, number).result()
        except Exception as exc:
            raise error_for(exc) from None

    def load(self, name: str, version: int | None = None, alias: str | None = None) -> int:
        """Fetch a version (version and alias None: the registry's latest) and make it the
        active one; returns its number. The version it replaces retires."""
        entry = self.prepare(name, version, alias)
        number = entry.version
        previous = self._run(lambda: self._activate(entry))
        if previous is None or previous == number:
            log.info("serving adapter %s:%d", name, number)
        else:
            log.info("hot-swap %s: version %d -> %d", name, previous, number)
        return number

    def unload(self, name: str) -> int:
        """Take a name out of service; returns the version that was active. It retires."""
        version = self._run(lambda: self._deactivate(name))
        if version is None:
            raise not_loaded(name)
        log.info("unloaded adapter %s:%d", name, version)
        return version

    def pin(self, name: str, pinned: bool = True) -> int:
        """Pin (or unpin) the active version of `name`; returns its number."""
        version = self._run(lambda: self._set_pin(name, pinned))
        if version is None:
            raise not_loaded(name)
        log.info("%s adapter %s:%d", "pinned" if pinned else "unpinned", name, version)
        return version

    def active_version(self, name: str) -> int | None:
        """The version requests of `name` get when they name none; None: not loaded."""
        with self._lock:
            return self._active.get(name)

    def active(self) -> dict[str, int]:
        """Every loaded name and its active version."""
        with self._lock:
            return dict(self._active)

    def state(self, name: str, version: int, aliases: Iterable[str] = (),
              tasks: Iterable[str] = (), problem: str = "") -> VersionState:
        """Where one version is and how it is used; `problem`: why its registry record is
        unreadable (aliases and tasks: the registry's, when it is not in host memory)."""
        key = (name, version)
        loading = self.store.loading(key)
        entry = self.store.entry(key)
        placed = [s for s in self.slot_table.snapshot() if s is not None and s.adapter == key]
        with self._lock:
            active = self._active.get(name) == version
            in_flight, pinned = self._in_flight[key], key in self._pinned
        if loading:
            state, tier = "LOADING", "registry"
        elif entry is not None:
            state, tier = ("READY" if active else "UNAVAILABLE"), ("device" if placed else "host")
        else:
            state, tier = "UNAVAILABLE", "registry"
        host_used = entry.last_used if entry else 0.0
        return VersionState(
            name, version, list(entry.aliases if entry else aliases),
            list(entry.tasks if entry else tasks), state, tier,
            sum(s.nbytes for s in placed) if placed else (entry.nbytes if entry else 0),
            max([host_used] + [s.last_used for s in placed]), in_flight, pinned,
            problem or ("" if state != "UNAVAILABLE" or active else "not the active version"))

    def index(self) -> list[VersionState]:
        """The state of every version in the registry that is not yanked."""
        try:
            infos = self.store.registry.index()
        except Exception as exc:
            raise error_for(exc) from None
        return [self.state(i.name, i.version, i.aliases, tuple(i.manifest.get("tasks", ())),
                           i.problem) for i in infos if not i.yanked]

    # --- changes (engine thread) ---------------------------------------------------------
    def _activate(self, entry: HostAdapter) -> int | None:
        """Make `entry` the active version of its name; returns the one it replaced."""
        self._check_writer()
        self.store.restore(entry)  # back in host memory, if the LRU dropped it meanwhile
        with self._lock:
            previous = self._active.get(entry.name)
            self._active[entry.name] = entry.version
            self._retiring.discard(entry.key)
            if previous is not None and previous != entry.version:
                self._pinned.discard((entry.name, previous))
        if previous is not None and previous != entry.version:
            self._retire((entry.name, previous))
        self._evict_host()
        return previous

    def _deactivate(self, name: str) -> int | None:
        self._check_writer()
        with self._lock:
            version = self._active.pop(name, None)
            if version is not None:
                self._pinned.discard((name, version))
        if version is not None:
            self._retire((name, version))
        return version

    def _set_pin(self, name: str, pinned: bool) -> int | None:
        self._check_writer()
        with self._lock:
            version = self._active.get(name)
            if version is not None:
                (self._pinned.add if pinned else self._pinned.discard)((name, version))
            return version

    def _retire(self, key: AdapterKey) -> None:
        """Free the device slots of a version out of service once no request uses it."""
        with self._lock:
            if self._active.get(key[0]) == key[1]:
                self._retiring.discard(key)  # back in service meanwhile
                return
            if self._in_flight[key] > 0:
                self._retiring.add(key)
                return
            self._retiring.discard(key)
        freed = self.slot_table.evict(key)
        if freed:
            log.info("freed adapter %s:%d from device slots %s", *key, freed)

    def _evict_host(self) -> None:
        """Host LRU over the byte budget, keeping active, pinned and referenced versions."""
        with self._lock:
            keep = {*self._active.items(), *self._pinned, *self._in_flight}
        self.store.evict_over_budget(keep)

    # --- a request's way through (engine thread) -----------------------------------------
    def bind(self, request: Request) -> None:
        """Fix the request's version (the one it asks for, else the active one), take a
        reference on it and start its fetch into `request.loading`. A name that is not
        loaded is RequestError NOT_FOUND, even with a version."""
        self._check_writer()
        with self._lock:
            active = self._active.get(request.adapter_name)
            if active is None:
                raise not_loaded(request.adapter_name)
            version = active if request.requested_version is None \
                else request.requested_version
            request.bound_version = version
            self._in_flight[(request.adapter_name, version)] += 1
        request.loading = self.store.fetch(request.adapter_name, version)

    def loaded(self, request: Request) -> HostAdapter:
        """The request's fetch ended well: its version is in host memory (returned and kept
        in `request.adapter`); the host LRU trims what is not kept."""
        self._check_writer()
        request.adapter = request.loading.result()
        self._evict_host()
        return request.adapter

    def place(self, request: Request) -> int:
        """A device slot for the request's (version, task) set, held until `release`;
        raises NoFreeSlot when every slot is held or pinned."""
        self._check_writer()
        key = (request.adapter_name, request.bound_version, request.task.name)
        # No copy of the pins: only this thread changes them, and not during the call.
        request.slot = self.slot_table.place(key, request.adapter.serve[key[2]], self._pinned)
        return request.slot

    def release(self, request: Request) -> None:
        """The request ended: drop its slot and its reference; a retiring version whose
        last request this was leaves the device."""
        self._check_writer()
        if request.slot is not None:
            self.slot_table.leave(request.slot)
            request.slot = None
        if request.bound_version is None:
            return
        key = (request.adapter_name, request.bound_version)
        with self._lock:
            if self._in_flight[key] <= 0:
                raise RuntimeError(f"release of {key} without a matching bind")
            self._in_flight[key] -= 1
            last = self._in_flight[key] == 0
            if last:
                del self._in_flight[key]
            retiring = key in self._retiring
        if last and retiring:
            self._retire(key)
