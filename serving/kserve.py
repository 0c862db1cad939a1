"""KServe v2 / Open Inference Protocol (`inference.GRPCInferenceService`) on our server.

Triton's and KServe's clients (`tritonclient.grpc`, perf_analyzer, ...) talk to the same
port as `vladapter.v1.Inference`:

    model  = an adapter (model name = adapter name, model version = adapter version;
             "" = the active version), or the vision model (`--serve-vision-model NAME`)
    ModelInfer / ModelStreamInfer
           adapter: BYTES tensors -> our PredictRequest -> the same checks, limits,
                    batcher and error codes as `Inference.Predict` (serving.kserve_tensors)
           vision:  PIXELS FP32 [n, 3, H, W] -> FEATURES FP32 [n, grid*grid, feat_dim],
                    computed by the server's vision encoder
    RepositoryModelLoad / Unload = `Repository.Load` / `Unload` (hot-swap)
    ModelStatistics: per (model, version) counts and durations (serving.kserve_stats)

Shared memory, trace and log settings answer UNIMPLEMENTED. The vision model runs on the
engine thread (`Engine.vision_features`), between two decoding steps, like every model
call. This servicer only translates: requests go to the engine, Load / Unload / state to
the adapter lifecycle (`serving.lifecycle.AdapterLifecycle`).
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib import metadata as package_metadata

import grpc
import numpy as np
import torch
from tritonclient.grpc import service_pb2, service_pb2_grpc

from serving.engine import Engine, Prediction, RequestError, error_for
from serving.kserve_stats import ModelStats
from serving.kserve_tensors import (
    ADAPTER_INPUTS,
    ADAPTER_OUTPUTS,
    TensorSpec,
    add_output,
    int_parameter,
    metadata,
    model_config,
    predict_request,
    read_inputs,
    stream_flag,
    wanted_outputs,
)
from serving.lifecycle import AdapterLifecycle, VersionState
from serving.limits import InvalidInput, RequestChecker
from serving.requests import VERSION, parse_integer
from serving.servicer import InferenceServicer

log = logging.getLogger("vladapter.serving")

SERVICE = service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name
EXTENSIONS = ("model_repository", "model_configuration", "binary_tensor_data", "parameters",
              "statistics")
ADAPTER_PLATFORM = "vladapter_adapter"
VISION_PLATFORM = "vladapter_vision"
VISION_VERSION = "1"
Finish = Callable[[], tuple[service_pb2.ModelInferResponse, float, float]]


@dataclass
class Call:
    """One KServe inference in flight: `finish` waits for (response, queue s, compute s);
    `tokens` yields streamed text pieces first (streaming requests); `error`: refused."""

    request: service_pb2.ModelInferRequest
    started: float
    finish: Finish | None = None
    tokens: Iterator[str] | None = None
    error: RequestError | None = None


def _server_version() -> str:
    try:
        return package_metadata.version("vladapter")
    except package_metadata.PackageNotFoundError:
        return "0"


@dataclass
class VisionModel:
    """The frozen tower served as a KServe model (computed by `Engine.vision_features`);
    backend: the vision encoder's name."""

    name: str
    backend: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]


