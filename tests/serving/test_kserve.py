"""KServe v2 over a real localhost channel with tritonclient's own client: health,
metadata, config, inference for every task equal to our own API's Predict, streaming,
the vision model, load / unload (hot-swap), repository index, statistics and errors."""

from __future__ import annotations

import json
import queue

import numpy as np
import pytest
import torch
import tritonclient.grpc as triton
from kserve_helpers import bytes_input, infer, kserve_inputs, kserve_parameters
from serving_helpers import png, request_for, start_server
from tritonclient.grpc import service_pb2
from tritonclient.utils import InferenceServerException

from modeling.tasks import TASKS
from serving.protos import inference_pb2_grpc
from serving.security import TokenAuthInterceptor

VISION = "clip_vision"


@pytest.fixture(scope="module")
def server(backbone, published):
    running = start_server(backbone, published, max_queue_delay_ms=20.0,
                           serve_vision_model=VISION)
    yield running
    running.stop(grace=5)


@pytest.fixture(scope="module")
def client(server):
    with triton.InferenceServerClient(f"127.0.0.1:{server.port}") as kserve:
        yield kserve


def status_of(excinfo) -> str:
    return excinfo.value.status()


def test_server_live_ready_and_metadata(client):
    assert client.is_server_live() and client.is_server_ready()
    meta = client.get_server_metadata(as_json=True)
    assert meta["name"] == "vladapter"
    assert {"model_repository", "statistics", "binary_tensor_data"} <= set(meta["extensions"])


def test_model_ready_metadata_and_config(client, server):
    active = str(server.adapters.active_version("alpha"))
    assert client.is_model_ready("alpha") and client.is_model_ready("alpha", active)
    assert not client.is_model_ready("alpha", "7") and not client.is_model_ready("nobody")
    assert client.is_model_ready(VISION)
    meta = client.get_model_metadata("alpha", as_json=True)
    assert meta["versions"] == [active]
    assert [(t["name"], t["datatype"]) for t in meta["inputs"]] == [
        (n, "BYTES") for n in ("TASK", "IMAGE", "IMAGES", "TEXT", "CHOICES", "SUBTITLES",
                               "FRAMES")] + [("FEATURES", "FP32")]
    assert meta["inputs"][-1]["shape"] == ["-1", "-1", "-1"]
    assert [(t["name"], t["datatype"], t["shape"]) for t in meta["outputs"]] == [
        ("TEXT", "BYTES", ["1"]), ("SCORES", "FP32", ["-1"])]
    config = client.get_model_config("beta", as_json=True)["config"]
    assert config.get("max_batch_size", 0) == 0  # the server batches; no batch dim
    assert config["parameters"]["tasks"]["string_value"] == "caption,nlvr2,tvqa,vqa"
    assert {i["name"] for i in config["input"]} >= {"TASK", "FRAMES"}
    vision = client.get_model_metadata(VISION, as_json=True)
    assert vision["inputs"][0] == {"name": "PIXELS", "datatype": "FP32",
                                   "shape": ["-1", "3", "32", "32"]}
    assert vision["outputs"][0]["name"] == "FEATURES"


@pytest.mark.parametrize("task", list(TASKS))
def test_infer_equals_our_own_predict(task, client, channel):
    message = request_for(task, "alpha", seed=13)
    expected = inference_pb2_grpc.InferenceStub(channel).Predict(message, timeout=30)
    text, scores, version = infer(client, message)
    assert text == expected.text and version == str(expected.adapter_version)
    assert scores == pytest.approx([s.log_prob for s in expected.scores], abs=1e-4)


