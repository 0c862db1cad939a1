"""The adapter lifecycle's state machine on CPU, without an engine (the caller is the one
writer): after every load / bind / place / release / pin / unload the device slots, the
host entries and the version states are asserted. Real artifacts from the `published`
registry, a real store and slot table."""

from __future__ import annotations

import threading
import time

import grpc
import pytest
import torch

from adapters_registry import Registry
from modeling.methods.base import BackboneFacts
from modeling.tasks import TASKS
from serving.adapter_store import AdapterStore
from serving.lifecycle import AdapterLifecycle
from serving.requests import Request, RequestError
from serving.slot_table import NoFreeSlot, SlotTable


def make_lifecycle(backbone, published, slots: int = 4, host_budget: int = 1 << 30
                   ) -> AdapterLifecycle:
    store = AdapterStore(Registry(published.root), BackboneFacts.of(backbone),
                         backbone.fingerprint(), host_budget)
    table = SlotTable(slots, 1 << 30, backbone.frozen_tensors(), backbone.config.d_model,
                      torch.zeros(()))
    return AdapterLifecycle(store, table)


def request(name: str, task: str = "vqa", version: int | None = None) -> Request:
    return Request(TASKS[task], name, version, "what is the color", [])


def bind(adapters: AdapterLifecycle, job: Request) -> Request:
    """Bind `job` and wait for its version in host memory (a request that waits)."""
    adapters.bind(job)
    job.loading.result(timeout=30)
    adapters.loaded(job)
    return job


def admit(adapters: AdapterLifecycle, job: Request) -> Request:
    """Bind and place `job` (a request running in the batch)."""
    bind(adapters, job)
    adapters.place(job)
    return job


def on_device(adapters: AdapterLifecycle) -> set[tuple[str, int]]:
    return {info.adapter for info in adapters.slot_table.snapshot() if info is not None}


def test_hot_swap_retires_the_old_version_after_its_last_request(backbone, published):
    adapters = make_lifecycle(backbone, published)
    assert adapters.load("alpha", 1) == 1 and adapters.active() == {"alpha": 1}
    running = admit(adapters, request("alpha"))
    waiting = bind(adapters, request("alpha", "caption"))
    assert (running.bound_version, waiting.bound_version) == (1, 1)
    assert adapters.state("alpha", 1).in_flight == 2
    assert adapters.load("alpha", 2) == 2 and adapters.active() == {"alpha": 2}
    assert on_device(adapters) == {("alpha", 1)}  # retiring: its requests still run
    newer = admit(adapters, request("alpha"))
    assert newer.bound_version == 2 and on_device(adapters) == {("alpha", 1), ("alpha", 2)}
    adapters.release(running)
    assert ("alpha", 1) in on_device(adapters)  # a request still waits on version 1
    assert adapters.state("alpha", 1).in_flight == 1
    adapters.release(waiting)
    assert on_device(adapters) == {("alpha", 2)}  # freed after its last request
    old = adapters.state("alpha", 1)
    assert (old.state, old.in_flight, old.reason) == ("UNAVAILABLE", 0, "not the active version")
    adapters.release(newer)
    assert on_device(adapters) == {("alpha", 2)}  # the active version stays
    with pytest.raises(RuntimeError, match="without a matching bind"):
        adapters.release(_bound_copy(newer))


def _bound_copy(job: Request) -> Request:
    """A request claiming the same version as `job`, never bound: releasing it is a bug."""
    copy = request(job.adapter_name, job.task.name)
    copy.bound_version = job.bound_version
    return copy


def test_waiting_requests_hold_their_version_not_a_slot(backbone, published):
    """With more (adapter, task) sets than slots, every set gets a slot once the rows
    before it end, although other requests still wait for the adapter that held it."""
    adapters = make_lifecycle(backbone, published, slots=2)
    for name in ("alpha", "beta", "gamma"):
        adapters.load(name)
    first = admit(adapters, request("alpha"))
    second = admit(adapters, request("beta"))
    third = bind(adapters, request("gamma", "gqa"))
    also_alpha = bind(adapters, request("alpha", "caption"))
    with pytest.raises(NoFreeSlot):
        adapters.place(third)  # both slots held by running rows
    freed = first.slot
    adapters.release(first)
    assert adapters.place(third) == freed
    assert on_device(adapters) == {("gamma", 1), ("beta", 1)}
    assert adapters.state("alpha", 2).in_flight == 1  # alpha's waiting request kept it
    for job in (second, third, also_alpha):
        adapters.release(job)
    assert all(adapters.state(n, v).in_flight == 0
               for n, v in (("alpha", 2), ("beta", 1), ("gamma", 1)))


