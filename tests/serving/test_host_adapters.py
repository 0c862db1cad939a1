"""The bounded host tier (`--host-adapters N`) with on-demand loading, as a state machine
on CPU without an engine (the caller is the one writer): after every load, bind, pin and
release the host entries, the loaded names and the device slots are asserted."""

from __future__ import annotations

import torch
from test_lifecycle import admit, bind, on_device, request

from adapters_registry import Registry
from modeling.methods.base import BackboneFacts
from serving.adapter_store import AdapterStore
from serving.lifecycle import AdapterLifecycle
from serving.slot_table import SlotTable


def on_demand_lifecycle(backbone, published, host_adapters: int) -> AdapterLifecycle:
    events: list[str] = []
    store = AdapterStore(Registry(published.root), BackboneFacts.of(backbone),
                         backbone.fingerprint(), 1 << 30, on_event=events.append,
                         max_adapters=host_adapters)
    table = SlotTable(4, 1 << 30, backbone.frozen_tensors(), backbone.config.d_model,
                      torch.zeros(()))
    adapters = AdapterLifecycle(store, table, on_demand=True)
    adapters.events = events  # the store's cache events, for the assertions
    return adapters


def in_host(adapters: AdapterLifecycle) -> set[tuple[str, int]]:
    return {key for key in (("alpha", 1), ("alpha", 2), ("beta", 1), ("gamma", 1))
            if adapters.store.entry(key) is not None}


def test_the_least_recently_used_idle_adapter_leaves_a_full_host_tier(backbone, published):
    adapters = on_demand_lifecycle(backbone, published, host_adapters=2)
    assert adapters.load_on_demand("alpha") == 2 and adapters.load_on_demand("beta") == 1
    used = admit(adapters, request("alpha"))  # alpha used after beta: beta is older
    adapters.release(used)
    assert adapters.load_on_demand("gamma") == 1
    assert in_host(adapters) == {("alpha", 2), ("gamma", 1)}
    assert adapters.active() == {"alpha": 2, "gamma": 1}  # beta is no longer loaded
    assert adapters.events.count("eviction") == 1
    assert adapters.load_on_demand("beta") == 1  # loads again; alpha is now the oldest
    assert in_host(adapters) == {("gamma", 1), ("beta", 1)}
    assert ("alpha", 2) not in on_device(adapters)  # its device slots went with it


def test_a_pinned_or_in_use_adapter_never_leaves_the_host_tier(backbone, published):
    adapters = on_demand_lifecycle(backbone, published, host_adapters=1)
    adapters.load_on_demand("alpha")
    adapters.pin("alpha")
    running = admit(adapters, request("beta", version=adapters.load_on_demand("beta")))
    adapters.load_on_demand("gamma")
    # Three over a capacity of one: alpha is pinned, beta runs, gamma was just loaded for
    # a request on its way; none may go.
    assert in_host(adapters) == {("alpha", 2), ("beta", 1), ("gamma", 1)}
    assert adapters.events.count("eviction") == 0
    adapters.release(running)
    adapters.pin("alpha", False)
    job = bind(adapters, request("gamma", version=1))  # the LRU trims the idle ones
    assert in_host(adapters) == {("gamma", 1)} and adapters.active() == {"gamma": 1}
    assert adapters.events.count("eviction") == 2
    adapters.release(job)


def test_a_request_keeps_its_version_when_its_name_left_host_memory(backbone, published):
    adapters = on_demand_lifecycle(backbone, published, host_adapters=1)
    version = adapters.load_on_demand("beta")
    adapters.load_on_demand("gamma")  # beta leaves host memory and is no longer loaded
    assert adapters.active() == {"gamma": 1}
    job = bind(adapters, request("beta", version=version))  # fetched again, off the engine
    assert (job.bound_version, job.adapter.key) == (1, ("beta", 1))
    adapters.release(job)


def test_a_load_makes_a_name_loaded_on_demand_stay_in_host_memory(backbone, published):
    adapters = on_demand_lifecycle(backbone, published, host_adapters=1)
    adapters.load_on_demand("beta")
    assert adapters.loaded_by_load() == {}
    adapters.load("beta")
    assert adapters.loaded_by_load() == {"beta": 1}
    adapters.load_on_demand("gamma")
    assert adapters.active() == {"beta": 1, "gamma": 1} and ("beta", 1) in in_host(adapters)


def test_release_on_demand_drops_only_an_idle_version_a_request_loaded(backbone, published):
    adapters = on_demand_lifecycle(backbone, published, host_adapters=4)
    adapters.load("alpha")  # put in service by Load: not the router's to drop
    adapters.load_on_demand("beta")
    adapters.load_on_demand("gamma")
    adapters.pin("gamma")
    running = admit(adapters, request("beta", version=1))
    assert not adapters.release_on_demand("alpha", 2)
    assert not adapters.release_on_demand("beta", 1)  # a request runs on it
    assert not adapters.release_on_demand("gamma", 1)  # pinned
    assert in_host(adapters) == {("alpha", 2), ("beta", 1), ("gamma", 1)}
    adapters.release(running)
    assert adapters.release_on_demand("beta", 1)
    assert in_host(adapters) == {("alpha", 2), ("gamma", 1)}
    assert adapters.active() == {"alpha": 2, "gamma": 1}
    assert ("beta", 1) not in on_device(adapters) and adapters.events.count("eviction") == 1
