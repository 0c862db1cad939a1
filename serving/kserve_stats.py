"""Per-model inference statistics for KServe v2 `ModelStatistics` (Triton's layout).

Counts and summed durations per (model, version); durations in nanoseconds as Triton
reports them. `success` / `fail` time a call from its arrival to its answer; `queue` is
the time a request waited for a batch and `compute_infer` the vision + encoder + decoder
time its batch took. The server batches across requests and models, so
`execution_count` equals `inference_count` (one per request) and no `batch_stats` are kept.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from tritonclient.grpc import service_pb2

NS = 1_000_000_000


@dataclass
class _Counts:
    success: int = 0
    success_ns: int = 0
    fail: int = 0
    fail_ns: int = 0
    queue_ns: int = 0
    compute_ns: int = 0
    last_ms: int = 0  # unix milliseconds of the last success


class ModelStats:
    """Thread-safe counters keyed by (model name, version string)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[tuple[str, str], _Counts] = {}

    def success(self, name: str, version: str, total_s: float, queue_s: float = 0.0,
                compute_s: float = 0.0) -> None:
        """One answered request; durations in seconds."""
        with self._lock:
            counts = self._counts.setdefault((name, version), _Counts())
            counts.success += 1
            counts.success_ns += int(total_s * NS)
            counts.queue_ns += int(queue_s * NS)
            counts.compute_ns += int(compute_s * NS)
            counts.last_ms = int(time.time() * 1000)

    def failure(self, name: str, version: str, total_s: float) -> None:
        """One request that ended with an error status."""
        with self._lock:
            counts = self._counts.setdefault((name, version), _Counts())
            counts.fail += 1
            counts.fail_ns += int(total_s * NS)

    def keys(self) -> list[tuple[str, str]]:
        with self._lock:
            return sorted(self._counts)

    def statistics(self, name: str, version: str) -> service_pb2.ModelStatistics:
        """The ModelStatistics message of one (model, version); zeros when never used."""
        with self._lock:
            c = self._counts.get((name, version), _Counts())
            c = _Counts(**vars(c))
        duration = service_pb2.StatisticDuration
        return service_pb2.ModelStatistics(
            name=name, version=version, last_inference=c.last_ms, inference_count=c.success,
            execution_count=c.success,
            inference_stats=service_pb2.InferStatistics(
                success=duration(count=c.success, ns=c.success_ns),
                fail=duration(count=c.fail, ns=c.fail_ns),
                queue=duration(count=c.success, ns=c.queue_ns),
                compute_infer=duration(count=c.success, ns=c.compute_ns)))
