"""Pin / Unpin / Load / Unload / Predict raced from many threads through the real gRPC API
of a live tiny server, with the lifecycle's invariants checked on the engine thread (where
its state is still between two steps) all along, and the state read again at the end:

- no slot a batch row holds is evicted: every answer is its version's own answer, and a
  slot rows hold always belongs to a version with that many requests in flight;
- pins are honoured: only an active version is pinned, and the slots of a version pinned
  all along never leave the device;
- an old version is freed after its last request: every version on the device is active,
  pinned or still used by a request.
"""

from __future__ import annotations

import threading
import time
from collections import Counter

import grpc
import pytest
from serving_helpers import direct, request_for, start_server

from serving.protos import inference_pb2_grpc, repository_pb2, repository_pb2_grpc

ROUNDS = 20  # per changing thread
CLIENTS = 3
VERSIONS = [("alpha", 1), ("alpha", 2), ("beta", 1), ("gamma", 1)]
PROBES = [request_for("vqa", "alpha", seed=1, max_new_tokens=3),
          request_for("caption", "alpha", seed=2, max_new_tokens=3),
          request_for("vqa", "beta", seed=3, max_new_tokens=3),
          request_for("gqa", "gamma", seed=4, max_new_tokens=3)]


@pytest.fixture(scope="module")
def race_server(backbone, published):
    # Five slots for six (version, task) sets, four of which may be pinned at once: the
    # device LRU works all along, and a set in flight always finds a slot.
    running = start_server(backbone, published, max_queue_delay_ms=1.0, device_slots=5)
    yield running
    running.stop(grace=5)


def _load(name: str, version: int | None = None) -> repository_pb2.LoadRequest:
    request = repository_pb2.LoadRequest()
    request.adapter.name = name
    if version is not None:
        request.adapter.version = version
    return request


class Race:
    """The threads' outcomes: answers, refused calls by status and broken invariants."""

    def __init__(self, server) -> None:
        self.server, self.stop = server, threading.Event()
        self.answers: list[tuple[int, object]] = []  # (probe index, PredictResponse)
        self.codes: Counter[tuple[str, str]] = Counter()  # (what, status) of refusals
        self.broken: list[str] = []
        self.beta_slots: set[tuple[str, int, str]] = set()  # beta is pinned all along

    def call(self, what: str, fn, *args, allowed=()) -> object | None:
        try:
            return fn(*args, timeout=30)
        except grpc.RpcError as exc:
            self.codes[(what, exc.code().name)] += 1
            if exc.code() not in allowed:
                self.broken.append(f"{what}: {exc.code().name} {exc.details()}")
            return None

    def check(self) -> None:
        """The invariants, on the engine thread (between two steps)."""
        adapters, infos = self.server.adapters, self.server.slot_table.snapshot()
        states = {key: adapters.state(*key) for key in VERSIONS}
        active = adapters.active()
        rows = Counter()
        for info in infos:
            if info is not None:
                rows[info.adapter] += info.rows
        for key, state in states.items():
            if state.pinned and active.get(key[0]) != key[1]:
                self.broken.append(f"{key} pinned but not active")
            if rows[key] > state.in_flight:
                self.broken.append(f"{key}: {rows[key]} rows hold slots, "
                                   f"{state.in_flight} requests in flight")
            if state.tier == "device" and active.get(key[0]) != key[1] and not state.in_flight:
                self.broken.append(f"{key} left service and is idle, yet on the device")
        beta = {info.key for info in infos if info is not None and info.adapter == ("beta", 1)}
        if not self.beta_slots <= beta:
            self.broken.append(f"pinned beta lost slots {self.beta_slots - beta}")
        self.beta_slots = beta


def _predict(race: Race, stub, first: int) -> None:
    i = first
    while not race.stop.is_set():
        probe = i % len(PROBES)
        i += 1
        # gamma is unloaded and loaded again all along: NOT_FOUND is its right answer then
        allowed = (grpc.StatusCode.NOT_FOUND,) if PROBES[probe].adapter.name == "gamma" else ()
        answer = race.call("Predict", stub.Predict, PROBES[probe], allowed=allowed)
        if answer is not None:
            race.answers.append((probe, answer))


