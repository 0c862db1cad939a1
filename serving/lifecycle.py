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

On demand (`adapter-serve --load-on-demand`): a request for a name that is not loaded
loads it (`load_on_demand`, on the request's gRPC thread: `prepare`, the same fetch and
checks as `load`, then the engine thread puts it in service unless a Load or another
request did first). Such a version is a cache entry: when the host tier is full
(`--host-adapters`, `--host-cache-bytes`) it leaves host memory like any unpinned version
no request holds, and its name is no longer loaded (the next request loads it again).
Versions put in service by `load` stay in host memory; a Load of a name loaded on demand
makes it one of them. A request waits for such a load until its deadline at most, or
until its client cancels (the load goes on for the others). A routing table that sends
ids here (Ray Serve's multiplexed ids, serving.fleet) holds a route per id
(`route_on_demand`); dropping an id (`release_on_demand`) releases the version once no id
routes to it.

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
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import TypeVar

import grpc

from adapters_registry import check_fingerprint
from serving.adapter_store import AdapterKey, AdapterStore, HostAdapter
from serving.requests import (
    Request,
    RequestError,
    call_cancelled,
    deadline_exceeded,
    error_for,
    time_left,
)
from serving.slot_table import SlotTable

log = logging.getLogger("vladapter.serving")

# gRPC ends a call at its deadline by its own clock, which can run ms ahead of the deadline
# a servicer computes from `time_remaining()` (3 ms seen): a call that ends this close to
# its deadline ended by it (DEADLINE_EXCEEDED, not CANCELLED: the metrics' label).
DEADLINE_SLACK_S = 0.1
T = TypeVar("T")
Runner = Callable[[Callable[[], T]], T]
# on_end(callback): runs callback() once the caller's call ends (cancelled: the waits of a
# still running call end only so); False: it had ended. grpc's ServicerContext.add_callback.
OnEnd = Callable[[Callable[[], None]], bool]


def run_here(change: Callable[[], T]) -> T:
    """A runner for a lifecycle without an engine: the caller is the only writer."""
    return change()


def _wait(fetching: Future, deadline: float | None, on_end: OnEnd | None) -> bool:
    """Wait until `fetching` is done, `deadline` (time.monotonic() seconds, None: none)
    passes or the call of `on_end` ends; whether `fetching` is done."""
    ended = threading.Event()  # the fetch or the call ended: whichever comes first wakes us
    fetching.add_done_callback(lambda _: ended.set())
    if on_end is not None and not on_end(ended.set):
        ended.set()  # the call had ended before the wait
    ended.wait(time_left(deadline))
    return fetching.done()


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

    def __init__(self, store: AdapterStore, slot_table: SlotTable, run: Runner = run_here,
                 on_demand: bool = False, on_demand_load: Callable[[], None] | None = None):
        """run(change): runs `change()` on the engine thread and returns its result;
        on_demand: a request for a name that is not loaded loads it (`load_on_demand`);
        on_demand_load(): called when a request put a name in service (metrics)."""
        self.store, self.slot_table, self._run = store, slot_table, run
        self.on_demand = on_demand
        self._on_demand_load = on_demand_load or (lambda: None)
        self._active: dict[str, int] = {}
        self._by_request: set[str] = set()  # active names a request loaded (on demand)
        self._pinned: set[AdapterKey] = set()
        self._in_flight: Counter[AdapterKey] = Counter()
        self._routes: Counter[AdapterKey] = Counter()  # routing-table ids per version
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

    def prepare(self, name: str, version: int | None = None, alias: str | None = None,
                deadline: float | None = None, on_end: OnEnd | None = None) -> HostAdapter:
        """Resolve a version (version and alias None: the registry's latest) and fetch it
        into host memory, verified against this backbone, without serving it: every
        refusal `load` would give, and nothing changes (a fleet checks a Load on one
        replica before every replica serves it, serving.fleet).

        deadline: time.monotonic() seconds the caller waits until (None: no limit), then
        RequestError DEADLINE_EXCEEDED naming the version; on_end: the caller's call
        (None: none), whose cancellation ends the wait CANCELLED. Either way the fetch,
        shared with every other caller of that version, goes on and its result stays in
        host memory."""
        number = self.resolve(name, version, alias)
        fetching = self.store.fetch(name, number)
        if not _wait(fetching, deadline, on_end):
            what = f"adapter {name}:{number} was in host memory (it goes on loading for " \
                "later requests)"
            # The deadline first: gRPC also ends a call whose deadline passed.
            if deadline is not None and time_left(deadline) <= DEADLINE_SLACK_S:
                raise deadline_exceeded(what)
            raise call_cancelled(what)
        try:
            return fetching.result()
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

    def load_on_demand(self, name: str, version: int | None = None,
                       deadline: float | None = None, on_end: OnEnd | None = None) -> int:
        """The version a request for `name` (and `version`, None: the active one) runs on,
        loading the name first when it is not loaded: resolve `version` (None: the
        registry's latest), fetch and verify it as `load` does, and put it in service
        unless a Load or another request did meanwhile. Concurrent calls for one version
        share its fetch. Called on the request's thread; the engine thread only switches
        the active version. NOT_FOUND names the field, DATA_LOSS leaves nothing cached;
        deadline (the request's, time.monotonic() seconds): the wait for the fetch ends
        DEADLINE_EXCEEDED then, and CANCELLED when the call ends before (on_end: its
        `add_callback`, `prepare`); the fetch goes on for the other waiters."""
        active = self.active_version(name)
        if active is not None:
            return active if version is None else version
        try:
            entry = self.prepare(name, version, deadline=deadline, on_end=on_end)
        except RequestError as error:
            if error.code != grpc.StatusCode.NOT_FOUND:
                raise
            field = "adapter.name" if version is None else "adapter.name / adapter.version"
            raise RequestError(error.code, f"{field}: adapter {name!r} cannot be loaded on "
                                           f"demand: {error.message}") from None
        number, added = self._run(lambda: self._adopt(entry))
        if added:
            self._on_demand_load()
            log.info("loaded adapter %s:%d on demand", name, number)
        return number if version is None else version

    def servable(self, name: str, version: int | None = None) -> VersionState:
        """The state of the version a request for `name` (and `version`, None: the active
        one) would run on, without loading anything: the loaded version, or on demand
        the one `load_on_demand` would load (a registry record read: the registry's
        latest, or `version`; refused as the load would refuse a missing, yanked or other
        backbone's version). RequestError NOT_FOUND: not loaded and not loadable;
        FAILED_PRECONDITION: trained for another backbone."""
        active = self.active_version(name)
        if active is not None and version in (None, active):
            return self.state(name, active)
        if not self.on_demand:
            raise not_loaded(name)
        try:
            info = self.store.record(name, version)
            check_fingerprint(info, self.store.fingerprint)
        except Exception as exc:
            raise error_for(exc) from None
        return self.state(name, info.version, info.aliases,
                          tuple(info.manifest.get("tasks", ())))

    def route_on_demand(self, name: str, version: int | None = None) -> int:
        """`load_on_demand` for one id of a routing table (Ray Serve's multiplexed ids,
        serving.fleet.replica), which holds a route on the version it returns until
        `release_on_demand`. Ids naming one version (`alpha`, `alpha:2`, `alpha@prod`)
        hold a route each."""
        number = self.load_on_demand(name, version)
        self._run(lambda: self._hold_route((name, number)))
        return number

    def release_on_demand(self, name: str, version: int) -> bool:
        """Requests for `name` stop coming here by one route (Ray Serve's multiplexed table
        dropped an id, serving.fleet.replica): once no route holds it, a version a request
        loaded on demand that no request and no pin holds leaves host memory and the name
        is no longer loaded; whether it left."""
        left = self._run(lambda: self._release_idle((name, version)))
        if left:
            log.info("released adapter %s:%d (loaded on demand)", name, version)
        return left

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

    def loaded_by_load(self) -> dict[str, int]:
        """The loaded names that `load` put in service (not a request, on demand) and
        their active versions: what a fleet's record names (serving.fleet.adapters)."""
        with self._lock:
            return {n: v for n, v in self._active.items() if n not in self._by_request}

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
    def _activate(self, entry: HostAdapter, by_request: bool = False) -> int | None:
        """Make `entry` the active version of its name (`by_request`: on demand); returns
        the one it replaced."""
        self._check_writer()
        self.store.restore(entry)  # back in host memory, if the LRU dropped it meanwhile
        with self._lock:
            previous = self._active.get(entry.name)
            self._active[entry.name] = entry.version
            (self._by_request.add if by_request else self._by_request.discard)(entry.name)
            self._retiring.discard(entry.key)
            if previous is not None and previous != entry.version:
                self._pinned.discard((entry.name, previous))
        if previous is not None and previous != entry.version:
            self._retire((entry.name, previous))
        self._evict_host(entry.key)
        return previous

    def _adopt(self, entry: HostAdapter) -> tuple[int, bool]:
        """Serve `entry`, loaded on demand, unless its name serves already (a Load or
        another request came first): (the active version, whether this put it in service)."""
        self._check_writer()
        with self._lock:
            active = self._active.get(entry.name)
        if active is not None:
            return active, False
        self._activate(entry, by_request=True)
        return entry.version, True

    def _hold_route(self, key: AdapterKey) -> None:
        self._check_writer()
        with self._lock:
            self._routes[key] += 1

    def _release_idle(self, key: AdapterKey) -> bool:
        """Drop one route on `key` (if any holds it); with none left, release it if idle."""
        self._check_writer()
        name, version = key
        with self._lock:
            if self._routes[key] > 1:
                self._routes[key] -= 1
                return False
            self._routes.pop(key, None)
            idle = name in self._by_request and self._active.get(name) == version \
                and key not in self._pinned and self._in_flight[key] == 0
        if idle:
            self.store.evict(key)
            self._deactivate(name)
        return idle

    def _deactivate(self, name: str) -> int | None:
        self._check_writer()
        with self._lock:
            version = self._active.pop(name, None)
            self._by_request.discard(name)
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

    def _evict_host(self, fresh: AdapterKey | None = None) -> None:
        """Host LRU over its budgets, keeping pinned and referenced versions, those `load`
        put in service and `fresh` (just put in service: its request is on its way); a
        name loaded on demand whose version leaves is unloaded."""
        with self._lock:
            keep = {*self._pinned, *self._in_flight, fresh,
                    *((n, v) for n, v in self._active.items() if n not in self._by_request)}
        for name, version in self.store.evict_over_budget(keep):
            if name in self._by_request and self._active.get(name) == version:
                self._deactivate(name)
                log.info("adapter %s:%d (loaded on demand) left host memory", name, version)

    # --- a request's way through (engine thread) -----------------------------------------
    def bind(self, request: Request) -> None:
        """Fix the request's version (the one it asks for, else the active one), take a
        reference on it and start its fetch into `request.loading`. A name that is not
        loaded is RequestError NOT_FOUND, even with a version, unless names load on
        demand and the request names its version (`load_on_demand` fixed it: the name
        may have left host memory since, and its fetch loads it again)."""
        self._check_writer()
        with self._lock:
            active = self._active.get(request.adapter_name)
            if active is None and not (self.on_demand and request.requested_version):
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
