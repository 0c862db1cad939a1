"""What travels between the gRPC threads and the engine: requests, answers, errors."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import grpc

from adapters_registry import FingerprintMismatch, IntegrityError, InvalidName, NotFound
from serving.adapter_store import AdapterRejected, HostAdapter
from serving.limits import ImageInput
from training.tasks import TaskSpec


class RequestError(Exception):
    """A request that ends with a gRPC status other than OK."""

    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.code, self.message = code, message


def error_for(exc: BaseException) -> RequestError:
    """Map a loading or registry error to the status a client sees."""
    if isinstance(exc, RequestError):
        return exc
    if isinstance(exc, NotFound):
        return RequestError(grpc.StatusCode.NOT_FOUND, str(exc))
    if isinstance(exc, FingerprintMismatch | AdapterRejected):
        return RequestError(grpc.StatusCode.FAILED_PRECONDITION, str(exc))
    if isinstance(exc, InvalidName):
        return RequestError(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
    if isinstance(exc, IntegrityError):
        return RequestError(grpc.StatusCode.DATA_LOSS, str(exc))
    return RequestError(grpc.StatusCode.INTERNAL, f"{type(exc).__name__}: {exc}")


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
    """One validated request. `adapter_version` None: the name's active version.

    events receives ("token", text) while streaming, then ("done", Prediction) or
    ("error", RequestError). deadline: time.monotonic() seconds, or None.
    """

    task: TaskSpec
    adapter_name: str
    adapter_version: int | None
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
    version: int | None = None  # bound by the engine
    adapter: HostAdapter | None = None
    loading: object = None  # the store's future while the version loads
    slot: int | None = None
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
