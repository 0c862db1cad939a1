"""Registry -> host tier: adapter versions materialised into serve forms in host memory.

A version is fetched from the registry (every byte verified, the base-model fingerprint
checked), rebuilt from its train forms and materialised per task into `AdapterSet`
(float32, CPU) on a small thread pool, off the request path. Concurrent callers asking
for a version that is still loading share one future and wait on it.

Host memory is bounded by a byte budget and, optionally, a count of versions
(`max_adapters`, `adapter-serve --host-adapters`), with LRU eviction over the versions the
caller does not name as kept (`evict_over_budget(keep)`): the store is a cache and knows
nothing of active versions or pins; `serving.lifecycle.AdapterLifecycle` owns those and
names the pinned and in-use versions as kept (and the active ones, except those it loaded
on demand). Evicting a version that a running request
still uses would be safe anyway: the request holds its own reference and the device copy
lives in the slot table.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Collection
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

from safetensors.torch import load as load_safetensors

from adapters_registry import Registry, VersionInfo
from modeling.fit import check_fits
from modeling.methods.base import BackboneFacts
from modeling.recipe import AdapterModel
from modeling.serve_forms import AdapterSet, unique_nbytes
from modeling.tasks import ChoiceAnswer

log = logging.getLogger("vladapter.serving")

AdapterKey = tuple[str, int]  # (adapter name, version)


class AdapterRejected(ValueError):
    """The artifact does not fit this backbone (shapes, methods): FAILED_PRECONDITION."""


@dataclass
class HostAdapter:
    """One version in host memory: a serve form per task, float32 on the CPU."""

    name: str
    version: int
    serve: dict[str, AdapterSet]
    nbytes: int
    aliases: tuple[str, ...] = ()
    last_used: float = field(default_factory=time.time)
    # task -> how its multiple-choice answers were trained (manifest "choice_answer")
    choice_answers: dict[str, ChoiceAnswer] = field(default_factory=dict)

    def choice_answer(self, task: str) -> ChoiceAnswer:
        """The form `task`'s candidates are scored in: the one it was trained with
        (`ChoiceAnswer.LABEL` when the manifest names none, as before the field)."""
        return self.choice_answers.get(task, ChoiceAnswer.LABEL)

    @property
    def key(self) -> AdapterKey:
        return (self.name, self.version)

    @property
    def tasks(self) -> tuple[str, ...]:
        return tuple(self.serve)


class AdapterStore:
    """Registry -> host memory, with an LRU byte budget and background loading."""

    def __init__(self, registry: Registry, facts: BackboneFacts, fingerprint: str,
                 budget_bytes: int, loader_threads: int = 2, on_event=None, on_load=None,
                 max_adapters: int | None = None):
        """on_event(event): "hit" / "miss" / "eviction"; on_load(seconds): a load finished;
        max_adapters: the most versions held (None: the byte budget alone bounds them)."""
        if max_adapters is not None and max_adapters < 1:
            raise ValueError(f"--host-adapters (host_adapters) must be at least 1, got "
                             f"{max_adapters}")
        self.registry, self.facts, self.fingerprint = registry, facts, fingerprint
        self.budget_bytes, self.max_adapters = budget_bytes, max_adapters
        self._entries: OrderedDict[AdapterKey, HostAdapter] = OrderedDict()
        self._loading: dict[AdapterKey, Future] = {}
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
        return self.record(name, version, alias).version

    def record(self, name: str, version: int | None = None,
               alias: str | None = None) -> VersionInfo:
        """The registry's record of a version or an alias (as `resolve`): one small read,
        no weights."""
        if version is not None:
            return self.registry.resolve(f"{name}:{version}")
        return self.registry.resolve(f"{name}@{alias or 'latest'}")

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
        except BaseException:
            with self._lock:
                self._loading.pop(key, None)  # nothing cached: the next fetch reads again
            raise
        with self._lock:  # one step, so a concurrent fetch sees it loading or resident
            self._entries[key] = entry
            self._loading.pop(key, None)
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
            sets = {task: model.materialize(task) for task in tasks}
            for task, adapter_set in sets.items():
                check_fits(adapter_set, self.facts, task)
        except (ValueError, KeyError, TypeError) as exc:
            raise AdapterRejected(f"adapter {name}:{version} does not fit this backbone: "
                                  f"{exc}") from None
        # A tensor shared by every task (single / half-shared sharing) is held once.
        nbytes = unique_nbytes(list(sets.values()))
        answers = {task: ChoiceAnswer(spec["choice_answer"])
                   for task, spec in manifest["tasks"].items() if "choice_answer" in spec}
        return HostAdapter(name, version, sets, nbytes, verified.info.aliases,
                           choice_answers=answers)

    # --- residency ---------------------------------------------------------------------
    def evict_over_budget(self, keep: Collection[AdapterKey]) -> list[AdapterKey]:
        """Drop least recently used versions not in `keep` until within the byte budget
        and `max_adapters`; returns the dropped ones."""
        with self._lock:
            most = len(self._entries) if self.max_adapters is None else self.max_adapters
            evicted = []
            used = sum(e.nbytes for e in self._entries.values())
            for key in list(self._entries):
                if used <= self.budget_bytes and len(self._entries) <= most:
                    break
                if key in keep:
                    continue
                used -= self._entries.pop(key).nbytes
                evicted.append(key)
        for gone in evicted:
            self._on_event("eviction")
            log.info("host cache evicted %s:%d", *gone)
        return evicted

    def evict(self, key: AdapterKey) -> bool:
        """Drop `key` from host memory now (the caller knows nothing needs it); whether it
        was there."""
        with self._lock:
            gone = self._entries.pop(key, None) is not None
        if gone:
            self._on_event("eviction")
            log.info("host cache evicted %s:%d", *key)
        return gone

    def restore(self, entry: HostAdapter) -> None:
        """Put `entry` back if the LRU dropped it since it was fetched (a version going
        into service), as the most recently used."""
        with self._lock:
            self._entries.setdefault(entry.key, entry)
            self._entries.move_to_end(entry.key)

    def entry(self, key: AdapterKey) -> HostAdapter | None:
        with self._lock:
            return self._entries.get(key)

    def loading(self, key: AdapterKey) -> bool:
        with self._lock:
            return key in self._loading

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