def test_a_pin_keeps_the_active_version_on_the_device_until_swap_or_unload(backbone,
                                                                           published):
    adapters = make_lifecycle(backbone, published, slots=2)
    for name in ("alpha", "beta", "gamma"):
        adapters.load(name)
    assert adapters.pin("beta") == 1 and adapters.state("beta", 1).pinned
    adapters.release(admit(adapters, request("beta")))  # beta's set: idle, the LRU's oldest
    adapters.release(admit(adapters, request("alpha")))
    adapters.release(admit(adapters, request("gamma", "gqa")))
    assert on_device(adapters) == {("beta", 1), ("gamma", 1)}  # alpha went, not beta
    assert adapters.pin("beta", False) == 1 and not adapters.state("beta", 1).pinned
    adapters.release(admit(adapters, request("alpha")))
    assert on_device(adapters) == {("gamma", 1), ("alpha", 2)}  # now beta is the LRU's
    assert adapters.pin("alpha") == 2
    adapters.load("alpha", 1)  # a hot-swap: the pin stays with version 2, which retires
    assert not adapters.state("alpha", 2).pinned and ("alpha", 2) not in on_device(adapters)
    adapters.pin("gamma")
    adapters.unload("gamma")
    assert not adapters.state("gamma", 1).pinned and on_device(adapters) == set()
    with pytest.raises(RequestError) as caught:
        adapters.pin("gamma")
    assert caught.value.code == grpc.StatusCode.NOT_FOUND and "'gamma'" in caught.value.message
    with pytest.raises(RequestError) as caught:
        adapters.unload("gamma")
    assert caught.value.code == grpc.StatusCode.NOT_FOUND


def test_host_memory_keeps_active_pinned_and_in_use_versions(backbone, published):
    adapters = make_lifecycle(backbone, published, host_budget=1)  # all over budget
    store = adapters.store
    keys = [("alpha", 1), ("alpha", 2), ("beta", 1), ("gamma", 1)]

    def on_host() -> set[tuple[str, int]]:
        return {key for key in keys if store.entry(key) is not None}

    adapters.load("alpha", 1)
    adapters.load("beta")
    adapters.pin("beta")
    adapters.load("gamma")
    assert on_host() == {("alpha", 1), ("beta", 1), ("gamma", 1)}
    asked = bind(adapters, request("alpha", version=2))  # not active, but in use
    assert on_host() == set(keys)
    adapters.release(asked)
    adapters.pin("beta", False)
    adapters.load("gamma")  # any load trims the host tier: alpha:2 is no longer used
    assert on_host() == {("alpha", 1), ("beta", 1), ("gamma", 1)}  # beta: still active
    adapters.unload("beta")
    adapters.load("gamma")
    assert on_host() == {("alpha", 1), ("gamma", 1)}


def test_a_request_for_a_name_not_loaded_is_not_found_even_with_a_version(backbone,
                                                                          published):
    adapters = make_lifecycle(backbone, published)
    with pytest.raises(RequestError) as caught:
        adapters.bind(request("alpha", version=1))
    assert caught.value.code == grpc.StatusCode.NOT_FOUND and "not loaded" in \
        caught.value.message
    assert adapters.state("alpha", 1).in_flight == 0


def test_only_the_claiming_thread_changes_the_lifecycle(backbone, published):
    """While the engine thread runs, a change from any other thread is a bug."""
    adapters = make_lifecycle(backbone, published)
    adapters.load("alpha")
    engine = threading.Thread(target=lambda: None)
    engine.start()
    engine.join()
    adapters.claim(engine.ident)
    for change in (lambda: adapters.load("alpha", 1), lambda: adapters.pin("alpha"),
                   lambda: adapters.unload("alpha"), lambda: adapters.bind(request("alpha"))):
        with pytest.raises(RuntimeError, match="only on the engine thread"):
            change()
    adapters.claim(None)
    assert adapters.active() == {"alpha": 2} and not adapters.state("alpha", 2).pinned


def test_an_on_demand_wait_ends_at_its_deadline_and_the_shared_load_goes_on(backbone,
                                                                           published):
    adapters = make_lifecycle(backbone, published)
    adapters.on_demand = True
    gate, reads = threading.Event(), []
    registry = adapters.store.registry
    read_files = registry.read_files

    def held(ref, **kwargs):  # a slow registry: the read waits for the gate
        reads.append(ref)
        assert gate.wait(30)
        return read_files(ref, **kwargs)

    registry.read_files = held
    try:
        with pytest.raises(RequestError) as caught:
            adapters.load_on_demand("gamma", deadline=time.monotonic() + 0.05)
        assert caught.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
        assert "adapter gamma:1" in caught.value.message
        assert adapters.store.loading(("gamma", 1)) and adapters.active() == {}
    finally:
        gate.set()
    assert adapters.load_on_demand("gamma") == 1  # the same fetch, not a second read
    assert reads == ["gamma:1"] and adapters.active() == {"gamma": 1}


def test_a_version_routed_by_two_ids_leaves_only_when_both_are_released(backbone, published):
    adapters = make_lifecycle(backbone, published)
    adapters.on_demand = True
    assert adapters.route_on_demand("alpha") == 2  # id `alpha`: the latest
    assert adapters.route_on_demand("alpha", 2) == 2  # id `alpha:2`: the same version
    assert adapters.route_on_demand("beta") == 1
    assert not adapters.release_on_demand("alpha", 2)  # `alpha:2` still routes here
    assert adapters.active() == {"alpha": 2, "beta": 1}
    assert adapters.store.entry(("alpha", 2)) is not None
    assert adapters.release_on_demand("alpha", 2)  # the last id: it leaves
    assert adapters.active() == {"beta": 1} and adapters.store.entry(("alpha", 2)) is None
    assert adapters.release_on_demand("beta", 1)
    assert adapters.active() == {}
