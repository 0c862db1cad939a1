"""One replica of the fleet: the single server's stack behind Ray Serve's gRPC proxy.

Each replica builds what `adapter-serve` builds (serving.stack.build_stack: the resident
backbone, the adapter store, the device slots, the continuous mixed-adapter batcher, the
metrics) and answers every method of `vladapter.v1.Inference`, `vladapter.v1.Repository`
and KServe v2 `inference.GRPCInferenceService` with the single server's servicers:

    proxy --(method name, request, RayServegRPCContext)--> AdapterReplica.<Method>
        1. a bearer token where `--token-file` asks for one (serving.security)
        2. request bytes that did not parse (serving.fleet.proxy) answer INVALID_ARGUMENT
        3. Predict, PredictStream, ModelInfer: the adapter goes through Ray Serve's
           multiplexed loader (`serve.multiplexed`, `multiplexed_models` ids per
           replica): the store's fetch (registry -> host memory, verified), or with
           `--load-on-demand` the lifecycle's `load_on_demand` (this replica alone loads
           and serves it); Ray Serve then routes requests that carry this reference as
           `multiplexed_model_id` to this replica. A call waits for it until the
           client's deadline, which the `vladapter-timeout-s` metadata carries (`Client`
           sends it: Ray Serve's proxy keeps gRPC's own deadline to itself)
        4. the servicer method runs on a worker thread with a `ProxyContext`; its status
           codes and messages reach the client unchanged

Load / Unload / Pin go through `FleetAdapters` (every replica serves the change before the
call returns); the `Watcher` keeps this replica on the fleet's record. Every answer
carries the trailing metadata `vladapter-replica` (which replica answered); each poll
reports this replica's answered calls and cache counters to the controller.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace
from typing import Any

import grpc
from ray import serve
from tritonclient.grpc import service_pb2

from modeling.host_memory import keep_freed_memory
from serving.adapter_store import AdapterKey
from serving.client import TIMEOUT_KEY, multiplexed_id, parse_adapter_spec
from serving.config import ServeConfig
from serving.decoding import refuse
from serving.fleet.adapters import FleetAdapters
from serving.fleet.proxy import name_kserve_messages
from serving.fleet.state import Change
from serving.fleet.watcher import Watcher
from serving.metrics import CACHE_EVENTS, TIERS
from serving.protos import inference_pb2, repository_pb2
from serving.requests import RequestError, deadline_exceeded, time_left
from serving.stack import build_stack

log = logging.getLogger("vladapter.fleet")

REPLICA_KEY = "vladapter-replica"  # trailing metadata: the replica that answered
# Every RPC of these services becomes a method of AdapterReplica (the proxy calls a replica
# method by the RPC's name), answered by the stack's servicer of that attribute.
SERVICES = {"inference": inference_pb2.DESCRIPTOR.services_by_name["Inference"],
            "repository": repository_pb2.DESCRIPTOR.services_by_name["Repository"],
            "kserve": service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"]}
ROUTED = {"Predict", "PredictStream", "ModelInfer"}  # carry an adapter: multiplexed
_END = object()


class CallEnded(Exception):
    """A servicer aborted its call; the status is on the Ray context, for the proxy."""


class ProxyContext:
    """What our servicers use of `grpc.ServicerContext`, over Ray Serve's context."""

    def __init__(self, ray_context: Any):
        self._ray = ray_context
        self._callbacks: list[Callable[[], None]] = []
        self._arrived = time.monotonic()  # the client's timeout counts from here
        self._deadline: float | None = None  # time.monotonic() seconds; see take_deadline

    def abort(self, code: grpc.StatusCode, details: str) -> None:
        self._ray.set_code(code)
        self._ray.set_details(details)
        raise CallEnded(details)

    def take_deadline(self) -> None:
        """Read the client's deadline from its `TIMEOUT_KEY` metadata (serving.client):
        Ray Serve's proxy keeps gRPC's own deadline to itself. None there: no deadline
        (as a single server's client without one); a value that is not a positive number
        of seconds ends the call INVALID_ARGUMENT naming the key."""
        value = dict(self.invocation_metadata()).get(TIMEOUT_KEY)
        if value is None:
            return
        try:
            seconds = float(value)
        except ValueError:
            seconds = math.nan
        if not (math.isfinite(seconds) and seconds > 0):
            shown = repr(value) if len(value) <= 40 else repr(value[:37] + "...")
            self.abort(grpc.StatusCode.INVALID_ARGUMENT, f"metadata {TIMEOUT_KEY!r} must be "
                       f"a positive number of seconds, got {shown}")
        self._deadline = self._arrived + seconds

    def time_remaining(self) -> float | None:
        """Seconds until the client's deadline (`take_deadline`; None: none). The proxy
        also cancels a call whose client went away (see `cancelled`)."""
        return time_left(self._deadline)

    def add_callback(self, callback: Callable[[], None]) -> bool:
        self._callbacks.append(callback)
        return True

    def cancelled(self) -> None:
        """The client went away (Ray Serve cancelled the call): run the callbacks, which
        take the request out of the engine's queue or batch."""
        for callback in self._callbacks:
            callback()

    def invocation_metadata(self) -> list[tuple[str, str]]:
        return self._ray.invocation_metadata()


