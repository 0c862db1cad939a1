"""Registry -> host tier: adapter versions materialised into serve forms in host memory.

A version is fetched from the registry (every byte verified, the base-model fingerprint
checked), rebuilt from its train forms and materialised per task into `ServeWeights`
(float32, CPU) on a small thread pool, off the request path. Concurrent callers asking
for a version that is still loading share one future and wait on it.

The store also keeps which version of each name is *active* (what `Load` put in service
and what requests without an explicit version get). Host memory is bounded by a byte
budget with LRU eviction; active and pinned versions are never evicted. Evicting a
version that a running request still uses is safe: the request holds its own reference
and the device copy lives in the slot table.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

from safetensors.torch import load as load_safetensors

from adapters_registry import Registry
from modeling.fit import check_fits
from modeling.methods.base import BackboneFacts
from modeling.recipe import AdapterModel
from modeling.serve_forms import ServeWeights, unique_nbytes

log = logging.getLogger("vladapter.serving")

AdapterKey = tuple[str, int]


class AdapterRejected(ValueError):
    """The artifact does not fit this backbone (shapes, methods): FAILED_PRECONDITION."""


@dataclass
class HostAdapter:
    """One version in host memory: a serve form per task, float32 on the CPU."""

    name: str
    version: int
    serve: dict[str, ServeWeights]
    nbytes: int
    aliases: tuple[str, ...] = ()
    last_used: float = field(default_factory=time.time)

    @property
    def key(self) -> AdapterKey:
        return (self.name, self.version)

    @property
    def tasks(self) -> tuple[str, ...]:
        return tuple(self.serve)


class AdapterStore:
    """Registry -> host memory, with an LRU byte budget, pins and background loading."""

    def __init__(self, registry: Registry, facts: BackboneFacts, fingerprint: str,
                 budget_bytes: int, loader_threads: int = 2, on_event=None, on_load=None):
        """on_event(event): "hit" / "miss" / "eviction"; on_load(seconds): a load finished."""
        self.registry, self.facts, self.fingerprint = registry, facts, fingerprint
        self.budget_bytes = budget_bytes
        self._entries: OrderedDict[AdapterKey, HostAdapter] = OrderedDict()
        self._loading: dict[AdapterKey, Future] = {}
        self._active: dict[str, int] = {}
        self._pinned: set[AdapterKey] = set()
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(loader_threads, thread_name_prefix="adapter-loader")
        self._on_event = on_event or (lambda event: None)
        self._on_load = on_load or (lambda seconds: None)

    # --- resolution and fetching ---------------------------------------------------------
    def resolve(self, name: str, version: int | None = None, alias: str | None = None) -> int:
        """A version number from a version or an alias (registry NotFound / InvalidName).

        version None: the alias (default `latest`); 0 is no version (InvalidName), it never
        means the latest one.
        """
        if version is not None:
            return self.registry.resolve(f"{name}:{version}").version
        return self.registry.resolve(f"{name}@{alias or 'latest'}").version

    def fetch(self, name: str, version: int) -> Future:
        """A future of the HostAdapter; loads it in the background unless resident."""
        key = (name, version)
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                self._entries.move_to_end(key)
                entry.last_used = time.time()
                done: Future = Future()
                done.set_result(entry)
                hit = True
            else:
                hit = False
                done = self._loading.get(key)
                if done is None:
                    done = self._pool.submit(self._load, key)
                    self._loading[key] = done
        self._on_event("hit" if hit else "miss")
        return done

    def _load(self, key: AdapterKey) -> HostAdapter:
        name, version = key
        start = time.perf_counter()
        try:
            entry = self._read(name, version)
        finally:
            with self._lock:
                self._loading.pop(key, None)
        with self._lock:
            self._entries[key] = entry
            evicted = self._evict_over_budget(spare=key)
        for gone in evicted:
            self._on_event("eviction")
            log.info("host cache evicted %s:%d", *gone)
        seconds = time.perf_counter() - start
        self._on_load(seconds)
        log.info("loaded adapter %s:%d (%d bytes, tasks %s) in %.3fs", name, version,
                 entry.nbytes, ",".join(entry.tasks), seconds)
        return entry

    def _read(self, name: str, version: int) -> HostAdapter:
        verified = self.registry.read_files(f"{name}:{version}",
                                            expected_fingerprint=self.fingerprint,
                                            d_model=self.facts.d_model)
        manifest = json.loads(verified.files["manifest.json"])
        tasks = list(manifest["tasks"])
        try:
            shared = load_safetensors(verified.files["shared.safetensors"])
            per_task = {t: load_safetensors(verified.files[f"tasks/{t}.safetensors"])
                        for t in tasks}
            model = AdapterModel.from_artifact(manifest["methods"], tasks, self.facts, shared,
                                               per_task)
            if not model.serveable:
                raise ValueError("its recipe has a method that cannot be served as an adapter")
            serve = {task: model.materialize(task) for task in tasks}
            for weights in serve.values():
                check_fits(weights, self.facts)
        except (ValueError, KeyError, TypeError) as exc:
            raise AdapterRejected(f"adapter {name}:{version} does not fit this backbone: "
                                  f"{exc}") from None
        # A tensor shared by every task (single / half-shared sharing) is held once.
        nbytes = unique_nbytes(list(serve.values()))
        return HostAdapter(name, version, serve, nbytes, verified.info.aliases)

    def _evict_over_budget(self, spare: AdapterKey) -> list[AdapterKey]:
        """Drop LRU entries that are neither active, pinned nor `spare` until within budget.

        `spare` is the version just loaded: its callers are about to use it.
        """
        evicted = []
        for key in list(self._entries):
            if self.used_bytes_locked() <= self.budget_bytes:
                break
            if key == spare or key in self._pinned or self._active.get(key[0]) == key[1]:
                continue
            del self._entries[key]
            evicted.append(key)
        return evicted

    def used_bytes_locked(self) -> int:
        return sum(e.nbytes for e in self._entries.values())

    # --- the active version of each name -------------------------------------------------
    def activate(self, entry: HostAdapter) -> int | None:
        """Make `entry` the version new requests of its name get; returns the one replaced."""
        with self._lock:
            previous = self._active.get(entry.name)
            self._active[entry.name] = entry.version
            self._entries.setdefault(entry.key, entry)  # back in, if the LRU dropped it
            if previous is not None and previous != entry.version:
                self._pinned.discard((entry.name, previous))
            return previous if previous != entry.version else None

    def deactivate(self, name: str) -> int | None:
        """Take `name` out of service; returns the version that was active, if any."""
        with self._lock:
            version = self._active.pop(name, None)
            if version is not None:
                self._pinned.discard((name, version))
            return version

    def active_version(self, name: str) -> int | None:
        with self._lock:
            return self._active.get(name)

    def active(self) -> dict[str, int]:
        with self._lock:
            return dict(self._active)

    def pin(self, key: AdapterKey, pinned: bool) -> None:
        with self._lock:
            (self._pinned.add if pinned else self._pinned.discard)(key)

    def is_pinned(self, key: AdapterKey) -> bool:
        with self._lock:
            return key in self._pinned

    def entry(self, key: AdapterKey) -> HostAdapter | None:
        with self._lock:
            return self._entries.get(key)

    def loading(self, key: AdapterKey) -> bool:
        with self._lock:
            return key in self._loading

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
