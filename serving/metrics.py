"""Prometheus metrics of one server, in a registry of their own.

Each `ServerMetrics` owns a `CollectorRegistry`, so several servers in one process (tests)
never clash over metric names. Exposed names (all prefixed `vladapter_`):

    vladapter_queue_depth                               gauge      requests waiting
    vladapter_batch_size                                histogram  requests per batch
    vladapter_batch_distinct_adapters                   histogram  adapters per batch
    vladapter_latency_seconds{task, stage}              histogram  stage: queue, vision,
                                                                   encode, decode, total
    vladapter_cache_events_total{tier, event}           counter    tier: registry, host,
                                                                   device; event: hit, miss,
                                                                   eviction, restack (device:
                                                                   the whole bank rebuilt;
                                                                   host eviction: a version
                                                                   left host memory)
    vladapter_adapter_load_seconds                      histogram  registry -> usable
    vladapter_adapter_on_demand_loads_total             counter    names a request put in
                                                                   service (--load-on-demand)
    vladapter_errors_total{code}                        counter    gRPC status code name
"""

from __future__ import annotations

import socket
import threading
from importlib.metadata import PackageNotFoundError, version
from wsgiref.simple_server import WSGIServer

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    start_http_server,
)

STAGES = ("queue", "vision", "encode", "decode", "total")
TIERS = ("registry", "host", "device")
CACHE_EVENTS = ("hit", "miss", "eviction", "restack")
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                   10.0, 30.0)
LOAD_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


def _returns_server() -> bool:
    """Whether `start_http_server` returns its (server, thread): prometheus_client >= 0.20."""
    try:
        major, minor = (int(part) for part in version("prometheus_client").split(".")[:2])
    except (PackageNotFoundError, ValueError):
        return False
    return (major, minor) >= (0, 20)


_RETURNS_SERVER = _returns_server()


def _check(value: str, allowed: tuple[str, ...], what: str) -> None:
    """Refuse a label value outside `allowed`: unbounded labels would grow the registry."""
    if value not in allowed:
        raise ValueError(f"unknown {what} {value!r}; expected one of {', '.join(allowed)}")


def _free_port(addr: str) -> int:
    """A port free on `addr` right now (for prometheus_client versions that hide theirs)."""
    with socket.socket(socket.AF_INET6 if ":" in addr else socket.AF_INET) as probe:
        probe.bind((addr, 0))
        return int(probe.getsockname()[1])


class ServerMetrics:
    """The server's counters, gauges and histograms, plus an HTTP endpoint to scrape them."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self._http_server: WSGIServer | None = None
        self._http_thread: threading.Thread | None = None
        self._queue_depth = Gauge("vladapter_queue_depth", "Requests waiting to be batched.",
                                  registry=self.registry)
        self._batch_size = Histogram("vladapter_batch_size", "Requests per executed batch.",
                                     buckets=BATCH_BUCKETS, registry=self.registry)
        self._batch_adapters = Histogram(
            "vladapter_batch_distinct_adapters", "Distinct adapters per executed batch.",
            buckets=BATCH_BUCKETS, registry=self.registry)
        self._latency = Histogram(
            "vladapter_latency_seconds", "Request latency in seconds, per task and stage.",
            ["task", "stage"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self._cache_events = Counter(
            "vladapter_cache_events", "Adapter cache hits, misses and evictions per tier.",
            ["tier", "event"], registry=self.registry)
        self._adapter_load = Histogram(
            "vladapter_adapter_load_seconds", "Seconds to load an adapter from the registry.",
            buckets=LOAD_BUCKETS, registry=self.registry)
        self._on_demand_loads = Counter(
            "vladapter_adapter_on_demand_loads",
            "Adapters a request loaded and put in service because they were not loaded.",
            registry=self.registry)
        self._errors = Counter("vladapter_errors", "Failed calls by gRPC status code name.",
                               ["code"], registry=self.registry)

    def queue_depth(self, n: int) -> None:
        """Set the number of requests waiting in the batching queue."""
        self._queue_depth.set(n)

    def batch(self, size: int, distinct_adapters: int) -> None:
        """Record one executed batch: `size` requests over `distinct_adapters` adapters."""
        self._batch_size.observe(size)
        self._batch_adapters.observe(distinct_adapters)

    def latency(self, task: str, stage: str, seconds: float) -> None:
        """Record `seconds` spent by one request of `task` in `stage` (see STAGES)."""
        _check(stage, STAGES, "stage")
        self._latency.labels(task=task, stage=stage).observe(seconds)

    def cache_event(self, tier: str, event: str) -> None:
        """Count one cache `event` (hit, miss, eviction, restack) in `tier` (registry, host,
        device)."""
        _check(tier, TIERS, "tier")
        _check(event, CACHE_EVENTS, "cache event")
        self._cache_events.labels(tier=tier, event=event).inc()

    def adapter_load(self, seconds: float) -> None:
        """Record the time one adapter took to load."""
        self._adapter_load.observe(seconds)

    def on_demand_load(self) -> None:
        """Count one adapter a request loaded on demand (`--load-on-demand`)."""
        self._on_demand_loads.inc()

    def error(self, code_name: str) -> None:
        """Count one failed call by its gRPC status code name (e.g. `NOT_FOUND`)."""
        self._errors.labels(code=code_name).inc()

    def start_http(self, port: int, addr: str = "0.0.0.0") -> int:
        """Serve `/metrics` over HTTP on `addr:port` (0: a free port); returns the bound port."""
        if self._http_server is not None:
            raise RuntimeError("the metrics HTTP server is already running")
        if port == 0 and not _RETURNS_SERVER:
            port = _free_port(addr)
        started = start_http_server(port, addr=addr, registry=self.registry)
        if isinstance(started, tuple) and isinstance(started[0], WSGIServer):
            self._http_server, self._http_thread = started
            return int(self._http_server.server_port)
        return port

    def stop_http(self) -> None:
        """Stop the HTTP endpoint started by `start_http` (no-op when none runs)."""
        if self._http_server is None:
            return
        self._http_server.shutdown()
        self._http_server.server_close()
        if self._http_thread is not None:
            self._http_thread.join(timeout=5)
        self._http_server = self._http_thread = None
