"""The fleet's record, the controller's book and one replica's convergence, without Ray.

FleetState / FleetBook (serving.fleet.state) and FleetController (its async methods, run on
one event loop here as in Ray Serve) with fake replicas; `converge` on a real adapter
lifecycle over the published adapters (conftest.py); a replica's publish step with a fake
controller handle.
"""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace

import grpc
import pytest

from serving.client import TIMEOUT_KEY
from serving.config import ServeConfig
from serving.fleet.adapters import FleetAdapters, converge
from serving.fleet.controller import FleetController
from serving.fleet.replica import AdapterReplica, CallEnded, ProxyContext, token_check
from serving.fleet.state import LOAD, PIN, UNLOAD, Change, FleetBook, FleetState, Served
from serving.requests import RequestError
from serving.stack import build_stack

START = FleetState(1, {"alpha": Served(2), "beta": Served(1)})


def test_changes_number_the_record_and_a_swap_drops_the_pin():
    pinned, version = START.after(Change(PIN, "alpha", pinned=True))
    assert (pinned.generation, version, pinned.adapters["alpha"]) == (2, 2, Served(2, True))
    same, _ = pinned.after(Change(LOAD, "alpha", 2))
    assert same.adapters["alpha"] == Served(2, True)  # the pinned version loaded again
    swapped, version = pinned.after(Change(LOAD, "alpha", 1))
    assert (swapped.generation, version, swapped.adapters["alpha"]) == (3, 1, Served(1))
    gone, version = swapped.after(Change(UNLOAD, "beta"))
    assert (version, sorted(gone.adapters)) == (1, ["alpha"])
    for change in (Change(UNLOAD, "gamma"), Change(PIN, "gamma", pinned=True)):
        assert gone.after(change) == (gone, None)  # not loaded: nothing changes
    assert START.adapters == {"alpha": Served(2), "beta": Served(1)}  # records are values


def test_the_book_waits_for_lagging_replicas_and_names_failures():
    book = FleetBook(START)
    book.report("r1", START, None, {}, now=0.0)
    book.report("r2", FleetState(), None, {}, now=0.0)
    generation, version = book.change(Change(LOAD, "alpha", 1))
    assert (generation, version) == (2, 1)
    assert book.lagging(2) == ["r1", "r2"] and book.problems(2) == []
    book.report("r1", book.state, None, {}, now=1.0)
    book.report("r2", START, (2, "alpha:1: stored bytes differ"), {}, now=1.0)
    assert book.lagging(2) == ["r2"]
    assert book.problems(2) == ["replica r2: alpha:1: stored bytes differ"]
    book.leave("r2")
    assert book.lagging(2) == [] and book.problems(2) == []


def test_a_restarted_controller_takes_the_record_back_from_its_replicas():
    later, _ = START.after(Change(UNLOAD, "beta"))
    fresh = FleetBook(START)  # Ray Serve restarted the controller with its start record
    fresh.report("r1", later, None, {}, now=0.0)
    assert fresh.state == later
    fresh.change(Change(LOAD, "beta", 1))
    fresh.report("r2", later, None, {}, now=0.0)  # its own record now: no going back
    assert "beta" in fresh.state.adapters


class FakeReplica:
    """Polls a controller like serving.fleet.watcher, applying records after `delay` s;
    `refuse`: a message it fails with instead."""

    def __init__(self, controller: FleetController, name: str, delay: float = 0.0,
                 refuse: str = ""):
        self.controller, self.name, self.delay, self.refuse = controller, name, delay, refuse
        self.applied = FleetState()

    async def run(self) -> None:
        failure = None
        while True:
            record = await self.controller.poll(self.name, self.applied, failure, {}, None, 0.2)
            if record.generation == self.applied.generation:
                continue
            await asyncio.sleep(self.delay)
            if self.refuse:
                failure = (record.generation, self.refuse)
                await asyncio.sleep(0.05)
            else:
                self.applied, failure = record, None