def _swap(race: Race, repo) -> None:
    for i in range(ROUNDS):
        seen = sum(probe < 2 for probe, _ in race.answers)
        race.call("Load", repo.Load, _load("alpha", 1 + i % 2))
        end = time.monotonic() + 5  # let alpha's requests straddle every swap
        while sum(probe < 2 for probe, _ in race.answers) == seen and time.monotonic() < end:
            time.sleep(0.001)
    race.call("Load", repo.Load, _load("alpha", 2))


def _unload_and_load(race: Race, repo) -> None:
    for _ in range(ROUNDS):
        race.call("Unload", repo.Unload, repository_pb2.UnloadRequest(name="gamma"))
        race.call("Load", repo.Load, _load("gamma"))


def _pin(race: Race, repo) -> None:
    not_found = (grpc.StatusCode.NOT_FOUND,)
    for i in range(ROUNDS):
        for name in ("alpha", "gamma"):
            pin = repo.Pin if i % 2 == 0 else repo.Unpin
            race.call("Pin", pin, repository_pb2.PinRequest(name=name),
                      allowed=not_found if name == "gamma" else ())
    race.call("Pin", repo.Unpin, repository_pb2.PinRequest(name="alpha"))


def _check(race: Race) -> None:
    while not race.stop.is_set():
        try:
            race.server.engine.call(race.check)
        except Exception as exc:  # noqa: BLE001 - any failure to check is a broken invariant
            race.broken.append(f"check failed: {exc!r}")
        time.sleep(0.002)


def _settle(server, timeout: float = 30.0) -> None:
    end = time.monotonic() + timeout
    while server.engine.in_flight() or any(server.adapters.state(*key).in_flight
                                           for key in VERSIONS):
        assert time.monotonic() < end, "requests or references were left behind"
        time.sleep(0.01)


def test_racing_pin_load_unload_and_predict_keeps_the_lifecycle_invariants(
        race_server, backbone, published):
    race = Race(race_server)
    with grpc.insecure_channel(f"127.0.0.1:{race_server.port}") as channel:
        stub = inference_pb2_grpc.InferenceStub(channel)
        repo = repository_pb2_grpc.RepositoryStub(channel)
        repo.Pin(repository_pb2.PinRequest(name="beta"), timeout=30)
        readers = [threading.Thread(target=_predict, args=(race, stub, i))
                   for i in range(CLIENTS)] + [threading.Thread(target=_check, args=(race,))]
        writers = [threading.Thread(target=fn, args=(race, repo))
                   for fn in (_swap, _unload_and_load, _pin)]
        for thread in readers + writers:
            thread.start()
        for thread in writers:
            thread.join()
        race.stop.set()
        for thread in readers:
            thread.join()
        _settle(race_server)
        race_server.engine.call(race.check)
        final = {(a.name, a.version): a for a in
                 repo.Status(repository_pb2.StatusRequest(), timeout=30).adapters}
    assert race.broken == []
    # Every answer is its version's own: no slot was overwritten under a running row.
    expected = {}
    for probe, answer in race.answers:
        key = (probe, answer.adapter_version)
        if key not in expected:
            model = published.models[(answer.adapter_name, answer.adapter_version)]
            expected[key] = direct(backbone, model, PROBES[probe])[0]
        assert answer.text == expected[key], key
    assert {answer.adapter_version for probe, answer in race.answers if probe < 2} == {1, 2}
    # After the race: alpha 2 active and unpinned, version 1 gone from the device; beta
    # still pinned on the device; gamma loaded again.
    assert sorted(final) == [("alpha", 2), ("beta", 1), ("gamma", 1)]
    assert not final[("alpha", 2)].pinned and final[("beta", 1)].pinned
    assert final[("beta", 1)].tier == "device"
    assert all(s.state == "READY" and s.in_flight == 0 for s in final.values())
    assert all(info is None or info.adapter != ("alpha", 1)
               for info in race_server.slot_table.snapshot())
