"""Work handed to one owner thread (the engine's) by other threads, which wait for its result.

    caller thread                         owner thread
    commands.call(fn) --queue, wake--->   commands.run_pending()   (between two steps)
                      <---result / exception---

Before the owner thread starts, and once it has ended, no thread runs the queue: a caller
then runs the pending work itself, one caller at a time, so the work always runs on one
thread at a time and in the order it was queued.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import TypeVar

T = TypeVar("T")


class Commands:
    """A queue of functions for one owner thread; `call` returns a function's result."""

    def __init__(self, wake: Callable[[], None]):
        """wake(): makes the owner thread look at the queue soon (it may be waiting)."""
        self._wake = wake
        self._pending: queue.SimpleQueue[tuple[Callable, Future]] = queue.SimpleQueue()
        self._lock = threading.Lock()  # held while the owner starts or ends, or off-owner runs
        self._owner: threading.Thread | None = None

    def call(self, fn: Callable[[], T]) -> T:
        """Run `fn()` on the owner thread before its next step; returns its result or
        raises its exception (the caller waits)."""
        if threading.current_thread() is self._owner:
            return fn()
        done: Future = Future()
        self._pending.put((fn, done))
        with self._lock:
            if self._owner is None:
                self.run_pending()
        self._wake()
        return done.result()

    def start(self, owner: threading.Thread) -> None:
        """Start `owner`, which runs the queue from now on."""
        with self._lock:
            self._owner = owner
            owner.start()

    def end(self) -> None:
        """The owner thread ends (called on it): callers run their work from now on."""
        with self._lock:
            self._owner = None
            self.run_pending()

    def pending(self) -> bool:
        return not self._pending.empty()

    def run_pending(self) -> None:
        """Run every queued function, in order, handing each result to its caller."""
        while True:
            try:
                fn, done = self._pending.get_nowait()
            except queue.Empty:
                return
            try:
                result = fn()
            except BaseException as exc:  # the caller gets it; the owner goes on
                done.set_exception(exc)
            else:
                done.set_result(result)
