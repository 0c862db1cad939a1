"""Client mistakes on both protocols answer a documented status, never UNKNOWN or INTERNAL,
with a message naming the field: integers parsed strictly, tensor shapes checked against
their contents, load configs validated, version 0 refused everywhere, request bytes that
do not parse, artifacts the reader refuses, and one meaning for a missing task."""

from __future__ import annotations

import json

import grpc
import pytest
from serving_helpers import request_for, start_server
from tritonclient.grpc import service_pb2

from adapters_registry import (
    FingerprintMismatch,
    IntegrityError,
    InvalidArtifact,
    InvalidName,
    LimitExceeded,
    Limits,
    NotFound,
)
from serving.protos import inference_pb2, inference_pb2_grpc, repository_pb2, repository_pb2_grpc
from serving.requests import error_for

INVALID = grpc.StatusCode.INVALID_ARGUMENT


@pytest.fixture(scope="module")
def server(backbone, published):
    running = start_server(backbone, published)
    yield running
    running.stop(grace=5)


def _kserve_request(model: str = "alpha") -> service_pb2.ModelInferRequest:
    """A good vqa request in typed contents (tritonclient cannot send the bad parameters)."""
    message = request_for("vqa", "alpha", seed=40)
    request = service_pb2.ModelInferRequest(model_name=model, id="strict")
    for name, value in (("TASK", b"vqa"), ("IMAGE", message.images[0].encoded),
                        ("TEXT", message.text.encode())):
        tensor = request.inputs.add(name=name, datatype="BYTES", shape=[1])
        tensor.contents.bytes_contents.append(value)
    request.parameters["max_new_tokens"].int64_param = 3
    return request


def _refused(call, request, code=INVALID) -> str:
    """The details of a call that must fail with `code`."""
    with pytest.raises(grpc.RpcError) as caught:
        call(request, timeout=30)
    assert caught.value.code() == code, caught.value.details()
    return caught.value.details()


@pytest.mark.parametrize(("name", "kind", "value"), [
    ("max_new_tokens", "int64_param", 2**40),
    ("max_new_tokens", "string_param", "--5"),
    ("max_new_tokens", "string_param", "²"),
    ("max_new_tokens", "string_param", "9" * 5000),
    ("num_beams", "uint64_param", 2**63),
    ("num_beams", "bool_param", True),
    ("num_beams", "double_param", 2.0),
])
def test_kserve_integer_parameters_are_parsed_strictly(kserve, name, kind, value):
    request = _kserve_request()
    setattr(request.parameters[name], kind, value)
    assert f"parameter {name!r}" in _refused(kserve.ModelInfer, request)


@pytest.mark.parametrize("version", ["99999999999999999999", "²", "0", "-1", " 2", "2.0"])
def test_kserve_model_version_must_be_a_version_number(kserve, version):
    request = _kserve_request()
    request.model_version = version
    assert "model_version" in _refused(kserve.ModelInfer, request)


@pytest.mark.parametrize(("shape", "elements"), [
    ([2**32, 2**32], 0),  # the int64 product wraps around to 0 elements
    ([2**62, 4], 1),
    ([2, 3], 1),
    ([], 0),
])
def test_kserve_tensor_shape_must_match_its_contents(kserve, shape, elements):
    request = _kserve_request()
    tensor = request.inputs[2]  # TEXT
    del tensor.shape[:]
    tensor.shape.extend(shape)
    del tensor.contents.bytes_contents[:]
    tensor.contents.bytes_contents.extend([b"what"] * elements)
    assert "input 'TEXT'" in _refused(kserve.ModelInfer, request)


def _load_request(**parameters) -> service_pb2.RepositoryModelLoadRequest:
    request = service_pb2.RepositoryModelLoadRequest(model_name="alpha")
    for key, (kind, value) in parameters.items():
        setattr(request.parameters[key], kind, value)
    return request


def _config(versions) -> tuple[str, str]:
    return "string_param", json.dumps({"version_policy": {"specific": {"versions": versions}}})


