"""The one way a serving process learns it should stop (single server and Ray fleet)."""

from __future__ import annotations

import logging
import signal
import threading

log = logging.getLogger(__name__)


def stop_requested() -> threading.Event:
    """An event set on SIGTERM or SIGINT (installed now; the main thread must call this)."""
    done = threading.Event()

    def on_signal(signum, frame) -> None:
        log.info("received %s", signal.Signals(signum).name)
        done.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    return done