def _reference(request: Any) -> str:
    """The adapter reference a request names (NAME, NAME:VERSION, NAME@ALIAS), "" none."""
    if isinstance(request, inference_pb2.PredictRequest):
        return multiplexed_id(request.adapter)
    if isinstance(request, service_pb2.ModelInferRequest) and request.model_name:
        version = request.model_version
        return f"{request.model_name}:{version}" if version else request.model_name
    return ""


def multiplexed_models(config: ServeConfig) -> int:
    """How many adapter references Ray Serve's multiplexed table of one replica holds
    (`max_num_models_per_replica`; -1: no bound): what the replica keeps where a miss is
    dear. With `--load-on-demand` that is the host tier (`--host-adapters`; unbounded
    without it), so Ray Serve routes a reference to the replica that still holds it in
    host memory; otherwise every loaded adapter is in every replica's host memory and the
    device slots are what differ.

    When Ray Serve's table is full it drops its least recently used reference, calls the
    loaded object's `__del__` and stops preferring this replica for it: on demand that
    object is `routed_adapter`'s, so the adapter leaves host memory too unless a request
    or a pin holds it (then the host LRU takes it later), and host memory holds what Ray
    Serve routes here. Ids naming one version (`alpha`, `alpha:2`) are two entries of
    the table: the version leaves when the table drops the last of them
    (`AdapterLifecycle.route_on_demand` counts them)."""
    if config.load_on_demand:
        return config.host_adapters or -1
    return config.device_slots


def routed_adapter(key: AdapterKey, release: Callable[[str, int], Any]) -> SimpleNamespace:
    """What Ray Serve's multiplexed table holds for an adapter: its key, and a `__del__`
    that Ray Serve calls when it drops the reference (release(name, version):
    `AdapterReplica._dropped`, which on demand calls `AdapterLifecycle.release_on_demand`,
    giving up the route this id took by `route_on_demand`: another id of the version keeps
    it). An instance attribute, so
    Ray Serve alone calls it (Python's finalizer looks at the class); it never raises, as
    Ray Serve unloads right before a load that an exception would fail."""
    def drop() -> None:
        try:
            release(*key)
        except Exception:  # a stopping engine: the host tier is going anyway
            log.exception("releasing %s:%d failed", *key)
    return SimpleNamespace(key=key, __del__=drop)


