"""Fuzz both protocols on a live tiny server: generated `PredictRequest`s, KServe
`ModelInferRequest`s (unary and on one stream) and raw bytes. Every answer is OK or one of
the documented client-mistake codes (never UNKNOWN or INTERNAL, no hang), and a good
request answers as before afterwards.

Derandomized with a few examples each in CI; `VLADAPTER_FUZZ_EXAMPLES=2000 pytest
tests/serving/test_protocol_fuzz.py` runs a longer search.
"""

from __future__ import annotations

import io
import json
import os
import struct
from collections import Counter

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from serving_helpers import RECIPES, png, request_for, start_server
from tritonclient.grpc import service_pb2, service_pb2_grpc

from modeling.tasks import TASKS
from serving.kserve import load_selector
from serving.kserve_tensors import ADAPTER_INPUTS, join_bytes
from serving.limits import InvalidInput, Limits
from serving.protos import inference_pb2, inference_pb2_grpc

EXAMPLES = int(os.environ.get("VLADAPTER_FUZZ_EXAMPLES", "20"))
FUZZ = settings(max_examples=EXAMPLES, derandomize=True, deadline=None, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow, HealthCheck.data_too_large])
CODES = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND,
         grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.RESOURCE_EXHAUSTED}
# Valid requests decode a few tokens at most, so a long run stays quick.
LIMITS = Limits(max_message_bytes=200_000, max_new_tokens=3, max_beams=2,
                default_max_new_tokens=2, max_frames=4, max_feature_tokens=8)
ADAPTERS = ("alpha", "beta", "gamma")

INT32 = (-(2**31), 2**31 - 1)
INT64 = (-(2**63), 2**63 - 1)
TEXTS = st.sampled_from(["what is the color", "red left", ""]) | st.text(max_size=12)
NAMES = st.sampled_from([*ADAPTERS, "alien", "nobody", ""]) | st.text(max_size=6)
TASK_NAMES = st.sampled_from([*TASKS, "", "sudoku"]) | st.text(max_size=6)


def _ints(low: int, high: int) -> st.SearchStrategy[int]:
    """Small values (which pass the limits), the edges of int32 / int64 within [low, high],
    or anything in it."""
    edges = [e for e in (2**31 - 1, 2**31, -(2**31), -(2**31) - 1, 2**63 - 1, -(2**63))
             if low <= e <= high]
    return st.sampled_from([0, 1, 2, 3, -1]) | st.sampled_from(edges) | st.integers(low, high)


def _image(size: tuple[int, int], fmt: str) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, (90, 20, 200)).save(out, format=fmt)
    return out.getvalue()


IMAGES = [png(0), png(1, size=8), _image((8, 8), "JPEG"), _image((12, 8), "WEBP"),
          _image((1, 40), "PNG"), _image((8, 8), "GIF")]


@st.composite
def _mutated(draw, data: bytes) -> bytes:
    """`data` with a few bytes changed, then maybe cut short."""
    changed = bytearray(data)
    for _ in range(draw(st.integers(1, 3))):
        changed[draw(st.integers(0, len(changed) - 1))] = draw(st.integers(0, 255))
    return bytes(changed[:draw(st.integers(0, len(changed)))]) if draw(st.booleans()) \
        else bytes(changed)


ENCODED = st.sampled_from(IMAGES) | st.binary(max_size=48) | \
    st.sampled_from(IMAGES).flatmap(_mutated)


@pytest.fixture(scope="module")
def server(backbone, published):
    running = start_server(backbone, published, limits=LIMITS, max_queue_delay_ms=1.0)
    yield running
    running.stop(grace=5)


@pytest.fixture(scope="module")
def good(channel):
    """A good request and its answer before any fuzzing; `check()` asks again."""
    message = request_for("vqa", "alpha", seed=50, max_new_tokens=2)
    predict = inference_pb2_grpc.InferenceStub(channel).Predict
    expected = predict(message, timeout=30)
    health = health_pb2_grpc.HealthStub(channel)

    def check() -> None:
        assert predict(message, timeout=30).text == expected.text
        reply = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING

    return check