def test_typed_contents_and_task_parameter(kserve, client):
    """BYTES in `contents.bytes_contents`, the task as a request parameter, beams too."""
    message = request_for("vqa", "beta", seed=14, num_beams=2)
    request = service_pb2.ModelInferRequest(model_name="beta", id="typed")
    request.parameters["task"].string_param = "vqa"
    request.parameters["max_new_tokens"].int64_param = message.generation.max_new_tokens
    request.parameters["num_beams"].int64_param = 2
    for name, values in (("IMAGE", [message.images[0].encoded]),
                         ("TEXT", [message.text.encode()])):
        tensor = request.inputs.add(name=name, datatype="BYTES", shape=[1])
        tensor.contents.bytes_contents.extend(values)
    request.outputs.add(name="TEXT")
    response = kserve.ModelInfer(request, timeout=30)
    assert [o.name for o in response.outputs] == ["TEXT"]
    assert response.raw_output_contents[0][4:].decode() == infer(client, message)[0]
    assert response.parameters["encode_ms"].double_param >= 0


def test_vision_model_returns_the_towers_features(client, backbone):
    pixels = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    tensor = triton.InferInput("PIXELS", [3, 3, 32, 32], "FP32")
    tensor.set_data_from_numpy(pixels.numpy())
    result = client.infer(VISION, [tensor], client_timeout=30)
    torch.testing.assert_close(torch.from_numpy(result.as_numpy("FEATURES").copy()),
                               backbone.encode_images(pixels), atol=1e-6, rtol=0)
    wrong = triton.InferInput("PIXELS", [1, 3, 16, 16], "FP32")
    wrong.set_data_from_numpy(np.zeros((1, 3, 16, 16), np.float32))
    with pytest.raises(InferenceServerException) as excinfo:
        client.infer(VISION, [wrong], client_timeout=30)
    assert status_of(excinfo) == "StatusCode.INVALID_ARGUMENT"
    assert "[n>=1, 3, 32, 32]" in excinfo.value.message()


def test_stream_answers_every_request_in_order(server):
    answers: queue.SimpleQueue = queue.SimpleQueue()
    messages = [request_for(task, "alpha", seed=15) for task in ("vqa", "nlvr2", "caption")]
    with triton.InferenceServerClient(f"127.0.0.1:{server.port}") as kserve:
        kserve.start_stream(callback=lambda result, error: answers.put((result, error)))
        for message in messages[:2]:
            kserve.async_stream_infer("alpha", kserve_inputs(message),
                                      request_id=message.request_id,
                                      parameters=kserve_parameters(message))
        kserve.async_stream_infer("alpha", [bytes_input("TASK", ["vqa"])], request_id="bad")
        kserve.async_stream_infer("alpha", kserve_inputs(messages[2]),
                                  request_id=messages[2].request_id,
                                  parameters=kserve_parameters(messages[2]))
        got = [answers.get(timeout=30) for _ in range(4)]
        kserve.stop_stream()
        expected = [infer(kserve, m)[0] for m in messages]
    assert [r.get_response().id for r, _ in (got[0], got[1], got[3])] == \
        [m.request_id for m in messages]
    assert [r.as_numpy("TEXT")[0].decode() for r, _ in (got[0], got[1], got[3])] == expected
    assert got[2][0] is None and "takes 1 image(s), got 0" in got[2][1].message()


def test_load_and_unload_are_the_repository_hot_swap(client, channel, server, published,
                                                     backbone):
    from serving_helpers import direct

    message = request_for("vqa", "alpha", seed=16)
    try:
        client.load_model("alpha", config=json.dumps(
            {"version_policy": {"specific": {"versions": [1]}}}))
        assert server.adapters.active_version("alpha") == 1
        assert client.is_model_ready("alpha", "1") and not client.is_model_ready("alpha", "2")
        text, _, version = infer(client, message)
        assert (text, version) == (direct(backbone, published.models[("alpha", 1)], message)[0],
                                   "1")
        client.unload_model("gamma")
        assert not client.is_model_ready("gamma")
        with pytest.raises(InferenceServerException) as excinfo:
            infer(client, request_for("gqa", "gamma"))
        assert status_of(excinfo) == "StatusCode.NOT_FOUND"
        with pytest.raises(InferenceServerException) as excinfo:
            client.unload_model("gamma")
        assert status_of(excinfo) == "StatusCode.NOT_FOUND"
    finally:
        client.load_model("alpha")  # the latest version again
        client.load_model("gamma")
    assert server.adapters.active_version("alpha") == 2 and client.is_model_ready("gamma")
    with pytest.raises(InferenceServerException) as excinfo:
        client.load_model("nobody")
    assert status_of(excinfo) == "StatusCode.NOT_FOUND"
    with pytest.raises(InferenceServerException) as excinfo:
        client.load_model("alpha", config=json.dumps(
            {"version_policy": {"specific": {"versions": [1, 2]}}}))
    assert status_of(excinfo) == "StatusCode.INVALID_ARGUMENT"