class KServeServicer(service_pb2_grpc.GRPCInferenceServiceServicer):
    """`inference.GRPCInferenceService` over the engine and the adapter lifecycle.

    inference: `prepare` turns a PredictRequest into an engine request with the same checks
    as `Inference.Predict`; checker: the message-size limit of vision requests."""

    def __init__(self, engine: Engine, adapters: AdapterLifecycle, inference: InferenceServicer,
                 checker: RequestChecker, stats: ModelStats, vision: VisionModel | None = None,
                 queue_delay_ms: float = 0.0):
        self.engine, self.adapters, self.inference = engine, adapters, inference
        self.checker, self.stats, self.vision = checker, stats, vision
        self.queue_delay_ms = queue_delay_ms
        self.ready = threading.Event()  # set by Server.start, cleared by Server.stop

    # --- models --------------------------------------------------------------------------
    def _is_vision(self, name: str) -> bool:
        return self.vision is not None and name == self.vision.name

    def _loaded_version(self, name: str, version: str) -> str:
        """The version string of a loaded model ("" asks for the active one), or NOT_FOUND."""
        if self._is_vision(name):
            active = VISION_VERSION
        else:
            number = self.adapters.active_version(name)
            if number is None:
                raise RequestError(grpc.StatusCode.NOT_FOUND, f"model {name!r} is not loaded")
            active = str(number)
        if version not in ("", active):
            raise RequestError(grpc.StatusCode.NOT_FOUND,
                               f"version {version} of model {name!r} is not loaded (the "
                               f"loaded version is {active})")
        return active

    def _servable(self, name: str, version: str) -> tuple[str, VersionState | None]:
        """(version string, its state; None: the vision model) of the version a ModelInfer
        for (name, version) would run on, loading nothing: a loaded model's, or with
        `--load-on-demand` one the registry holds (`AdapterLifecycle.servable`: what the
        ModelInfer would load). NOT_FOUND as `_loaded_version` for anything else."""
        if self._is_vision(name):
            return self._loaded_version(name, version), None
        if not self.adapters.on_demand:
            active = self._loaded_version(name, version)
            return active, self.adapters.state(name, int(active))
        try:
            number = parse_integer(version, "version", VERSION) if version else None
        except InvalidInput as exc:
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT, str(exc)) from None
        try:
            state = self.adapters.servable(name, number)
        except RequestError as error:
            raise RequestError(error.code, f"model {name!r} cannot be loaded on demand: "
                                           f"{error.message}") from None
        return str(state.version), state

    def _specs(self, name: str) -> tuple[str, tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
        if self._is_vision(name):
            return VISION_PLATFORM, self.vision.inputs, self.vision.outputs
        return ADAPTER_PLATFORM, ADAPTER_INPUTS, ADAPTER_OUTPUTS

    # --- health and metadata -------------------------------------------------------------
    def ServerLive(self, request, context):
        return service_pb2.ServerLiveResponse(live=True)

    def ServerReady(self, request, context):
        return service_pb2.ServerReadyResponse(ready=self.ready.is_set())

    def ServerMetadata(self, request, context):
        return service_pb2.ServerMetadataResponse(name="vladapter", version=_server_version(),
                                                  extensions=list(EXTENSIONS))

    def ModelReady(self, request, context):
        """Ready: a ModelInfer for this model and version would be served (Open Inference
        Protocol: "ready for inferencing"), with `--load-on-demand` also a version that
        it would load first; nothing loads here."""
        try:
            self._servable(request.name, request.version)
        except RequestError:
            return service_pb2.ModelReadyResponse(ready=False)
        return service_pb2.ModelReadyResponse(ready=self.ready.is_set())

    def ModelMetadata(self, request, context):
        try:
            version, _ = self._servable(request.name, request.version)
        except RequestError as error:
            context.abort(error.code, error.message)
        platform, inputs, outputs = self._specs(request.name)
        return metadata(request.name, [version], platform, inputs, outputs)

    def ModelConfig(self, request, context):
        try:
            version, state = self._servable(request.name, request.version)
        except RequestError as error:
            context.abort(error.code, error.message)
        platform, inputs, outputs = self._specs(request.name)
        if state is None:
            parameters = {"vision_backend": self.vision.backend}
        else:
            parameters = {"tasks": ",".join(state.tasks), "aliases": ",".join(state.aliases)}
        return service_pb2.ModelConfigResponse(config=model_config(
            request.name, int(version), platform, inputs, outputs, self.queue_delay_ms,
            parameters))

    # --- inference -----------------------------------------------------------------------
    def _begin(self, request: service_pb2.ModelInferRequest, context: grpc.ServicerContext,
               streaming: bool) -> Call:
        """Validate and (for an adapter) queue a request; `Call.finish` waits for it."""
        started = time.perf_counter()
        try:
            # The vision model's requests never become a PredictRequest: check them here.
            self.checker.check_message(request.ByteSize())
            if self._is_vision(request.model_name):
                self._loaded_version(request.model_name, request.model_version)
                return Call(request, started, lambda: self._vision_infer(request))
            arrays = read_inputs(request, ADAPTER_INPUTS)
            outputs = wanted_outputs(request, ADAPTER_OUTPUTS)
            message = predict_request(request, arrays)
            stream = stream_flag(request.parameters)
            if stream and not streaming:
                raise InvalidInput("parameter 'stream' needs ModelStreamInfer (tritonclient: "
                                   "start_stream + async_stream_infer)")
        except InvalidInput as exc:
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT, str(exc)) from None
        job = self.inference.prepare(message, context, stream=stream)
        self.engine.submit(job)
        return Call(request, started, lambda: _adapter_response(request, job.wait(), outputs),
                    job.tokens() if stream else None)

    def _vision_infer(self, request: service_pb2.ModelInferRequest
                      ) -> tuple[service_pb2.ModelInferResponse, float, float]:
        """PIXELS -> FEATURES with the server's vision encoder."""
        try:
            pixels = read_inputs(request, self.vision.inputs).get("PIXELS")
            outputs = wanted_outputs(request, self.vision.outputs)
            expected = self.vision.inputs[0].shape[1:]
            if pixels is None or pixels.ndim != 4 or pixels.shape[1:] != expected \
                    or pixels.shape[0] < 1:
                got = None if pixels is None else list(pixels.shape)
                raise InvalidInput(f"input 'PIXELS' must be FP32 [n>=1, "
                                   f"{', '.join(map(str, expected))}], got {got}")
            if not np.isfinite(pixels).all():
                raise InvalidInput("input 'PIXELS' holds NaN or infinite values")
        except InvalidInput as exc:
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT, str(exc)) from None
        start = time.perf_counter()
        try:
            features = self.engine.vision_features(torch.from_numpy(pixels.copy()))
        except Exception as exc:
            log.exception("vision model failed")
            raise error_for(exc) from None
        compute_s = time.perf_counter() - start
        response = service_pb2.ModelInferResponse(model_name=request.model_name,
                                                  model_version=VISION_VERSION, id=request.id)
        if "FEATURES" in outputs:
            add_output(response, "FEATURES", features.numpy())
        return response, 0.0, compute_s

    def _end(self, call: Call) -> service_pb2.ModelInferResponse:
        """Wait for the answer and count it; raises the request's RequestError."""
        request, started = call.request, call.started
        try:
            if call.error is not None:
                raise call.error
            response, queue_s, compute_s = call.finish()
        except RequestError as error:
            self.engine.metrics.error(error.code.name)
            # Counted under the loaded version of a known model only: names and versions
            # that callers make up must not grow the table.
            try:
                version = self._loaded_version(request.model_name, "")
            except RequestError:
                raise error from None
            self.stats.failure(request.model_name, version, time.perf_counter() - started)
            raise
        self.stats.success(request.model_name, response.model_version,
                           time.perf_counter() - started, queue_s, compute_s)
        return response

    def _start_call(self, request, context, streaming: bool) -> Call:
        """`_begin`, with any exception kept as the call's error (a stream answers it as its
        request's `error_message` and goes on)."""
        try:
            return self._begin(request, context, streaming)
        except Exception as exc:
            if not isinstance(exc, RequestError | InvalidInput):
                log.exception("KServe request %r failed", request.id)
            return Call(request, time.perf_counter(), error=error_for(exc))

    def ModelInfer(self, request, context):
        try:
            return self._end(self._start_call(request, context, streaming=False))
        except Exception as exc:
            if not isinstance(exc, RequestError):
                log.exception("KServe request %r failed", request.id)
            error = error_for(exc)
        context.abort(error.code, error.message)

    def ModelStreamInfer(self, request_iterator, context
                         ) -> Iterator[service_pb2.ModelStreamInferResponse]:
        """Requests are queued as they arrive (so they batch together) and answered in
        request order; an error answers its request and the stream goes on.

        A request with parameter `stream` true gets one response per decoded piece of text
        (TEXT only) before its full answer, Triton's decoupled-model style: every response
        carries `triton_final_response`, true on the last one of its request.
        """
        calls: queue.SimpleQueue = queue.SimpleQueue()

        def read() -> None:
            try:
                for request in request_iterator:
                    calls.put(self._start_call(request, context, streaming=True))
            except Exception:  # the client went away (RpcError: its calls are cancelled), or
                pass  # bytes that do not parse (serving.decoding ends the call INVALID_ARGUMENT)
            finally:
                calls.put(None)

        threading.Thread(target=read, name="kserve-stream", daemon=True).start()
        while (call := calls.get()) is not None:
            yield from self._stream_answers(call)

    def _stream_answers(self, call: Call) -> Iterator[service_pb2.ModelStreamInferResponse]:
        """The responses of one request on a stream: its pieces, then its answer or error."""
        try:
            for piece in call.tokens or ():
                yield service_pb2.ModelStreamInferResponse(
                    infer_response=_piece_response(call.request, piece))
            response = self._end(call)
        except Exception as exc:
            if not isinstance(exc, RequestError):
                log.exception("KServe stream request %r failed", call.request.id)
            yield service_pb2.ModelStreamInferResponse(error_message=error_for(exc).message)
            return
        response.parameters["triton_final_response"].bool_param = True
        yield service_pb2.ModelStreamInferResponse(infer_response=response)

    def ModelStatistics(self, request, context):
        active = self.adapters.active()
        names = {name for name, _ in self.stats.keys()} | set(active)
        if self.vision is not None:
            names.add(self.vision.name)
        if request.name and request.name not in names:
            context.abort(grpc.StatusCode.NOT_FOUND, f"model {request.name!r} is unknown")
        keys = set(self.stats.keys())
        keys |= {(n, str(v)) for n, v in active.items()}
        if self.vision is not None:
            keys.add((self.vision.name, VISION_VERSION))
        keys = {(n, v) for n, v in keys if (not request.name or n == request.name)
                and (not request.version or v == request.version)}
        return service_pb2.ModelStatisticsResponse(
            model_stats=[self.stats.statistics(n, v) for n, v in sorted(keys)])

    # --- repository ----------------------------------------------------------------------
    def RepositoryIndex(self, request, context):
        ModelIndex = service_pb2.RepositoryIndexResponse.ModelIndex
        try:
            states = self.adapters.index()
        except RequestError as error:
            context.abort(error.code, error.message)
        models = []
        if self.vision is not None:
            models.append(ModelIndex(name=self.vision.name, version=VISION_VERSION,
                                     state="READY"))
        models += [ModelIndex(name=s.name, version=str(s.version), state=s.state,
                              reason=s.reason) for s in states]
        if request.ready:
            models = [m for m in models if m.state == "READY"]
        return service_pb2.RepositoryIndexResponse(models=models)

    def RepositoryModelLoad(self, request, context):
        if self._is_vision(request.model_name):
            return service_pb2.RepositoryModelLoadResponse()  # always loaded
        try:
            version, alias = load_selector(request.parameters)
            self.adapters.load(request.model_name, version, alias)
        except InvalidInput as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        except RequestError as error:
            context.abort(error.code, error.message)
        return service_pb2.RepositoryModelLoadResponse()

    def RepositoryModelUnload(self, request, context):
        if self._is_vision(request.model_name):
            context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                          f"{request.model_name!r} is the server's vision model "
                          "(--serve-vision-model); it cannot be unloaded")
        try:
            self.adapters.unload(request.model_name)
        except RequestError as error:
            context.abort(error.code, error.message)
        return service_pb2.RepositoryModelUnloadResponse()

    # --- not supported -------------------------------------------------------------------
    def _unsupported(self, context, what: str):
        hint = "send tensors in the request (raw_input_contents or contents)" \
            if "memory" in what else "see the server log and its Prometheus metrics"
        context.abort(grpc.StatusCode.UNIMPLEMENTED,
                      f"{what} is not supported by vladapter; {hint}")

    def SystemSharedMemoryStatus(self, request, context):
        self._unsupported(context, "system shared memory")

    def SystemSharedMemoryRegister(self, request, context):
        self._unsupported(context, "system shared memory")

    def SystemSharedMemoryUnregister(self, request, context):
        self._unsupported(context, "system shared memory")

    def CudaSharedMemoryStatus(self, request, context):
        self._unsupported(context, "CUDA shared memory")

    def CudaSharedMemoryRegister(self, request, context):
        self._unsupported(context, "CUDA shared memory")

    def CudaSharedMemoryUnregister(self, request, context):
        self._unsupported(context, "CUDA shared memory")

    def TraceSetting(self, request, context):
        self._unsupported(context, "trace settings")

    def LogSettings(self, request, context):
        self._unsupported(context, "log settings")