def _answered(call, request, seen: Counter) -> None:
    """Call; OK or a documented code, with a message. `seen` counts the outcomes."""
    try:
        result = call(request, timeout=30)
        if hasattr(result, "__next__"):  # a response stream: read it to the end
            list(result)
        seen["OK"] += 1
    except grpc.RpcError as error:
        assert error.code() in CODES, (error.code(), error.details())
        assert error.details()
        seen[error.code().name] += 1


def _report(seen: Counter, least_ok: int = 1) -> None:
    """Print the outcomes (pytest -s) and check some examples got past validation: a fuzz
    whose every request is refused never reaches the batcher."""
    print(dict(seen))
    assert seen["OK"] >= least_ok, seen


# --- PredictRequest ----------------------------------------------------------------------
@st.composite
def _valid_request(draw) -> inference_pb2.PredictRequest:
    """A request the server answers: an adapter and one of its tasks."""
    adapter = draw(st.sampled_from(ADAPTERS))
    task = draw(st.sampled_from(RECIPES[adapter][1]))
    return request_for(task, adapter, seed=draw(st.integers(0, 3)), max_new_tokens=2)


@st.composite
def _features(draw, feat_dim: int) -> inference_pb2.Features:
    tokens = draw(st.sampled_from([1, 2]) | st.integers(*INT32))
    dim = draw(st.sampled_from([feat_dim, feat_dim + 1]) | st.integers(*INT32))
    count = tokens * dim if 0 < tokens * dim <= 2 * feat_dim else draw(st.integers(0, 16))
    values = draw(st.lists(st.floats(width=32), min_size=count, max_size=count))
    data = struct.pack(f"<{count}f", *values)
    return inference_pb2.Features(data=data[:draw(st.integers(0, len(data)))]
                                  if draw(st.booleans()) else data, tokens=tokens,
                                  feat_dim=dim)


def _images(feat_dim: int) -> st.SearchStrategy[inference_pb2.Image]:
    return st.builds(lambda data: inference_pb2.Image(encoded=data), ENCODED) | \
        st.builds(lambda f: inference_pb2.Image(features=f), _features(feat_dim)) | \
        st.just(inference_pb2.Image())


@st.composite
def _random_predict(draw, feat_dim: int) -> inference_pb2.PredictRequest:
    message = inference_pb2.PredictRequest(task=draw(TASK_NAMES), text=draw(TEXTS),
                                           request_id=draw(st.text(max_size=6)))
    message.adapter.name = draw(NAMES)
    selector = draw(st.sampled_from(["none", "version", "alias"]))
    if selector == "version":
        message.adapter.version = draw(_ints(*INT64))
    elif selector == "alias":
        message.adapter.alias = draw(st.sampled_from(["latest", "prod", ""]) | st.text(max_size=6))
    message.images.extend(draw(st.lists(_images(feat_dim), max_size=3)))
    message.video.frames.extend(draw(st.lists(_images(feat_dim), max_size=5)))
    message.video.subtitles = draw(TEXTS)
    message.choices.extend(draw(st.lists(TEXTS, max_size=4)))
    message.generation.max_new_tokens = draw(_ints(*INT32))
    message.generation.num_beams = draw(_ints(*INT32))
    return message


@st.composite
def _predict_requests(draw, feat_dim: int) -> inference_pb2.PredictRequest:
    """A valid request with up to three fields taken from a random one (or all of them)."""
    base = draw(_valid_request())
    noise = draw(_random_predict(feat_dim))
    fields = [f.name for f in base.DESCRIPTOR.fields]
    for name in draw(st.sets(st.sampled_from(fields), max_size=3)) if draw(st.booleans()) \
            else fields:
        base.ClearField(name)
        field = base.DESCRIPTOR.fields_by_name[name]
        if field.is_repeated:
            getattr(base, name).extend(getattr(noise, name))
        elif field.message_type is not None:
            getattr(base, name).CopyFrom(getattr(noise, name))
        else:
            setattr(base, name, getattr(noise, name))
    return base


def test_fuzzed_predict_requests_get_documented_codes(channel, backbone, good):
    predict = inference_pb2_grpc.InferenceStub(channel).Predict
    stream = inference_pb2_grpc.InferenceStub(channel).PredictStream

    seen: Counter = Counter()

    @FUZZ
    @given(message=_predict_requests(backbone.config.feat_dim), streamed=st.booleans())
    def run(message, streamed):
        _answered(stream if streamed else predict, message, seen)

    run()
    _report(seen)
    good()