@pytest.mark.parametrize(("parameters", "words"), [
    ({"config": _config(["x"])}, "versions[0]"),
    ({"config": _config(5)}, "versions must be a list"),
    ({"config": _config([None])}, "versions[0]"),
    ({"config": _config([0])}, "versions[0]"),
    ({"config": _config([True])}, "versions[0]"),
    ({"config": _config([1.5])}, "versions[0]"),
    ({"config": _config(["²"])}, "versions[0]"),
    ({"config": ("string_param", "[" * 100_000)}, "parameter 'config'"),
    ({"version": ("string_param", "²")}, "parameter 'version'"),
    ({"version": ("int64_param", 0)}, "parameter 'version'"),
    ({"version": ("int64_param", -3)}, "parameter 'version'"),
    ({"version": ("int64_param", 1), "alias": ("string_param", "latest")}, "not both"),
])
def test_repository_model_load_config_is_validated(kserve, server, parameters, words):
    details = _refused(kserve.RepositoryModelLoad, _load_request(**parameters))
    assert words in details
    assert server.adapters.active_version("alpha") == 2  # nothing was loaded


def test_config_version_as_a_string_loads_that_version(kserve, server):
    """protobuf's JSON writes int64 as a string: Triton's own configs say ["2"]."""
    kserve.RepositoryModelLoad(_load_request(config=_config(["2"])), timeout=30)
    assert server.adapters.active_version("alpha") == 2


def test_version_zero_is_invalid_on_every_path(channel, kserve, server):
    load = repository_pb2.LoadRequest()
    load.adapter.name, load.adapter.version = "alpha", 0
    assert "adapter.version" in _refused(repository_pb2_grpc.RepositoryStub(channel).Load, load)
    predict = request_for("vqa", "alpha", version=0)
    assert "adapter.version" in _refused(inference_pb2_grpc.InferenceStub(channel).Predict,
                                         predict)
    with pytest.raises(InvalidName):
        server.store.resolve("alpha", 0)
    assert server.adapters.active_version("alpha") == 2


def _raw(channel, method: str, streaming: str = "unary_unary"):
    """A call that sends and receives bytes as they are (identity serializers)."""
    return getattr(channel, streaming)(method, request_serializer=None,
                                       response_deserializer=None)


# A proto3 string field (wire type 2) holding b"\xc3\x28", which is not UTF-8.
BAD_TEXT = b"\x2a\x02\xc3\x28"  # PredictRequest.text (field 5)
BAD_MODEL_NAME = b"\x0a\x02\xc3\x28"  # ModelInferRequest.model_name (field 1)
BAD_INPUT_NAME = b"\x2a\x04\x0a\x02\xc3\x28"  # ModelInferRequest.inputs (5) -> name (1)


@pytest.mark.parametrize(("method", "after_good", "data", "words"), [
    ("/vladapter.v1.Inference/Predict", True, BAD_TEXT, "field 'text' is not valid UTF-8"),
    ("/vladapter.v1.Inference/Predict", False, b"\xff\xff\xff", "vladapter.v1.PredictRequest"),
    ("/vladapter.v1.Repository/Load", False, b"hello world", "vladapter.v1.LoadRequest"),
    ("/inference.GRPCInferenceService/ModelInfer", False, BAD_MODEL_NAME, "field 'model_name'"),
    ("/inference.GRPCInferenceService/ModelInfer", False, BAD_INPUT_NAME,
     "field 'inputs.name'"),
    ("/inference.GRPCInferenceService/RepositoryModelLoad", False, b"\x0a\x05ab",
     "wire format"),
    ("/grpc.health.v1.Health/Check", False, b"\x0b", "grpc.health.v1.HealthCheckRequest"),
])
def test_request_bytes_that_do_not_parse_are_invalid_argument(channel, method, after_good,
                                                              data, words):
    good = request_for("vqa", "alpha", seed=41).SerializeToString()
    details = _refused(_raw(channel, method), good + data if after_good else data)
    assert words in details
    # The good bytes alone parse and answer.
    answer = inference_pb2.PredictResponse.FromString(
        _raw(channel, "/vladapter.v1.Inference/Predict")(good, timeout=30))
    assert answer.adapter_name == "alpha"


