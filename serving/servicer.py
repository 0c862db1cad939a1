"""gRPC servicers: `vladapter.v1.Inference` and `vladapter.v1.Repository`.

They translate between protos and the engine (requests) or the adapter lifecycle
(`serving.lifecycle.AdapterLifecycle`: Load, Unload, Pin, state), and map every error to a
status code
(`serving.requests.error_for`; the table is in proto/vladapter/v1/inference.proto):
INVALID_ARGUMENT (a missing or malformed field, a limit, a corrupt image, version 0; the
message names the field or limit), NOT_FOUND (unknown task, adapter, version or alias; an
adapter that is not loaded, unless the server loads adapters on demand),
FAILED_PRECONDITION (fingerprint mismatch, a stored artifact this server refuses),
DATA_LOSS (stored bytes that fail their sha256), RESOURCE_EXHAUSTED (queue full),
DEADLINE_EXCEEDED, UNAVAILABLE (shutting down). Validation happens on the calling
thread, so a bad request never enters a batch.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import grpc

from modeling.config import TaskDoesNotFit
from modeling.tasks import TASKS
from serving.engine import Engine, Prediction, Request, RequestError, error_for
from serving.lifecycle import AdapterLifecycle, VersionState
from serving.limits import InvalidInput, RequestChecker
from serving.protos import inference_pb2, inference_pb2_grpc, repository_pb2, repository_pb2_grpc
from serving.requests import VERSION, parse_integer


def _abort(context: grpc.ServicerContext, error: RequestError):
    context.abort(error.code, error.message)


def state_of(state: VersionState) -> repository_pb2.AdapterState:
    return repository_pb2.AdapterState(**vars(state))


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

    def __init__(self, engine: Engine, adapters: AdapterLifecycle, checker: RequestChecker):
        self.engine, self.adapters, self.checker = engine, adapters, checker

    def prepare(self, message: inference_pb2.PredictRequest, context: grpc.ServicerContext,
                stream: bool) -> Request:
        """Validate a PredictRequest into an engine Request (raises RequestError).

        Also the path of KServe v2 `ModelInfer` (serving.kserve), so both protocols share
        the same checks, limits and batcher. With `--load-on-demand` an adapter that is not
        loaded is loaded here, after the checks (`AdapterLifecycle.load_on_demand`), and
        the request carries the version it will run on; its wait for the load ends at the
        client's deadline (DEADLINE_EXCEEDED naming the adapter) or when the client cancels
        (CANCELLED); the load goes on for the other requests.
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
            source = self.checker.source_text(
                spec, message.text, choices, message.video.subtitles,
                self.checker.visual_tokens(spec, message.images, message.video))
            max_new, beams = self.checker.generation(message.generation.max_new_tokens,
                                                     message.generation.num_beams, message.task)
        except (InvalidInput, TaskDoesNotFit) as exc:
            raise error_for(exc) from None
        remaining = context.time_remaining()
        deadline = None if remaining is None else time.monotonic() + remaining
        if self.adapters.on_demand:  # here, on this thread: the engine never waits on it
            version = self.adapters.load_on_demand(name, version, deadline,
                                                   context.add_callback)
        request = Request(spec, name, version, source, images, choices, max_new, beams,
                          deadline, message.request_id, stream)
        context.add_callback(request.cancel)
        return request

    def _version(self, ref: inference_pb2.AdapterRef) -> int | None:
        """The version asked for: an explicit one, or an alias resolved by the registry
        (`latest` too: the highest version not yanked); None (neither, or an empty alias):
        the active version, whatever `Load` last put in service."""
        which = ref.WhichOneof("selector")
        if which == "version":
            return parse_integer(ref.version, "adapter.version", VERSION)
        if which == "alias" and ref.alias:
            return self.adapters.resolve(ref.name, alias=ref.alias)
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

    def __init__(self, adapters: AdapterLifecycle):
        self.adapters = adapters

    def _state(self, name: str, version: int) -> repository_pb2.AdapterState:
        return state_of(self.adapters.state(name, version))

    def Index(self, request, context):
        try:
            states = self.adapters.index()
        except RequestError as error:
            _abort(context, error)
        if request.ready_only:
            states = [s for s in states if s.state == "READY"]
        return repository_pb2.IndexResponse(adapters=[state_of(s) for s in states])

    def Load(self, request, context):
        ref = request.adapter
        which = ref.WhichOneof("selector")
        try:
            version = parse_integer(ref.version, "adapter.version", VERSION) \
                if which == "version" else None
            number = self.adapters.load(ref.name, version, ref.alias if which == "alias" else None)
        except (RequestError, InvalidInput) as exc:
            _abort(context, error_for(exc))
        return repository_pb2.LoadResponse(adapter=self._state(ref.name, number))

    def Unload(self, request, context):
        try:
            self.adapters.unload(request.name)
        except RequestError as error:
            _abort(context, error)
        return repository_pb2.UnloadResponse()

    def _pin(self, name: str, pinned: bool, context) -> repository_pb2.PinResponse:
        try:
            version = self.adapters.pin(name, pinned)
        except RequestError as error:
            _abort(context, error)
        return repository_pb2.PinResponse(adapter=self._state(name, version))

    def Pin(self, request, context):
        return self._pin(request.name, True, context)

    def Unpin(self, request, context):
        return self._pin(request.name, False, context)

    def Status(self, request, context):
        active = self.adapters.active()
        if request.name:
            if request.name not in active:
                _abort(context, RequestError(grpc.StatusCode.NOT_FOUND,
                                             f"adapter {request.name!r} is not loaded"))
            active = {request.name: active[request.name]}
        return repository_pb2.StatusResponse(
            adapters=[self._state(name, version) for name, version in sorted(active.items())])