# --- ModelInferRequest -------------------------------------------------------------------
PARAMETER_VALUES = {
    "bool_param": st.booleans(),
    "int64_param": _ints(*INT64),
    "uint64_param": st.integers(0, 2**64 - 1),
    "double_param": st.floats(),
    "string_param": st.sampled_from(["vqa", "caption", "2", "true", "--5", "²", " 2",
                                     "99999999999999999999"]) | st.text(max_size=6),
}


@st.composite
def _parameters(draw, request, keys: list[str]) -> None:
    """Parameters of `request` (InferParameter or ModelRepositoryParameter), each of a
    kind its message has."""
    for key in draw(st.lists(st.sampled_from(keys) | st.text(max_size=5), max_size=4,
                             unique=True)):
        field = request.parameters[key]
        kind = draw(st.sampled_from([k for k in sorted(PARAMETER_VALUES)
                                     if k in field.DESCRIPTOR.fields_by_name]))
        setattr(field, kind, draw(PARAMETER_VALUES[kind]))


@st.composite
def _tensor(draw, request, raw: bool, feat_dim: int) -> None:
    """One input tensor, typed or raw, with contents that may not match its shape."""
    name = draw(st.sampled_from([s.name for s in ADAPTER_INPUTS] + ["PICTURE"]))
    datatype = draw(st.sampled_from(["BYTES", "FP32", "INT64", ""]))
    items = draw(st.lists(ENCODED | TEXTS.map(str.encode), max_size=3))
    tokens = draw(st.integers(1, 2))  # FEATURES [1, tokens, feat_dim] when it fits
    floats = draw(st.lists(st.floats(width=32), min_size=tokens * feat_dim,
                           max_size=tokens * feat_dim) | st.lists(st.floats(width=32),
                                                                  max_size=12))
    count = len(floats) if datatype == "FP32" else len(items)
    shape = draw(st.sampled_from([[count], [1, count], [1, 1, count], [count, 1],
                                  [1, tokens, count // tokens]]) |
                 st.lists(_ints(*INT64), max_size=3))
    tensor = request.inputs.add(name=name, datatype=datatype, shape=shape)
    if raw:
        data = struct.pack(f"<{len(floats)}f", *floats) if datatype == "FP32" \
            else join_bytes(items)
        request.raw_input_contents.append(data[:draw(st.integers(0, len(data)))]
                                          if draw(st.booleans()) else data)
    elif datatype == "FP32":
        tensor.contents.fp32_contents.extend(floats)
    else:
        tensor.contents.bytes_contents.extend(items)


@st.composite
def _random_infer(draw, feat_dim: int) -> service_pb2.ModelInferRequest:
    request = service_pb2.ModelInferRequest(
        model_name=draw(NAMES), id=draw(st.text(max_size=6)),
        model_version=draw(st.sampled_from(["", "1", "2", "0", "-1", "99999999999999999999",
                                            "²"]) | st.text(max_size=4)))
    draw(_parameters(request, ["task", "max_new_tokens", "num_beams", "stream", "priority"]))
    raw = draw(st.booleans())
    for _ in range(draw(st.integers(0, 4))):
        draw(_tensor(request, raw, feat_dim))
    if raw and draw(st.booleans()):
        request.raw_input_contents.append(b"")  # one entry too many
    for name in draw(st.lists(st.sampled_from(["TEXT", "SCORES", "X"]), max_size=2)):
        request.outputs.add(name=name)
    return request


def _kserve_of(message: inference_pb2.PredictRequest) -> service_pb2.ModelInferRequest:
    """A valid request for `message` in typed contents."""
    request = service_pb2.ModelInferRequest(model_name=message.adapter.name,
                                            id=message.request_id)
    tensors = {"TASK": [message.task.encode()], "TEXT": [message.text.encode()],
               "IMAGES": [i.encoded for i in message.images],
               "FRAMES": [f.encoded for f in message.video.frames],
               "SUBTITLES": [message.video.subtitles.encode()],
               "CHOICES": [c.encode() for c in message.choices]}
    for name, values in tensors.items():
        if values:
            tensor = request.inputs.add(name=name, datatype="BYTES", shape=[len(values)])
            tensor.contents.bytes_contents.extend(values)
    request.parameters["max_new_tokens"].int64_param = 2
    return request


@st.composite
def _infer_requests(draw, feat_dim: int) -> service_pb2.ModelInferRequest:
    """A valid request whose parameters get random ones on top, and each other part is
    replaced by a random one's with probability 1/4 (so most reach the deeper checks)."""
    base = _kserve_of(draw(_valid_request()))
    noise = draw(_random_infer(feat_dim))
    base.parameters.MergeFrom(noise.parameters)
    for name in ("model_name", "model_version", "inputs", "outputs"):
        if draw(st.integers(0, 3)) > 0:
            continue
        base.ClearField(name)
        if name == "inputs":
            base.inputs.extend(noise.inputs)
            base.raw_input_contents.extend(noise.raw_input_contents)
        elif name == "outputs":
            base.outputs.extend(noise.outputs)
        else:
            setattr(base, name, getattr(noise, name))
    return base


def test_fuzzed_model_infer_requests_get_documented_codes(channel, backbone, good):
    kserve = service_pb2_grpc.GRPCInferenceServiceStub(channel)
    seen: Counter = Counter()

    @FUZZ
    @given(request=_infer_requests(backbone.config.feat_dim))
    def run(request):
        _answered(kserve.ModelInfer, request, seen)
        # Again with the base request's parameters only: random parameters refuse most
        # requests, and the rest must still reach the batcher.
        request.parameters.clear()
        request.parameters["max_new_tokens"].int64_param = 2
        _answered(kserve.ModelInfer, request, seen)

    run()
    _report(seen)
    good()


def test_a_stream_of_fuzzed_requests_answers_each_one(channel, backbone, good):
    """One response per request (its error_message, or the final one of its answer), and
    the stream ends OK."""
    stream = service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelStreamInfer

    seen: Counter = Counter()

    @FUZZ
    @given(requests=st.lists(_infer_requests(backbone.config.feat_dim), min_size=1,
                             max_size=4))
    def run(requests):
        responses = list(stream(iter(requests), timeout=60))
        errors = sum(bool(r.error_message) for r in responses)
        answers = sum(r.infer_response.parameters["triton_final_response"].bool_param
                      for r in responses)
        assert errors + answers == len(requests)
        seen.update(OK=answers, error_message=errors)

    run()
    _report(seen)
    good()


# --- raw bytes and the load selector -----------------------------------------------------
VALID = {"/vladapter.v1.Inference/Predict": "predict",
         "/inference.GRPCInferenceService/ModelInfer": "kserve"}


@pytest.mark.parametrize("method", sorted(VALID))
def test_fuzzed_request_bytes_get_documented_codes(channel, good, method):
    """Random bytes, or a valid request's bytes with a few bytes changed or cut."""
    call = channel.unary_unary(method, request_serializer=None, response_deserializer=None)
    message = request_for("vqa", "alpha", seed=1)
    valid = message if VALID[method] == "predict" else _kserve_of(message)
    seen: Counter = Counter()

    @FUZZ
    @given(data=st.binary(max_size=200) | _mutated(valid.SerializeToString()))
    def run(data):
        _answered(call, data, seen)

    run()
    _report(seen, least_ok=0)  # changed bytes rarely still make a valid request
    good()


@FUZZ
@given(st.data())
def test_load_selector_accepts_or_names_the_parameter(data):
    """Any parameters: a (version, alias) to load, or InvalidInput naming a parameter."""
    request = service_pb2.RepositoryModelLoadRequest(model_name="alpha")
    data.draw(_parameters(request, ["version", "alias", "config", "file:x"]))
    if data.draw(st.booleans()):
        versions = data.draw(st.lists(_ints(*INT64) | TEXTS | st.none() | st.booleans(),
                                      max_size=2) | _ints(*INT64))
        request.parameters["config"].string_param = json.dumps(
            {"version_policy": {"specific": {"versions": versions}}})
    try:
        version, alias = load_selector(request.parameters)
    except InvalidInput as error:
        assert any(key in str(error) for key in request.parameters), str(error)
    else:
        assert version is None or version >= 1