def test_undecodable_bytes_on_streams_end_the_call_invalid_argument(channel):
    stream = _raw(channel, "/vladapter.v1.Inference/PredictStream", "unary_stream")
    with pytest.raises(grpc.RpcError) as caught:
        list(stream(BAD_TEXT, timeout=30))
    assert caught.value.code() == INVALID and "field 'text'" in caught.value.details()
    infer = _raw(channel, "/inference.GRPCInferenceService/ModelStreamInfer", "stream_stream")
    answers = infer(iter([_kserve_request().SerializeToString(), BAD_MODEL_NAME]), timeout=30)
    first = service_pb2.ModelStreamInferResponse.FromString(next(answers))
    assert first.error_message == "" and first.infer_response.id == "strict"
    with pytest.raises(grpc.RpcError) as caught:
        next(answers)
    assert caught.value.code() == INVALID and "field 'model_name'" in caught.value.details()


def test_artifact_refused_by_the_reader_is_failed_precondition(channel, server):
    """The server's registry reads alpha:1 (not yet in host memory) under a byte limit the
    artifact exceeds: LimitExceeded from the artifact reader."""
    load = repository_pb2.LoadRequest()
    load.adapter.name, load.adapter.version = "alpha", 1
    limits = server.registry.limits
    server.registry.limits = Limits(max_artifact_bytes=1000, max_files=limits.max_files)
    try:
        details = _refused(repository_pb2_grpc.RepositoryStub(channel).Load, load,
                           grpc.StatusCode.FAILED_PRECONDITION)
    finally:
        server.registry.limits = limits
    assert "max_artifact_bytes" in details
    assert server.adapters.active_version("alpha") == 2


@pytest.mark.parametrize(("error", "code"), [
    (InvalidArtifact("shared.safetensors: header is not JSON"),
     grpc.StatusCode.FAILED_PRECONDITION),
    (LimitExceeded("artifact: 3 GB, the limit is 2 GB"), grpc.StatusCode.FAILED_PRECONDITION),
    (FingerprintMismatch("trained for another base model"), grpc.StatusCode.FAILED_PRECONDITION),
    (IntegrityError("sha256 differs"), grpc.StatusCode.DATA_LOSS),
    (NotFound("alpha:9 does not exist"), grpc.StatusCode.NOT_FOUND),
    (InvalidName("invalid version 0"), INVALID),
])
def test_registry_refusals_map_to_their_status(error, code):
    mapped = error_for(error)
    assert (mapped.code, mapped.message) == (code, str(error))


def test_a_missing_task_is_invalid_argument_and_an_unknown_one_not_found(channel, kserve):
    predict = inference_pb2_grpc.InferenceStub(channel).Predict
    missing = request_for("vqa", "alpha")
    missing.task = ""
    assert "task is required" in _refused(predict, missing)
    request = _kserve_request()
    del request.inputs[0]  # TASK
    assert "task is missing" in _refused(kserve.ModelInfer, request)
    unknown = request_for("vqa", "alpha")
    unknown.task = "sudoku"
    assert "unknown task" in _refused(predict, unknown, grpc.StatusCode.NOT_FOUND)
    request = _kserve_request()
    request.inputs[0].contents.bytes_contents[0] = b"sudoku"
    assert "unknown task" in _refused(kserve.ModelInfer, request, grpc.StatusCode.NOT_FOUND)


def test_a_task_the_adapter_lacks_is_not_found_on_both_protocols(channel, kserve):
    message = request_for("caption", "gamma")  # gamma has no caption task
    details = _refused(inference_pb2_grpc.InferenceStub(channel).Predict, message,
                       grpc.StatusCode.NOT_FOUND)
    request = _kserve_request("gamma")
    request.inputs[0].contents.bytes_contents[0] = b"caption"
    del request.inputs[2]  # no TEXT for captioning
    assert _refused(kserve.ModelInfer, request, grpc.StatusCode.NOT_FOUND) == details