def test_repository_index_lists_every_version(client):
    index = {(m["name"], m.get("version")): m.get("state")
             for m in client.get_model_repository_index(as_json=True)["models"]}
    assert index[("alpha", "1")] == "UNAVAILABLE" and index[("alpha", "2")] == "READY"
    assert index[(VISION, "1")] == "READY" and index[("beta", "1")] == "READY"
    assert ("alien", "1") in index


def test_statistics_count_successes_and_failures(client):
    def counts():
        stats = client.get_inference_statistics("beta", as_json=True)["model_stats"]
        (beta,) = stats
        inference = beta["inference_stats"]
        return (int(inference["success"].get("count", 0)),
                int(inference["fail"].get("count", 0)), int(inference["success"].get("ns", 0)))

    before = counts()
    infer(client, request_for("caption", "beta", seed=17))
    with pytest.raises(InferenceServerException):
        infer(client, request_for("gqa", "beta"))  # beta has no gqa
    after = counts()
    assert after[0] == before[0] + 1 and after[1] == before[1] + 1 and after[2] > before[2]
    everything = client.get_inference_statistics(as_json=True)["model_stats"]
    assert {VISION, "alpha", "beta", "gamma"} <= {s["name"] for s in everything}
    with pytest.raises(InferenceServerException) as excinfo:
        client.get_inference_statistics("nobody")
    assert status_of(excinfo) == "StatusCode.NOT_FOUND"


@pytest.mark.parametrize(("inputs", "model", "status", "words"), [
    (lambda m: kserve_inputs(m), "nobody", "NOT_FOUND", "'nobody' is not loaded"),
    (lambda m: [bytes_input("TASK", ["weather"])], "alpha", "NOT_FOUND", "unknown task"),
    (lambda m: [bytes_input("PICTURE", [b"x"])], "alpha", "INVALID_ARGUMENT",
     "unknown input 'PICTURE'"),
    (lambda m: kserve_inputs(m, task_as_input=False), "alpha", "INVALID_ARGUMENT",
     "the task is missing"),
    (lambda m: [bytes_input("TASK", ["vqa"]), bytes_input("IMAGE", [b"not an image"])],
     "alpha", "INVALID_ARGUMENT", "not a valid JPEG"),
    (lambda m: [bytes_input("TASK", ["nlvr2"]), bytes_input("IMAGE", [png(1)])],
     "alpha", "INVALID_ARGUMENT", "takes 2 image(s), got 1"),
])
def test_errors_surface_with_their_status(client, inputs, model, status, words):
    message = request_for("vqa", "alpha", seed=18)
    with pytest.raises(InferenceServerException) as excinfo:
        client.infer(model, inputs(message), parameters=kserve_parameters(message),
                     client_timeout=30)
    assert status_of(excinfo) == f"StatusCode.{status}"
    assert words in excinfo.value.message()


def test_bad_version_and_metadata_of_unknown_models(client):
    message = request_for("vqa", "alpha", seed=19)
    with pytest.raises(InferenceServerException) as excinfo:
        infer(client, message, model_version="latest")
    assert status_of(excinfo) == "StatusCode.INVALID_ARGUMENT"
    for call in (client.get_model_metadata, client.get_model_config):
        with pytest.raises(InferenceServerException) as excinfo:
            call("nobody")
        assert status_of(excinfo) == "StatusCode.NOT_FOUND"


