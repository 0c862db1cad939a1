"""A replica's adapters in a fleet: changes reach every replica, reads stay local.

    Repository.Load / KServe RepositoryModelLoad on any replica
        FleetAdapters.load  resolve + fetch + verify here (AdapterLifecycle.prepare: the
                            single server's refusals), then publish(Change): the
                            controller records it and returns once every live replica
                            serves it (or UNAVAILABLE naming the replicas that do not)
    every replica's watcher
        converge(lifecycle, record)  unload, load (a hot-swap: requests already running
                            finish on their version) and pin until the lifecycle serves
                            the record

A Load therefore returns when the whole fleet serves the new version: a request that starts
after it gets that version on every replica, and one that started before finishes on the
version it started with. Reads (resolve, state, index, active) are this replica's own
lifecycle's: active versions are the same everywhere, tiers and in-flight counts are not.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from serving.adapter_store import HostAdapter
from serving.fleet.state import LOAD, PIN, UNLOAD, Change, FleetState
from serving.lifecycle import AdapterLifecycle, OnEnd, VersionState, not_loaded
from serving.requests import RequestError

log = logging.getLogger("vladapter.fleet")

# publish(change): record `change` for the fleet and wait until every live replica serves
# it; the version it concerns (None: the name is not loaded); raises RequestError.
Publish = Callable[[Change], int | None]


class FleetAdapters:
    """What the servicers of a fleet replica change adapters through (`AdapterLifecycle`'s
    servicer-facing methods: resolve, load, unload, pin, load_on_demand, servable,
    active_version, active, state, index), built by `serving.stack.build_stack(control=...)`."""

    def __init__(self, local: AdapterLifecycle, publish: Publish):
        self.local, self._publish = local, publish

    def load(self, name: str, version: int | None = None, alias: str | None = None) -> int:
        """Check the version here, then serve it on every replica; returns its number."""
        entry: HostAdapter = self.local.prepare(name, version, alias)
        self._publish(Change(LOAD, name, entry.version))
        return entry.version

    def unload(self, name: str) -> int:
        version = self._publish(Change(UNLOAD, name))
        if version is None:
            raise not_loaded(name)
        return version

    def pin(self, name: str, pinned: bool = True) -> int:
        version = self._publish(Change(PIN, name, pinned=pinned))
        if version is None:
            raise not_loaded(name)
        return version

    @property
    def on_demand(self) -> bool:
        return self.local.on_demand

    def load_on_demand(self, name: str, version: int | None = None,
                       deadline: float | None = None, on_end: OnEnd | None = None) -> int:
        """This replica alone loads what a request needs (`--load-on-demand`): Ray Serve's
        multiplexed routing sends the name's next requests here; the record is untouched."""
        return self.local.load_on_demand(name, version, deadline, on_end)

    def servable(self, name: str, version: int | None = None) -> VersionState:
        return self.local.servable(name, version)

    def resolve(self, name: str, version: int | None = None, alias: str | None = None) -> int:
        return self.local.resolve(name, version, alias)

    def active_version(self, name: str) -> int | None:
        return self.local.active_version(name)

    def active(self) -> dict[str, int]:
        return self.local.active()

    def state(self, name: str, version: int) -> VersionState:
        return self.local.state(name, version)

    def index(self) -> list[VersionState]:
        return self.local.index()


def converge(adapters: AdapterLifecycle, record: FleetState) -> list[str]:
    """Make `adapters` serve `record`: unload names it lacks, load the versions it names
    (each swap as on one server) and set their pins. Names this replica loaded on demand
    are its own cache, not the record's: they stay. Returns what could not be done, one
    message per adapter ([]: `adapters` serves the record)."""
    problems = []
    active = adapters.loaded_by_load()
    for name in sorted(active.keys() - record.adapters.keys()):
        adapters.unload(name)
    for name, served in sorted(record.adapters.items()):
        try:
            if active.get(name) != served.version:
                adapters.load(name, served.version)
            if adapters.state(name, served.version).pinned != served.pinned:
                adapters.pin(name, served.pinned)
        except RequestError as error:
            log.warning("cannot serve %s:%d: %s", name, served.version, error.message)
            problems.append(f"{name}:{served.version}: {error.message}")
    return problems
