"""What travels between the gRPC threads and the engine: requests, answers, errors."""

from __future__ import annotations

import queue
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import grpc

from adapters_registry import IntegrityError, InvalidName, NotFound, RegistryError
from modeling.config import TaskDoesNotFit
from modeling.tasks import TaskSpec
from serving.adapter_store import AdapterRejected, HostAdapter
from serving.limits import ImageInput, InvalidInput

# Inclusive bounds of request integers: proto int32 fields, and version numbers (int64 > 0;
# 0 is not a version anywhere, it never means "latest").
INT32 = (-(2**31), 2**31 - 1)
VERSION = (1, 2**63 - 1)
_INTEGER = re.compile(r"[+-]?[0-9]+")  # ASCII digits only: str.isdigit() accepts "²"


class RequestError(Exception):
    """A request that ends with a gRPC status other than OK."""

    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.code, self.message = code, message


def error_for(exc: BaseException) -> RequestError:
    """Map a request, loading or registry error to the status a client sees.

    NOT_FOUND: no such name, version or alias. INVALID_ARGUMENT: a malformed field.
    DATA_LOSS: stored bytes differ from their sha256. FAILED_PRECONDITION: the stored
    artifact exists but this server refuses it (another backbone, a shape that does not
    fit, the artifact reader's format or size checks) or a task this backbone cannot run
    (`TaskDoesNotFit`). Anything else is the server's own fault: INTERNAL.
    """
    if isinstance(exc, RequestError):
        return exc
    if isinstance(exc, InvalidInput | InvalidName):
        return RequestError(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
    if isinstance(exc, NotFound):
        return RequestError(grpc.StatusCode.NOT_FOUND, str(exc))
    if isinstance(exc, IntegrityError):
        return RequestError(grpc.StatusCode.DATA_LOSS, str(exc))
    # FingerprintMismatch, InvalidArtifact, LimitExceeded: every other registry refusal.
    if isinstance(exc, AdapterRejected | RegistryError | TaskDoesNotFit):
        return RequestError(grpc.StatusCode.FAILED_PRECONDITION, str(exc))
    return RequestError(grpc.StatusCode.INTERNAL, f"{type(exc).__name__}: {exc}")


def time_left(deadline: float | None, now: float | None = None) -> float | None:
    """Seconds until `deadline` (time.monotonic() seconds; now: that clock's reading, None:
    read it), 0.0 once it passed; None: no deadline."""
    if deadline is None:
        return None
    return max(0.0, deadline - (time.monotonic() if now is None else now))


def deadline_exceeded(before: str) -> RequestError:
    """A request whose client deadline passed before `before` (the engine answers a
    waiting one with it; so does an on-demand load's wait, serving.lifecycle)."""
    return RequestError(grpc.StatusCode.DEADLINE_EXCEEDED, f"the deadline passed before {before}")


def call_cancelled(before: str) -> RequestError:
    """A request whose client cancelled the call before `before` (an on-demand load's wait
    ends with it, serving.lifecycle)."""
    return RequestError(grpc.StatusCode.CANCELLED, f"the call was cancelled before {before}")


def parse_integer(value: object, what: str, bounds: tuple[int, int]) -> int:
    """An int, or a string of ASCII digits with an optional sign, within `bounds`
    (inclusive); anything else is InvalidInput naming `what`.

    Python's int() alone would accept "²", " 5", "1_0" or a bool, and raise ValueError on
    more than 4300 digits; proto int32 fields raise ValueError on an int64 value.
    """
    shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:37] + "..."
    if isinstance(value, str) and _INTEGER.fullmatch(value):
        digits = value.lstrip("+-").lstrip("0")
        number = int(value) if len(digits) <= 20 else None  # None: beyond any bound
    elif isinstance(value, int) and not isinstance(value, bool):
        number = value
    else:
        raise InvalidInput(f"{what} must be an integer, got {shown}")
    low, high = bounds
    if number is None or not low <= number <= high:
        kind = "a version number" if bounds == VERSION else "an integer"
        raise InvalidInput(f"{what} must be {kind} in [{low}, {high}], got {shown}")
    return number


class NoMetrics:
    """Stands in for `serving.metrics.ServerMetrics` when none is configured."""

    def __getattr__(self, name: str):
        return lambda *args, **kwargs: None


@dataclass
class Prediction:
    """What a request returns; timings in milliseconds."""

    text: str
    adapter_name: str
    adapter_version: int
    label: str = ""
    scores: list[tuple[str, float]] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    request_id: str = ""


@dataclass(eq=False)
class Request:
    """One validated request. `requested_version`: the version the client asked for
    (None: the name's active version); `bound_version`: the one the engine bound it to.

    events receives ("token", text) while streaming, then ("done", Prediction) or
    ("error", RequestError). deadline: time.monotonic() seconds, or None.
    """

    task: TaskSpec
    adapter_name: str
    requested_version: int | None
    source_text: str
    images: list[ImageInput]
    choices: list[str] = field(default_factory=list)
    max_new_tokens: int = 20
    num_beams: int = 1
    deadline: float | None = None
    request_id: str = ""
    stream: bool = False
    events: queue.SimpleQueue = field(default_factory=queue.SimpleQueue)
    cancelled: threading.Event = field(default_factory=threading.Event)
    enqueued: float = field(default_factory=time.monotonic)
    timings: dict[str, float] = field(default_factory=dict)
    bound_version: int | None = None  # set by the engine (AdapterLifecycle.bind)
    adapter: HostAdapter | None = None  # the bound version in host memory, once loaded
    loading: object = None  # the store's future while the version loads
    slot: int | None = None  # the device slot of its (version, task) set while admitted
    done: bool = False

    def cancel(self) -> None:
        self.cancelled.set()

    def tokens(self) -> Iterator[str]:
        """The streamed pieces of text until the request ends; `wait()` then answers."""
        while True:
            kind, value = self.events.get()
            if kind != "token":
                self.events.put((kind, value))  # the ending, for wait()
                return
            yield value

    def wait(self, timeout: float | None = None) -> Prediction:
        """Block until the request ends; raises its RequestError."""
        while True:
            kind, value = self.events.get(timeout=timeout)
            if kind == "done":
                return value
            if kind == "error":
                raise value
