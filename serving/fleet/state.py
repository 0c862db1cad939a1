"""The fleet's record of what every replica serves, and the controller's book of replicas.

    FleetState   generation + {adapter name: (version, pinned)}: what every replica serves
    Change       one Load / Unload / Pin, as the controller applies it to the record
    FleetBook    the controller's state: the record, and per replica the generation it
                 serves, its last failure, its statistics and when it was last heard from

Pure data and bookkeeping, no Ray: `serving.fleet.controller` holds a book behind Ray
Serve, `serving.fleet.adapters` makes one replica's lifecycle serve a record.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple

LOAD, UNLOAD, PIN = "load", "unload", "pin"


class Served(NamedTuple):
    """How one adapter name serves: its active version and whether that version is pinned."""

    version: int
    pinned: bool = False


@dataclass(frozen=True)
class Change:
    """One change of the record. kind load: serve `version`; unload; pin: set `pinned`."""

    kind: str
    name: str
    version: int = 0
    pinned: bool = False

    def __str__(self) -> str:
        if self.kind == LOAD:
            return f"Load {self.name}:{self.version}"
        if self.kind == PIN:
            return f"{'Pin' if self.pinned else 'Unpin'} {self.name}"
        return f"Unload {self.name}"


@dataclass(frozen=True)
class FleetState:
    """What every replica serves. generation: 0 before anything (a replica that has applied
    nothing yet), then one more per change, so two records differ iff their generations do.
    """

    generation: int = 0
    adapters: dict[str, Served] = field(default_factory=dict)

    def after(self, change: Change) -> tuple[FleetState, int | None]:
        """(the record after `change`, the version it concerns); None and the record
        unchanged when an unload or a pin names an adapter that is not loaded.

        A pin belongs to the version it was set on: a Load of another version drops it, as
        `AdapterLifecycle` does on one server (a hot-swap or an unload drops the pin).
        """
        adapters = dict(self.adapters)
        current = adapters.get(change.name)
        if change.kind == LOAD:
            keep_pin = current is not None and current.version == change.version
            adapters[change.name] = Served(change.version, keep_pin and current.pinned)
            version = change.version
        elif current is None:
            return self, None
        elif change.kind == UNLOAD:
            del adapters[change.name]
            version = current.version
        elif change.kind == PIN:
            adapters[change.name] = current._replace(pinned=change.pinned)
            version = current.version
        else:
            raise ValueError(f"unknown change kind {change.kind!r}")
        return FleetState(self.generation + 1, adapters), version


@dataclass
class ReplicaRecord:
    """What the controller knows of one replica (times: time.monotonic() seconds)."""

    applied: int = 0  # the generation it serves
    failed: int = 0  # the generation it could not apply (0: none)
    problem: str = ""  # why
    stats: dict[str, Any] = field(default_factory=dict)
    seen: float = 0.0  # its last report
    actor: Any = None  # its Ray actor handle: is it alive? (None: cannot tell)


class FleetBook:
    """The record and the replicas' reports; one owner (the controller's event loop)."""

    def __init__(self, state: FleetState):
        self.state = state
        self.replicas: dict[str, ReplicaRecord] = {}
        self._changed = False  # a change since start: the record is this book's own

    def change(self, change: Change) -> tuple[int, int | None]:
        """Apply `change`: (the record's generation, the version concerned or None)."""
        state, version = self.state.after(change)
        if version is not None:
            self.state, self._changed = state, True
        return self.state.generation, version

    def report(self, replica: str, applied: FleetState, failure: tuple[int, str] | None,
               stats: dict[str, Any], now: float, actor: Any = None) -> None:
        """A replica serves `applied`; failure: (generation, why) it could not apply.

        A book that has not changed anything yet takes a newer record from a replica: a
        controller that Ray Serve restarted gets the fleet's record back instead of
        resetting every replica to its start state.
        """
        if not self._changed and applied.generation > self.state.generation:
            self.state = applied
        record = self.replicas.setdefault(replica, ReplicaRecord())
        record.applied = applied.generation
        record.failed, record.problem = failure if failure is not None else (0, "")
        record.stats, record.seen = stats, now
        record.actor = actor if actor is not None else record.actor

    def leave(self, replica: str) -> None:
        """A replica stopped (or died): no change waits for it any more."""
        self.replicas.pop(replica, None)

    def lagging(self, generation: int) -> list[str]:
        """Replicas that do not serve `generation` (or a later one) yet."""
        return sorted(r for r, record in self.replicas.items() if record.applied < generation)

    def problems(self, generation: int) -> list[str]:
        """Why lagging replicas could not apply `generation` or a later one."""
        return [f"replica {replica}: {record.problem}"
                for replica, record in sorted(self.replicas.items())
                if record.applied < generation <= record.failed]

    def snapshot(self) -> dict[str, Any]:
        """The record and each replica's generation, problem and statistics (plain data)."""
        return {"generation": self.state.generation,
                "adapters": {n: tuple(s) for n, s in sorted(self.state.adapters.items())},
                "replicas": {r: {"applied": rec.applied, "problem": rec.problem,
                                 "stats": rec.stats}
                             for r, rec in sorted(self.replicas.items())}}