def test_settle_returns_once_every_replica_serves_the_change_or_says_why_not():
    async def scenario() -> None:
        controller = FleetController(START)
        fast, slow = FakeReplica(controller, "fast"), FakeReplica(controller, "slow", 0.3)
        tasks = [asyncio.create_task(r.run()) for r in (fast, slow)]
        await asyncio.sleep(0.5)
        generation, version = await controller.change(Change(LOAD, "alpha", 1))
        assert await controller.settle(generation, timeout_s=10) == []
        assert fast.applied.generation == slow.applied.generation == generation
        assert (await controller.change(Change(UNLOAD, "gamma")))[1] is None
        broken = FakeReplica(controller, "broken", refuse="alpha:2: DATA_LOSS")
        tasks.append(asyncio.create_task(broken.run()))
        await asyncio.sleep(0.3)
        generation, _ = await controller.change(Change(LOAD, "alpha", 2))
        assert await controller.settle(generation, timeout_s=10) == [
            "replica broken: alpha:2: DATA_LOSS"]
        tasks.pop().cancel()  # the broken replica stops (Ray Serve replaces it) and leaves
        await asyncio.sleep(0)
        await controller.leave("broken")
        silent = FakeReplica(controller, "silent", delay=30.0)
        tasks.append(asyncio.create_task(silent.run()))
        await asyncio.sleep(0.3)
        generation, _ = await controller.change(Change(PIN, "alpha", pinned=True))
        problems = await controller.settle(generation, timeout_s=1.0)
        assert problems == ["replicas silent do not serve it after 1s"]
        snapshot = await controller.snapshot()
        assert snapshot["adapters"]["alpha"] == (2, True)
        assert sorted(snapshot["replicas"]) == ["fast", "silent", "slow"]
        for task in tasks:
            task.cancel()

    asyncio.run(scenario())


@pytest.fixture
def lifecycle(backbone, published):
    """A fresh stack's adapter lifecycle (engine not started: changes run on the caller)."""
    stack = build_stack(ServeConfig(registry=published.root), backbone)
    yield stack.adapters
    stack.store.close()


def test_converge_makes_a_lifecycle_serve_the_record(lifecycle):
    lifecycle.load("gamma")
    record = FleetState(3, {"alpha": Served(1, True), "beta": Served(1)})
    assert converge(lifecycle, record) == []
    assert lifecycle.active() == {"alpha": 1, "beta": 1}
    assert lifecycle.state("alpha", 1).pinned and not lifecycle.state("beta", 1).pinned
    swapped, _ = record.after(Change(LOAD, "alpha", 2))
    assert converge(lifecycle, swapped) == []
    assert lifecycle.active() == {"alpha": 2, "beta": 1}
    assert not lifecycle.state("alpha", 2).pinned  # the pin stayed with version 1
    missing = FleetState(5, {"alpha": Served(9), "beta": Served(1)})
    problems = converge(lifecycle, missing)
    assert len(problems) == 1 and problems[0].startswith("alpha:9: ")
    assert lifecycle.active() == {"alpha": 2, "beta": 1}  # what it could not load stays


def test_fleet_adapters_check_a_load_here_then_publish_it(lifecycle):
    published: list[Change] = []

    def publish(change: Change) -> int | None:
        published.append(change)
        return None if change.name == "gamma" else 1

    adapters = FleetAdapters(lifecycle, publish)
    assert adapters.load("alpha", alias="latest") == 2
    assert published == [Change(LOAD, "alpha", 2)]
    assert lifecycle.active() == {}  # served by the watcher, not here
    for refused, code in ((lambda: adapters.load("alien"), grpc.StatusCode.FAILED_PRECONDITION),
                          (lambda: adapters.load("nobody"), grpc.StatusCode.NOT_FOUND),
                          (lambda: adapters.unload("gamma"), grpc.StatusCode.NOT_FOUND),
                          (lambda: adapters.pin("gamma"), grpc.StatusCode.NOT_FOUND)):
        with pytest.raises(RequestError) as error:
            refused()
        assert error.value.code == code
    assert [c.kind for c in published] == [LOAD, UNLOAD, PIN]  # refused loads never left
    assert adapters.unload("beta") == 1 and adapters.pin("beta", False) == 1


class FakeController:
    """A Ray Serve handle of FleetController as AdapterReplica._publish uses it."""

    def __init__(self, settle: list[str], version: int | None = 2, down: bool = False):
        self.calls: list[tuple] = []
        self._settle, self._version, self._down = settle, version, down
        self.change = SimpleNamespace(remote=lambda change: self._answer("change", change))
        self.settle = SimpleNamespace(remote=lambda generation, timeout_s:
                                      self._answer("settle", generation))

    def _answer(self, method: str, argument) -> SimpleNamespace:
        self.calls.append((method, argument))
        if self._down:
            raise ConnectionError("controller restarting")
        value = (7, self._version) if method == "change" else self._settle
        return SimpleNamespace(result=lambda timeout_s=None: value)


