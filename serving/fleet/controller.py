"""The fleet controller: one Ray Serve deployment (one replica) that holds the fleet's record.

    replica watcher  poll(applied, ...)  -> the record, at once when it differs from
                                            `applied`, else after up to `wait_s` (long poll;
                                            each poll also reports the replica's state)
    replica servicer change(Change)      -> (generation, version | None)
                     settle(generation)  -> [] once every live replica serves it, else why
    tests, benchmark snapshot()          -> the record and each live replica's report

Not a router and not a cluster manager: Ray Serve places, routes to, scales and restarts
replicas; this only keeps the one record every replica converges to (serving.fleet.state),
so a Load, an Unload or a Pin made on any replica reaches all of them, and a replica that
starts later serves the current record before it takes requests. All methods run on one
event loop: the book has one owner.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from serving.fleet.state import Change, FleetBook, FleetState

log = logging.getLogger("vladapter.fleet")

# A replica polls at least this often while it is idle (a long poll's wait); one not heard
# from for twice as long while a change waits for it is asked whether it is alive.
POLL_S = 1.0
PROBE_S = 5.0  # how long an alive replica may take to answer that question


class FleetController:
    """The record (`FleetBook`) behind Ray Serve; `initial`: what serves at start (the
    `--load` adapters, resolved in the registry by serving.fleet.app)."""

    def __init__(self, initial: FleetState):
        self.book = FleetBook(initial)
        self._news = asyncio.Condition()  # a change or a report

    async def poll(self, replica: str, applied: FleetState, failure: tuple[int, str] | None,
                   stats: dict[str, Any], actor: Any = None,
                   wait_s: float = POLL_S) -> FleetState:
        """Report `replica`'s state; the record once it differs from `applied` (or when
        `wait_s` passed, or at once after a failure: the replica retries)."""
        async with self._news:
            self.book.report(replica, applied, failure, stats, time.monotonic(), actor)
            self._news.notify_all()
            if failure is None:
                try:
                    await asyncio.wait_for(self._news.wait_for(
                        lambda: self.book.state.generation != applied.generation), wait_s)
                except TimeoutError:
                    pass
            return self.book.state

    async def change(self, change: Change) -> tuple[int, int | None]:
        """Record `change`: (the record's generation, the version it concerns; None: an
        unload or a pin of a name that is not loaded, nothing changed)."""
        async with self._news:
            generation, version = self.book.change(change)
            if version is not None:
                log.info("%s: fleet record generation %d", change, generation)
            self._news.notify_all()
            return generation, version

    async def settle(self, generation: int, timeout_s: float) -> list[str]:
        """Wait until every live replica serves `generation`; [] then, else why not: the
        replicas that failed to apply it, or those still behind after `timeout_s`."""
        deadline = time.monotonic() + timeout_s
        probed: dict[str, float] = {}  # replica -> when it was last asked whether alive
        while True:
            async with self._news:
                lagging, problems = self.book.lagging(generation), self.book.problems(generation)
                if not lagging or problems:
                    return problems
                now = time.monotonic()
                if now >= deadline:
                    return [f"replicas {', '.join(lagging)} do not serve it after "
                            f"{timeout_s:g}s"]
                silent = [r for r in lagging if now - max(self.book.replicas[r].seen,
                                                          probed.get(r, 0.0)) > 2 * POLL_S]
                if not silent:
                    try:
                        await asyncio.wait_for(self._news.wait(), min(deadline - now, POLL_S))
                    except TimeoutError:
                        pass
                    continue
            probed.update((replica, time.monotonic()) for replica in silent)
            await self._forget_dead(silent)

    async def _forget_dead(self, replicas: list[str]) -> None:
        """Drop the replicas among `replicas` whose actor is gone: one that died, or one
        whose `leave` did not arrive (Ray Serve replaces a replica with a new one, which
        reports itself)."""
        import ray

        for replica in replicas:
            record = self.book.replicas.get(replica)
            if record is None or record.actor is None:
                continue
            try:
                await asyncio.wait_for(record.actor.__ray_ready__.remote(), PROBE_S)
            except ray.exceptions.RayActorError:
                log.warning("replica %s is gone: changes no longer wait for it", replica)
                self.book.leave(replica)
            except TimeoutError:
                pass  # alive but busy: it will report

    async def leave(self, replica: str) -> None:
        """`replica` stops (graceful shutdown): changes no longer wait for it."""
        async with self._news:
            self.book.leave(replica)
            self._news.notify_all()

    async def snapshot(self) -> dict[str, Any]:
        """The record and what each live replica last reported (serving.fleet.state)."""
        now = time.monotonic()
        await self._forget_dead([r for r, record in self.book.replicas.items()
                                 if now - record.seen > 2 * POLL_S])
        return self.book.snapshot()