def cache_counts(metrics: Any) -> dict[str, dict[str, float]]:
    """{tier: {event: count}} of the stack's cache counters (serving.metrics)."""
    if metrics is None:
        return {}
    sample = metrics.registry.get_sample_value
    return {tier: {event: sample("vladapter_cache_events_total",
                                 {"tier": tier, "event": event}) or 0.0
                   for event in CACHE_EVENTS} for tier in TIERS}


class AdapterReplica:
    """The Ray Serve deployment class of a fleet replica (serving.fleet.app deploys it).

    config: the adapter-serve settings; controller: a handle of `FleetController`.
    """

    def __init__(self, config: ServeConfig, controller: Any):
        keep_freed_memory()  # this replica's process, as `adapter-serve` does for its own
        context = serve.get_replica_context()
        self.id, self.config, self.controller = context.replica_id.unique_id, config, controller
        self.stack = build_stack(config, control=lambda local: FleetAdapters(local,
                                                                             self._publish))
        self._answered: Counter[str] = Counter()
        self._held: set[str] = set()  # the ids in Ray Serve's multiplexed table here
        self._lock = threading.Lock()
        # Every accepted call may wait on a worker (Ray Serve admits max_ongoing_requests).
        self._pool = ThreadPoolExecutor(config.max_batch + config.max_queue + 4,
                                        thread_name_prefix="replica")
        self._auth = token_check(config)

        async def fetch(reference: str) -> Any:  # a function: Ray keeps its cache on
            return await self._fetch_adapter(reference)  # it, not on a method

        self._warm = serve.multiplexed(
            max_num_models_per_replica=multiplexed_models(config))(fetch)
        self.stack.engine.start()
        import ray

        self._watcher = Watcher(self.id, controller, self.stack.adapters, self.stats,
                                ray.get_runtime_context().current_actor)
        self._watcher.start()
        if not self._watcher.wait_first(config.fleet_sync_s):
            self.stack.stop(0)
            raise RuntimeError(f"replica {self.id} could not serve the fleet's adapters "
                               f"within {config.fleet_sync_s:g}s (see its log)")
        self.stack.kserve.ready.set()
        if config.metrics_port is not None and self.stack.metrics is not None:
            self._serve_metrics(config.metrics_port + context.rank.local_rank)
        log.info("replica %s serves %s", self.id, self.stack.adapters.active())

    def _serve_metrics(self, port: int) -> None:
        """Prometheus on `port` (--metrics-port + this replica's rank on its node); a port
        taken (a replica still stopping holds it) costs the metrics, not the replica."""
        try:
            self.stack.metrics.start_http(port)
        except OSError as exc:
            log.error("replica %s: no metrics endpoint on port %d: %s", self.id, port, exc)

    # --- fleet ---------------------------------------------------------------------------
    def _publish(self, change: Change) -> int | None:
        """Record `change` for the fleet and wait until every live replica serves it."""
        try:
            generation, version = self.controller.change.remote(change).result(
                timeout_s=self.config.fleet_sync_s)
            problems = [] if version is None else self.controller.settle.remote(
                generation, self.config.fleet_sync_s).result(
                timeout_s=self.config.fleet_sync_s + 30)
        except Exception as exc:  # the controller is restarting or unreachable
            raise RequestError(grpc.StatusCode.UNAVAILABLE,
                               f"{change}: the fleet controller did not answer "
                               f"({type(exc).__name__}); retry") from None
        if problems:
            raise RequestError(grpc.StatusCode.UNAVAILABLE,
                               f"{change} is recorded but not every replica serves it yet: "
                               + "; ".join(problems))
        return version

    def stats(self) -> dict[str, Any]:
        """What this replica reports with each poll: answered calls per method, caches,
        adapters loaded on demand, the multiplexed ids it holds (those Ray Serve routes
        here: a request's affinity is observable)."""
        with self._lock:
            answered, held = dict(self._answered), sorted(self._held)
        metrics = self.stack.metrics
        loads = 0.0 if metrics is None else metrics.registry.get_sample_value(
            "vladapter_adapter_on_demand_loads_total") or 0.0
        return {"answered": answered, "cache": cache_counts(metrics), "on_demand_loads": loads,
                "multiplexed_ids": held}

    async def _fetch_adapter(self, reference: str) -> SimpleNamespace:
        """Ray Serve's multiplexed loader: the store's fetch of the referenced version, or
        (`--load-on-demand`) its load on this replica; the id counts as held here (`stats`)
        until Ray Serve drops it from its table (`routed_adapter`)."""
        name, version, alias = parse_adapter_spec(reference)
        adapters = self.stack.adapters
        loop = asyncio.get_running_loop()
        if adapters.on_demand:
            if alias:
                version = adapters.resolve(name, alias=alias)
            number = await loop.run_in_executor(self._pool, adapters.route_on_demand, name,
                                                version)
            key, release = (name, number), adapters.release_on_demand
        else:
            if version is None:
                version = adapters.resolve(name, alias=alias) if alias else \
                    adapters.active_version(name)
            entry = await loop.run_in_executor(self._pool, adapters.prepare, name, version)
            key, release = entry.key, None
        with self._lock:
            self._held.add(reference)
        return routed_adapter(key, functools.partial(self._dropped, reference, release))

    def _dropped(self, reference: str, release: Callable[[str, int], Any] | None, name: str,
                 version: int) -> None:
        """Ray Serve dropped `reference` from its table: not held here any more; on demand
        the lifecycle gives up its route (release(name, version))."""
        with self._lock:
            self._held.discard(reference)
        if release is not None:
            release(name, version)

    async def _admit(self, path: str, request: Any, context: ProxyContext) -> None:
        """Token, the client's deadline, request bytes and the multiplexed loader, before
        the servicer runs (a request that did not parse arrives as
        `serving.decoding.Undecodable`)."""
        if self._auth is not None:
            self._auth(path, context)
        context.take_deadline()
        refuse(request, context)
        if path.rsplit("/", 1)[1] in ROUTED:
            await self._warm_adapter(_reference(request), context)

    async def _warm_adapter(self, reference: str, context: ProxyContext) -> None:
        """The multiplexed loader for a loaded adapter (any adapter, on demand), waited
        for until the client's deadline (then DEADLINE_EXCEEDED naming the reference, as
        the single server's wait for an on-demand load) or its cancellation: the load,
        which Ray Serve shares with every request for the reference, goes on and lands in
        Ray Serve's table. What goes wrong in the load the servicer answers next, with the
        single server's checks and codes."""
        try:
            name, _, _ = parse_adapter_spec(reference)
        except ValueError:
            return
        adapters = self.stack.adapters
        if not (adapters.on_demand or adapters.active_version(name) is not None):
            return
        loading = asyncio.ensure_future(self._warm(reference))
        loading.add_done_callback(_retrieved)
        try:
            await asyncio.wait_for(asyncio.shield(loading), context.time_remaining())
        except TimeoutError:
            error = deadline_exceeded(f"adapter {reference} was loaded on this replica (it "
                                      "goes on loading for later requests)")
            self.stack.engine.metrics.error(error.code.name)
            context.abort(error.code, error.message)
        except (RequestError, ValueError):
            pass

    def _done(self, method: str, ray_context: Any) -> None:
        ray_context.set_trailing_metadata([(REPLICA_KEY, self.id)])
        with self._lock:
            self._answered[method] += 1

    # --- health and shutdown -------------------------------------------------------------
    def check_health(self) -> None:
        """Ray Serve's health check: the engine runs and the watcher follows the fleet."""
        if not self.stack.ready():
            raise RuntimeError(f"replica {self.id}: the engine is not running")
        if not self._watcher.alive():
            raise RuntimeError(f"replica {self.id}: the fleet watcher stopped")

    def __del__(self) -> None:
        """Ray Serve drained this replica's calls (graceful_shutdown_timeout_s = grace_s):
        leave the fleet, finish what the engine still holds, stop."""
        watcher = getattr(self, "_watcher", None)
        if watcher is None:
            return
        watcher.stop()
        try:
            self.controller.leave.remote(self.id)
        except Exception:  # the application is being deleted with its controller
            pass
        self.stack.stop(self.config.grace_s)
        if self.stack.metrics is not None:
            self.stack.metrics.stop_http()
        self._pool.shutdown(wait=False)