def _piece_response(request: service_pb2.ModelInferRequest, piece: str
                    ) -> service_pb2.ModelInferResponse:
    """One streamed piece of text (TEXT [1]), not the request's last response."""
    response = service_pb2.ModelInferResponse(model_name=request.model_name,
                                              model_version=request.model_version,
                                              id=request.id)
    add_output(response, "TEXT", [piece.encode("utf-8")])
    response.parameters["triton_final_response"].bool_param = False
    return response


def _adapter_response(request: service_pb2.ModelInferRequest, prediction: Prediction,
                      outputs: list[str]) -> tuple[service_pb2.ModelInferResponse, float, float]:
    """-> (response, queue seconds, compute seconds) of an answered adapter request."""
    response = service_pb2.ModelInferResponse(
        model_name=request.model_name, model_version=str(prediction.adapter_version),
        id=request.id)
    for name in outputs:
        if name == "TEXT":
            add_output(response, "TEXT", [prediction.text.encode("utf-8")])
        else:
            add_output(response, "SCORES",
                       np.array([score for _, score in prediction.scores], dtype=np.float32))
    response.parameters["label"].string_param = prediction.label
    for stage, value in prediction.timings.items():
        response.parameters[stage].double_param = value
    t = prediction.timings
    compute_ms = t.get("vision_ms", 0.0) + t.get("encode_ms", 0.0) + t.get("decode_ms", 0.0)
    return response, t.get("queue_ms", 0.0) / 1000, compute_ms / 1000


