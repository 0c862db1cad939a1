"""A replica's watcher: one thread that keeps the replica's lifecycle on the fleet's record.

    loop: poll the controller (reporting what this replica serves, its failure, its
          statistics) -> a record that differs -> converge(lifecycle, record) -> applied

The first record applied makes the replica ready (`wait_first`): Ray Serve routes no
request to a replica before its constructor returns, so a replica that starts later
serves the current adapters from its first request on. A record it cannot apply (the
registry unreachable, bytes that fail their sha256) is reported, so a Load waiting for it
answers UNAVAILABLE with the reason, and retried every second; the replica keeps serving
what it served.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from serving.fleet.adapters import converge
from serving.fleet.controller import POLL_S
from serving.fleet.state import FleetState
from serving.lifecycle import AdapterLifecycle

log = logging.getLogger("vladapter.fleet")

RETRY_S = 1.0  # after a failed apply or an unreachable controller


class Watcher:
    """The thread; `controller` is a Ray Serve handle of `FleetController`, `actor` this
    replica's Ray actor (the controller asks it whether it is alive), `stats()` what the
    replica reports with each poll."""

    def __init__(self, replica: str, controller: Any, adapters: AdapterLifecycle,
                 stats: Callable[[], dict[str, Any]], actor: Any = None):
        self.replica, self._controller, self._adapters = replica, controller, adapters
        self._stats, self._actor = stats, actor
        self._first = threading.Event()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fleet-watcher", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def wait_first(self, timeout: float) -> bool:
        """Whether the first record was applied within `timeout` seconds."""
        return self._first.wait(timeout)

    def alive(self) -> bool:
        return self._thread.is_alive()

    def stop(self) -> None:
        self._stopping.set()

    def _poll(self, applied: FleetState, failure: tuple[int, str] | None) -> FleetState | None:
        """The controller's record (None: unreachable now; the replica keeps serving)."""
        try:
            return self._controller.poll.remote(
                self.replica, applied, failure, self._stats(), self._actor, POLL_S
            ).result(timeout_s=POLL_S + 60)
        except Exception as exc:  # a controller Ray Serve is restarting, a network fault
            log.warning("fleet controller unreachable (%s: %s); retrying",
                        type(exc).__name__, exc)
            return None

    def _run(self) -> None:
        applied, failure = FleetState(), None
        while not self._stopping.is_set():
            record = self._poll(applied, failure)
            if record is None:
                self._stopping.wait(RETRY_S)
                continue
            if record.generation == applied.generation:
                continue
            problems = converge(self._adapters, record)
            if problems:
                failure = (record.generation, "; ".join(problems))
                self._stopping.wait(RETRY_S)
                continue
            applied, failure = record, None
            self._first.set()