def _retrieved(loading: asyncio.Future) -> None:
    """Take a shared load's outcome, so asyncio does not log a failure that the servicer
    answers (or a load whose waiters all gave up) as never retrieved."""
    if not loading.cancelled():
        loading.exception()


def token_check(config: ServeConfig) -> Callable[[str, ProxyContext], None] | None:
    """The single server's bearer-token rule (serving.security) as a per-call check."""
    if not config.token_file:
        return None
    from serving.security import TokenAuthInterceptor, read_token_file

    rule = TokenAuthInterceptor(read_token_file(config.token_file), config.protect_inference)

    def check(path: str, context: ProxyContext) -> None:
        if rule.requires_token(path):
            refusal = rule.refusal(tuple(context.invocation_metadata()))
            if refusal is not None:
                context.abort(grpc.StatusCode.UNAUTHENTICATED, refusal)
    return check


def _sync_requests(requests: Any, loop: asyncio.AbstractEventLoop,
                   context: ProxyContext) -> Iterator[Any]:
    """Ray Serve's async request stream as the iterator a servicer reads on its thread;
    bytes that do not parse end the call INVALID_ARGUMENT, as on the single server."""
    while True:
        try:
            request = asyncio.run_coroutine_threadsafe(requests.__anext__(), loop).result()
        except StopAsyncIteration:
            return
        refuse(request, context)
        yield request