def load_selector(parameters) -> tuple[int | None, str | None]:
    """RepositoryModelLoad parameters -> (version, alias); neither: the latest version.

    Accepted: "version" (int64 or digits, > 0), "alias" (string), or Triton's "config" JSON
    with `{"version_policy": {"specific": {"versions": [N]}}}` (N an int or a string of
    digits, as protobuf's JSON writes int64). One of them at most; override files are
    refused. Every refusal is InvalidInput naming the parameter.
    """
    files = [key for key in parameters if key.startswith("file:")]
    if files:
        raise InvalidInput(f"model override files are not supported ({files[0]}); publish "
                           "the adapter to the registry instead")
    version = int_parameter(parameters, "version", VERSION)
    alias = (parameters["alias"].string_param or None) if "alias" in parameters else None
    if "config" in parameters:
        configured = _config_version(parameters["config"].string_param)
        if configured is not None and version is not None and configured != version:
            raise InvalidInput(f"parameter 'version' {version} and the config's "
                               f"version_policy {configured} disagree")
        version = configured if configured is not None else version
    if version is not None and alias is not None:
        raise InvalidInput("give parameter 'version' or 'alias', not both")
    return version, alias


def _config_version(text: str) -> int | None:
    """The one version a Triton config JSON's specific version policy names, or None."""
    try:
        config = json.loads(text or "{}")
        versions = config.get("version_policy", {}).get("specific", {}).get("versions")
    except (ValueError, AttributeError, RecursionError):  # JSONDecodeError is a ValueError
        raise InvalidInput("parameter 'config' is not a JSON model config") from None
    if versions is None:
        return None
    if not isinstance(versions, list) or len(versions) != 1:
        raise InvalidInput("config version_policy.specific.versions must be a list naming "
                           "one version (one version of an adapter is active at a time), "
                           f"got {json.dumps(versions)[:40]}")
    return parse_integer(versions[0], "config version_policy.specific.versions[0]", VERSION)