def _publish(controller: FakeController, change: Change) -> int | None:
    replica = SimpleNamespace(controller=controller, config=ServeConfig(fleet_sync_s=5.0))
    return AdapterReplica._publish(replica, change)


def test_a_replica_publishes_a_change_and_returns_once_every_replica_serves_it():
    change = Change(LOAD, "alpha", 2)
    controller = FakeController(settle=[])
    assert _publish(controller, change) == 2
    assert controller.calls == [("change", change), ("settle", 7)]  # waits for generation 7
    not_loaded = FakeController(settle=[], version=None)
    assert _publish(not_loaded, Change(UNLOAD, "gamma")) is None
    assert [method for method, _ in not_loaded.calls] == ["change"]  # nothing to wait for
    for controller, words in ((FakeController(settle=["replica r2: alpha:2: DATA_LOSS"]),
                               "not every replica serves it yet: replica r2"),
                              (FakeController(settle=[], down=True), "did not answer")):
        with pytest.raises(RequestError) as error:
            _publish(controller, change)
        assert error.value.code == grpc.StatusCode.UNAVAILABLE
        assert words in error.value.message and "Load alpha:2" in error.value.message


class FakeRayContext:
    """Ray Serve's RayServegRPCContext as ProxyContext uses it."""

    def __init__(self, metadata=()):
        self.metadata, self.code, self.details = list(metadata), None, None

    def invocation_metadata(self):
        return self.metadata

    def set_code(self, code):
        self.code = code

    def set_details(self, details):
        self.details = details


def test_a_replica_asks_for_tokens_where_the_single_server_does(tmp_path):
    tokens = tmp_path / "tokens"
    tokens.write_text("s3cret\n")
    check = token_check(ServeConfig(token_file=str(tokens)))
    load, predict = "/vladapter.v1.Repository/Load", "/vladapter.v1.Inference/Predict"
    check(predict, ProxyContext(FakeRayContext()))  # inference is open by default
    check(load, ProxyContext(FakeRayContext([("authorization", "Bearer s3cret")])))
    for metadata, words in (((), "missing authorization"),
                            ([("authorization", "Bearer nope")], "invalid bearer token")):
        ray_context = FakeRayContext(metadata)
        with pytest.raises(CallEnded):
            check(load, ProxyContext(ray_context))
        assert ray_context.code == grpc.StatusCode.UNAUTHENTICATED and words in \
            ray_context.details
    strict = token_check(ServeConfig(token_file=str(tokens), protect_inference=True))
    with pytest.raises(CallEnded):
        strict("/inference.GRPCInferenceService/ModelInfer", ProxyContext(FakeRayContext()))
    assert token_check(ServeConfig()) is None


def test_a_replica_takes_the_clients_deadline_from_its_timeout_metadata():
    """Ray Serve's proxy keeps gRPC's deadline to itself: `Client` sends its timeout as
    `vladapter-timeout-s`, which a replica's context turns into `time_remaining`."""
    context = ProxyContext(FakeRayContext([(TIMEOUT_KEY, "7.5")]))
    context.take_deadline()
    assert 0.0 < context.time_remaining() <= 7.5
    untimed = ProxyContext(FakeRayContext())
    untimed.take_deadline()
    assert untimed.time_remaining() is None  # no metadata: no deadline, as before
    for value in ("soon", "0", "-3", "nan", "inf", "1e400"):
        ray_context = FakeRayContext([(TIMEOUT_KEY, value)])
        with pytest.raises(CallEnded):
            ProxyContext(ray_context).take_deadline()
        assert ray_context.code == grpc.StatusCode.INVALID_ARGUMENT
        assert TIMEOUT_KEY in ray_context.details and repr(value) in ray_context.details


def test_fleet_adapters_answer_the_on_demand_calls_of_the_servicers(lifecycle):
    """KServe's ModelReady (`servable`) and a request's deadline-bounded load reach the
    replica's own lifecycle; the record is untouched."""
    published: list[Change] = []
    adapters = FleetAdapters(lifecycle, published.append)
    lifecycle.on_demand = True
    assert adapters.servable("gamma").version == 1 and lifecycle.active() == {}
    with pytest.raises(RequestError) as error:
        adapters.servable("alien")
    assert error.value.code == grpc.StatusCode.FAILED_PRECONDITION
    assert adapters.load_on_demand("gamma", None, time.monotonic() + 60) == 1
    assert lifecycle.active() == {"gamma": 1} and published == []