def test_shared_memory_trace_and_log_are_unimplemented(client):
    calls = [client.get_system_shared_memory_status, client.get_cuda_shared_memory_status,
             lambda: client.register_system_shared_memory("r", "/r", 16),
             client.unregister_system_shared_memory, client.get_trace_settings,
             lambda: client.update_trace_settings(settings={"trace_rate": "1"}),
             client.get_log_settings]
    for call in calls:
        with pytest.raises(InferenceServerException) as excinfo:
            call()
        assert status_of(excinfo) == "StatusCode.UNIMPLEMENTED"
        assert "not supported by vladapter" in excinfo.value.message()


def test_kserve_repository_calls_need_a_token():
    auth = TokenAuthInterceptor({"secret"}, protect_inference=False)
    assert auth.requires_token("/inference.GRPCInferenceService/RepositoryModelLoad")
    assert auth.requires_token("/inference.GRPCInferenceService/RepositoryModelUnload")
    assert not auth.requires_token("/inference.GRPCInferenceService/ModelInfer")
    assert not auth.requires_token("/inference.GRPCInferenceService/RepositoryIndex")


def test_stream_parameter_sends_text_pieces_then_the_final_answer(server, channel):
    """Triton's decoupled style: pieces (TEXT) flagged not final, then the whole answer."""
    messages = [request_for(task, "alpha", seed=21, max_new_tokens=6)
                for task in ("caption", "vqa")]
    answers: queue.SimpleQueue = queue.SimpleQueue()
    with triton.InferenceServerClient(f"127.0.0.1:{server.port}") as kserve:
        kserve.start_stream(callback=lambda result, error: answers.put((result, error)))
        for message in messages:
            kserve.async_stream_infer("alpha", kserve_inputs(message),
                                      request_id=message.request_id,
                                      parameters={**kserve_parameters(message), "stream": True})
        got: dict[str, list] = {m.request_id: [] for m in messages}
        finished = 0
        while finished < len(messages):
            result, error = answers.get(timeout=30)
            assert error is None
            response = result.get_response()
            final = response.parameters["triton_final_response"].bool_param
            got[response.id].append((final, result.as_numpy("TEXT")[0].decode(), result))
            finished += final
        kserve.stop_stream()
    predict = inference_pb2_grpc.InferenceStub(channel).Predict
    for message in messages:
        *pieces, (final, text, result) = got[message.request_id]
        assert final and not any(flag for flag, _, _ in pieces)
        assert pieces, "a generated answer streams at least one piece"
        assert "".join(piece for _, piece, _ in pieces) == text
        assert text == predict(message, timeout=30).text
        assert result.get_response().model_version == "2"


def test_stream_parameter_on_unary_infer_is_refused(client):
    message = request_for("vqa", "alpha", seed=22)
    with pytest.raises(InferenceServerException) as excinfo:
        client.infer("alpha", kserve_inputs(message),
                     parameters={**kserve_parameters(message), "stream": True},
                     client_timeout=30)
    assert status_of(excinfo) == "StatusCode.INVALID_ARGUMENT"
    assert "needs ModelStreamInfer" in excinfo.value.message()


def _features_of(backbone, message) -> np.ndarray:
    """The tower's features [n, tokens, feat_dim] of a message's images (or frames)."""
    import io

    from PIL import Image

    from modeling.inputs import image_processor, images_to_pixels

    sources = message.images or message.video.frames
    pixels = images_to_pixels([Image.open(io.BytesIO(s.encoded)) for s in sources],
                              image_processor(backbone.config.vision.image_size))
    with torch.no_grad():
        return backbone.encode_images(pixels).numpy().astype(np.float32)


@pytest.mark.parametrize("task", ["vqa", "nlvr2", "tvqa"])
def test_features_input_answers_as_the_encoded_images_do(task, client, backbone):
    message = request_for(task, "alpha", seed=23)
    features = _features_of(backbone, message)
    tensor = triton.InferInput("FEATURES", list(features.shape), "FP32")
    tensor.set_data_from_numpy(features)
    inputs = [i for i in kserve_inputs(message) if i.name() not in ("IMAGES", "FRAMES")]
    result = client.infer("alpha", [*inputs, tensor], parameters=kserve_parameters(message),
                          client_timeout=30)
    expected, scores, _ = infer(client, message)
    assert result.as_numpy("TEXT")[0].decode() == expected
    assert result.as_numpy("SCORES").tolist() == pytest.approx(scores, abs=1e-4)


