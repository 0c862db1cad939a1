"""gRPC servicers: `vladapter.v1.Inference` and `vladapter.v1.Repository`.

They translate between protos and the engine, and map every error to a status code
(`serving.requests.error_for`; the table is in proto/vladapter/v1/inference.proto):
INVALID_ARGUMENT (a missing or malformed field, a limit, a corrupt image, version 0; the
message names the field or limit), NOT_FOUND (unknown task, adapter, version or alias),
FAILED_PRECONDITION (fingerprint mismatch, a stored artifact this server refuses),
DATA_LOSS (stored bytes that fail their sha256), RESOURCE_EXHAUSTED (queue full),
DEADLINE_EXCEEDED, UNAVAILABLE (shutting down). Validation happens on the calling
thread, so a bad request never enters a batch.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator

import grpc

from adapters_registry import Registry, RegistryError
from modeling.tasks import TASKS
from serving.adapter_store import AdapterStore
from serving.engine import Engine, Prediction, Request, RequestError, error_for
from serving.limits import InvalidInput, RequestChecker
from serving.protos import inference_pb2, inference_pb2_grpc, repository_pb2, repository_pb2_grpc
from serving.requests import VERSION, parse_integer
from serving.slot_table import SlotTable

log = logging.getLogger("vladapter.serving")


def _abort(context: grpc.ServicerContext, error: RequestError):
    context.abort(error.code, error.message)


def response_of(prediction: Prediction) -> inference_pb2.PredictResponse:
    t = prediction.timings
    return inference_pb2.PredictResponse(
        text=prediction.text, label=prediction.label,
        scores=[inference_pb2.CandidateScore(label=label, log_prob=score)
                for label, score in prediction.scores],
        adapter_name=prediction.adapter_name, adapter_version=prediction.adapter_version,
        timings=inference_pb2.Timings(queue_ms=t.get("queue_ms", 0.0),
                                      vision_ms=t.get("vision_ms", 0.0),
                                      encode_ms=t.get("encode_ms", 0.0),
                                      decode_ms=t.get("decode_ms", 0.0)),
        request_id=prediction.request_id)


class InferenceServicer(inference_pb2_grpc.InferenceServicer):
    """Predict and PredictStream over the engine."""

    def __init__(self, engine: Engine, store: AdapterStore, checker: RequestChecker):
        self.engine, self.store, self.checker = engine, store, checker

    def prepare(self, message: inference_pb2.PredictRequest, context: grpc.ServicerContext,
                stream: bool) -> Request:
        """Validate a PredictRequest into an engine Request (raises RequestError).

        Also the path of KServe v2 `ModelInfer` (serving.kserve), so both protocols share
        the same checks, limits and batcher.
        """
        try:
            self.checker.check_message(message.ByteSize())
            if not message.task:
                raise InvalidInput("task is required (one of " + ", ".join(TASKS) + ")")
            spec = TASKS.get(message.task)
            if spec is None:
                raise RequestError(grpc.StatusCode.NOT_FOUND,
                                   f"unknown task {message.task!r}; known tasks: "
                                   f"{', '.join(TASKS)}")
            name = message.adapter.name
            if not name:
                raise InvalidInput("adapter.name is required")
            version = self._version(message.adapter)
            images = self.checker.visual(spec, message.images, message.video)
            choices = self.checker.choices(spec, list(message.choices))
            source = self.checker.source_text(spec, message.text, choices,
                                              message.video.subtitles)
            max_new, beams = self.checker.generation(message.generation.max_new_tokens,
                                                     message.generation.num_beams)
        except InvalidInput as exc:
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT, str(exc)) from None
        remaining = context.time_remaining()
        deadline = None if remaining is None else time.monotonic() + remaining
        request = Request(spec, name, version, source, images, choices, max_new, beams,
                          deadline, message.request_id, stream)
        context.add_callback(request.cancel)
        return request

    def _version(self, ref: inference_pb2.AdapterRef) -> int | None:
        """An explicit version or a non-default alias; None: the active version."""
        which = ref.WhichOneof("selector")
        if which == "version":
            return parse_integer(ref.version, "adapter.version", VERSION)
        if which == "alias" and ref.alias not in ("", "latest"):
            try:
                return self.store.resolve(ref.name, alias=ref.alias)
            except RegistryError as exc:
                raise error_for(exc) from None
        return None

    def Predict(self, request, context):
        try:
            job = self.prepare(request, context, stream=False)
            self.engine.submit(job)
            return response_of(job.wait())
        except RequestError as error:
            self.engine.metrics.error(error.code.name)
            _abort(context, error)

    def PredictStream(self, request, context) -> Iterator[inference_pb2.PredictChunk]:
        try:
            job = self.prepare(request, context, stream=True)
            self.engine.submit(job)
        except RequestError as error:
            self.engine.metrics.error(error.code.name)
            _abort(context, error)
        while True:
            kind, value = job.events.get()
            if kind == "token":
                yield inference_pb2.PredictChunk(token_text=value)
            elif kind == "done":
                yield inference_pb2.PredictChunk(done=True, response=response_of(value))
                return
            else:
                self.engine.metrics.error(value.code.name)
                _abort(context, value)


class RepositoryServicer(repository_pb2_grpc.RepositoryServicer):
    """Index, Load, Unload, Pin, Unpin and Status (Triton's model-repository words)."""

    def __init__(self, registry: Registry, store: AdapterStore, slots: SlotTable,
                 engine: Engine):
        self.registry, self.store, self.slots, self.engine = registry, store, slots, engine

    def state(self, name: str, version: int, aliases=(), tasks=(),
              problem: str = "") -> repository_pb2.AdapterState:
        """Where one version is and how it is used; `problem`: why its record is unreadable."""
        key = (name, version)
        entry = self.store.entry(key)
        device = self.slots.adapter_state(key)
        active = self.store.active_version(name) == version
        if self.store.loading(key):
            state, tier = "LOADING", "registry"
        elif entry is not None:
            state, tier = ("READY" if active else "UNAVAILABLE"), \
                ("device" if device["slots"] else "host")
        else:
            state, tier = "UNAVAILABLE", "registry"
        return repository_pb2.AdapterState(
            name=name, version=version,
            aliases=list(entry.aliases if entry else aliases),
            tasks=list(entry.tasks if entry else tasks), state=state, tier=tier,
            bytes=device["bytes"] if device["slots"] else (entry.nbytes if entry else 0),
            last_used_unix=max(device["last_used"], entry.last_used if entry else 0.0),
            in_flight=device["in_flight"], pinned=self.store.is_pinned(key),
            reason=problem or ("" if state != "UNAVAILABLE" or active else
                               "not the active version"))

    def Index(self, request, context):
        try:
            infos = self.registry.index()
        except RegistryError as exc:
            _abort(context, error_for(exc))
        states = [self.state(i.name, i.version, i.aliases, tuple(i.manifest.get("tasks", ())),
                             i.problem) for i in infos if not i.yanked]
        if request.ready_only:
            states = [s for s in states if s.state == "READY"]
        return repository_pb2.IndexResponse(adapters=states)

    def load(self, name: str, version: int | None = None, alias: str | None = None
             ) -> repository_pb2.AdapterState:
        """Load (or reload) a version and put it in service; raises RequestError."""
        try:
            number = self.store.resolve(name, version, alias)
            entry = self.store.fetch(name, number).result()
        except Exception as exc:
            raise error_for(exc) from None
        previous = self.store.activate(entry)
        if previous is not None:
            self.slots.unpin((name, previous))
            self.engine.retire(name, previous)
            log.info("hot-swap %s: version %d -> %d", name, previous, number)
        else:
            log.info("serving adapter %s:%d", name, number)
        return self.state(name, number)

    def Load(self, request, context):
        ref = request.adapter
        which = ref.WhichOneof("selector")
        try:
            version = parse_integer(ref.version, "adapter.version", VERSION) \
                if which == "version" else None
            return repository_pb2.LoadResponse(adapter=self.load(
                ref.name, version, ref.alias if which == "alias" else None))
        except (RequestError, InvalidInput) as exc:
            _abort(context, error_for(exc))

    def unload(self, name: str) -> int:
        """Take a name out of service (its slots free once idle); raises RequestError."""
        version = self.store.deactivate(name)
        if version is None:
            raise RequestError(grpc.StatusCode.NOT_FOUND, f"adapter {name!r} is not loaded")
        self.slots.unpin((name, version))
        self.engine.retire(name, version)
        log.info("unloaded adapter %s:%d", name, version)
        return version

    def Unload(self, request, context):
        try:
            self.unload(request.name)
        except RequestError as error:
            _abort(context, error)
        return repository_pb2.UnloadResponse()

    def _pin(self, name: str, pinned: bool, context) -> repository_pb2.PinResponse:
        version = self.store.active_version(name)
        if version is None:
            _abort(context, RequestError(grpc.StatusCode.NOT_FOUND,
                                         f"adapter {name!r} is not loaded"))
        self.store.pin((name, version), pinned)
        (self.slots.pin if pinned else self.slots.unpin)((name, version))
        log.info("%s adapter %s:%d", "pinned" if pinned else "unpinned", name, version)
        return repository_pb2.PinResponse(adapter=self.state(name, version))

    def Pin(self, request, context):
        return self._pin(request.name, True, context)

    def Unpin(self, request, context):
        return self._pin(request.name, False, context)

    def Status(self, request, context):
        active = self.store.active()
        if request.name:
            if request.name not in active:
                _abort(context, RequestError(grpc.StatusCode.NOT_FOUND,
                                             f"adapter {request.name!r} is not loaded"))
            active = {request.name: active[request.name]}
        return repository_pb2.StatusResponse(
            adapters=[self.state(name, version) for name, version in sorted(active.items())])