def _rpc(service: str, method: Any) -> Callable:
    """The replica method the proxy calls for one RPC: it runs the servicer's method."""
    path = f"/{method.containing_service.full_name}/{method.name}"

    async def stream(self: AdapterReplica, request: Any, grpc_context: Any):
        context, loop = ProxyContext(grpc_context), asyncio.get_running_loop()
        handler = getattr(getattr(self.stack, service), method.name)
        try:
            if method.client_streaming:
                await self._admit(path, None, context)
                chunks = iter(handler(_sync_requests(request, loop, context), context))
            else:
                await self._admit(path, request, context)
                chunks = iter(handler(request, context))
            while (chunk := await loop.run_in_executor(self._pool, next, chunks, _END)) \
                    is not _END:
                yield chunk
        except asyncio.CancelledError:
            context.cancelled()
            raise
        finally:
            self._done(method.name, grpc_context)

    async def unary(self: AdapterReplica, request: Any, grpc_context: Any):
        context, loop = ProxyContext(grpc_context), asyncio.get_running_loop()
        handler = getattr(getattr(self.stack, service), method.name)
        try:
            await self._admit(path, request, context)
            return await loop.run_in_executor(self._pool, handler, request, context)
        except asyncio.CancelledError:
            context.cancelled()
            raise
        finally:
            self._done(method.name, grpc_context)

    call = stream if method.server_streaming else unary
    call.__name__ = call.__qualname__ = method.name
    return call


def _add_rpcs() -> None:
    names = [m.name for service in SERVICES.values() for m in service.methods]
    clashes = sorted(n for n, count in Counter(names).items() if count > 1)
    if clashes:  # the proxy routes by method name alone
        raise RuntimeError(f"RPC names served twice through Ray Serve: {clashes}")
    for attribute, service in SERVICES.items():
        for method in service.methods:
            if method.client_streaming and not method.server_streaming:
                raise RuntimeError(f"{method.full_name}: client streaming is not bridged")
            setattr(AdapterReplica, method.name, _rpc(attribute, method))


_add_rpcs()
name_kserve_messages()