@pytest.mark.parametrize(("shape", "with_image", "words"), [
    ((1, 4, 8), True, "give FEATURES or encoded IMAGES, not both"),
    ((4, 8), False, "must be FP32 [n, tokens, feat_dim]"),
    ((1, 4, 7), False, "feat_dim"),
])
def test_bad_features_input_is_invalid_argument(client, shape, with_image, words):
    message = request_for("vqa", "alpha", seed=24)
    tensor = triton.InferInput("FEATURES", list(shape), "FP32")
    tensor.set_data_from_numpy(np.zeros(shape, np.float32))
    inputs = [i for i in kserve_inputs(message) if with_image or i.name() != "IMAGES"]
    with pytest.raises(InferenceServerException) as excinfo:
        client.infer("alpha", [*inputs, tensor], client_timeout=30)
    assert status_of(excinfo) == "StatusCode.INVALID_ARGUMENT"
    assert words in excinfo.value.message()


def _stream_answers(server, requests: list[tuple[str, dict]], message) -> list:
    """(result, error) of each (request_id, parameters) sent on one stream, in order."""
    answers: queue.SimpleQueue = queue.SimpleQueue()
    with triton.InferenceServerClient(f"127.0.0.1:{server.port}") as kserve:
        kserve.start_stream(callback=lambda result, error: answers.put((result, error)))
        for request_id, parameters in requests:
            kserve.async_stream_infer("alpha", kserve_inputs(message), request_id=request_id,
                                      parameters={**kserve_parameters(message), **parameters})
        got = [answers.get(timeout=30) for _ in requests]
        kserve.stop_stream()
    return got


def test_a_stream_answers_a_bad_parameter_with_its_error_and_goes_on(server, client):
    """max_new_tokens = 2**40 does not fit the int32 field: that request's error, then the
    next request on the same stream is answered."""
    message = request_for("vqa", "alpha", seed=25)
    got = _stream_answers(server, [("good-1", {}), ("bad", {"max_new_tokens": 2**40}),
                                   ("good-2", {})], message)
    expected = infer(client, message)[0]
    assert [r.get_response().id for r, _ in (got[0], got[2])] == ["good-1", "good-2"]
    assert [r.as_numpy("TEXT")[0].decode() for r, _ in (got[0], got[2])] == [expected] * 2
    assert got[1][0] is None and "parameter 'max_new_tokens'" in got[1][1].message()


def test_any_exception_on_a_stream_answers_its_own_request(server, client, monkeypatch):
    """Whatever a request raises while it is handled becomes its error_message."""
    import serving.kserve

    real = serving.kserve.predict_request

    def failing(request, arrays):
        if request.id == "boom":
            raise RuntimeError("planted failure")
        return real(request, arrays)

    monkeypatch.setattr(serving.kserve, "predict_request", failing)
    message = request_for("caption", "alpha", seed=26)
    got = _stream_answers(server, [("boom", {}), ("after", {})], message)
    assert got[0][0] is None and "planted failure" in got[0][1].message()
    assert got[1][1] is None and got[1][0].get_response().id == "after"
    assert got[1][0].as_numpy("TEXT")[0].decode() == infer(client, message)[0]


def test_vision_request_over_the_message_limit_is_invalid_argument(client, server):
    """max_message_bytes bounds vision-model requests too (they skip PredictRequest)."""
    limit = server.config.limits.max_message_bytes
    count = limit // (3 * 32 * 32 * 4) + 1
    tensor = triton.InferInput("PIXELS", [count, 3, 32, 32], "FP32")
    tensor.set_data_from_numpy(np.zeros((count, 3, 32, 32), np.float32))
    with pytest.raises(InferenceServerException) as excinfo:
        client.infer(VISION, [tensor], client_timeout=60)
    assert status_of(excinfo) == "StatusCode.INVALID_ARGUMENT"
    assert "max_message_bytes" in excinfo.value.message()
