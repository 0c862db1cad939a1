"""Client, AsyncClient and adapter-client against a fake servicer on a localhost channel.

The fake records every request, so each client method is checked by the request it sent.
"""

from __future__ import annotations

import asyncio
import io
import json
import re
from collections.abc import Iterator
from concurrent import futures

import grpc
import numpy as np
import pytest
from PIL import Image as PILImage

from serving.client import (
    TIMEOUT_KEY,
    AsyncClient,
    Client,
    multiplexed_id,
    parse_adapter_spec,
    predict_request,
)
from serving.client_cli import main
from serving.protos import inference_pb2, inference_pb2_grpc, repository_pb2, repository_pb2_grpc

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
STATE = repository_pb2.AdapterState(name="vqa-lora", version=3, aliases=["prod"],
                                    state="READY", tier="device")


class Recorder:
    """The requests and authorization metadata every fake method received, in order."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, object, str]] = []
        self.routing: list[str | None] = []  # each call's multiplexed_model_id (Ray Serve)
        self.timeouts: list[str | None] = []  # each call's TIMEOUT_KEY (a fleet's replicas)

    def record(self, method: str, request: object, context: grpc.ServicerContext) -> None:
        metadata = dict(context.invocation_metadata())
        self.calls.append((method, request, metadata.get("authorization", "")))
        self.routing.append(metadata.get("multiplexed_model_id"))
        self.timeouts.append(metadata.get(TIMEOUT_KEY))
        name = getattr(getattr(request, "adapter", None), "name", getattr(request, "name", ""))
        if name == "missing":
            context.abort(grpc.StatusCode.NOT_FOUND,
                          "adapter 'missing' is not in the registry\n(looked in /reg)")

    def last(self, method: str) -> object:
        assert self.calls and self.calls[-1][0] == method, self.calls
        return self.calls[-1][1]


class FakeInference(inference_pb2_grpc.InferenceServicer):
    def __init__(self, recorder: Recorder) -> None:
        self.recorder = recorder

    def Predict(self, request, context):
        self.recorder.record("Predict", request, context)
        return inference_pb2.PredictResponse(text=f"answer to {request.text!r}", label="a1",
                                             adapter_name=request.adapter.name,
                                             adapter_version=3)

    def PredictStream(self, request, context):
        self.recorder.record("PredictStream", request, context)
        yield inference_pb2.PredictChunk(token_text="two")
        yield inference_pb2.PredictChunk(token_text=" cats", done=True,
                                         response=inference_pb2.PredictResponse(text="two cats"))


class FakeRepository(repository_pb2_grpc.RepositoryServicer):
    def __init__(self, recorder: Recorder) -> None:
        self.recorder = recorder

    def Index(self, request, context):
        self.recorder.record("Index", request, context)
        return repository_pb2.IndexResponse(adapters=[STATE])

    def Load(self, request, context):
        self.recorder.record("Load", request, context)
        return repository_pb2.LoadResponse(adapter=STATE)

    def Unload(self, request, context):
        self.recorder.record("Unload", request, context)
        return repository_pb2.UnloadResponse()

    def Pin(self, request, context):
        self.recorder.record("Pin", request, context)
        return repository_pb2.PinResponse(adapter=STATE)

    def Unpin(self, request, context):
        self.recorder.record("Unpin", request, context)
        return repository_pb2.PinResponse(adapter=STATE)

    def Status(self, request, context):
        self.recorder.record("Status", request, context)
        return repository_pb2.StatusResponse(adapters=[STATE])


@pytest.fixture(scope="module")
def fake_server() -> Iterator[tuple[str, Recorder]]:
    """(target, recorder) of a fake server on 127.0.0.1."""
    recorder = Recorder()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    inference_pb2_grpc.add_InferenceServicer_to_server(FakeInference(recorder), server)
    repository_pb2_grpc.add_RepositoryServicer_to_server(FakeRepository(recorder), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield f"127.0.0.1:{port}", recorder
    server.stop(grace=None)


def test_image_tasks_build_their_requests(fake_server, tmp_path):
    target, recorder = fake_server
    path = tmp_path / "cat.jpg"
    path.write_bytes(b"jpeg-bytes")
    with Client(target, token="tok") as client:
        assert client.vqa(b"raw", "what?", "vqa-lora", alias="prod").text == "answer to 'what?'"
        vqa = recorder.last("Predict")
        assert vqa.task == "vqa" and vqa.images[0].encoded == b"raw" and vqa.text == "what?"
        assert vqa.adapter.alias == "prod" and vqa.adapter.WhichOneof("selector") == "alias"
        assert recorder.calls[-1][2] == "Bearer tok"
        client.gqa(path, "where?", "gqa-lora", version=2, max_new_tokens=5, num_beams=3,
                   request_id="r1")
        gqa = recorder.last("Predict")
        assert (gqa.task, gqa.images[0].encoded, gqa.adapter.version) == ("gqa", b"jpeg-bytes", 2)
        assert (gqa.generation.max_new_tokens, gqa.generation.num_beams) == (5, 3)
        assert gqa.request_id == "r1"
        client.caption(PILImage.new("RGB", (4, 3), "red"), "cap")
        caption = recorder.last("Predict")
        assert caption.task == "caption" and caption.text == ""
        assert caption.adapter.WhichOneof("selector") is None
        decoded = PILImage.open(io.BytesIO(caption.images[0].encoded))
        assert caption.images[0].encoded.startswith(PNG_MAGIC) and decoded.size == (4, 3)
        client.nlvr2(b"left", str(path), "both have dogs", "nl")
        nlvr2 = recorder.last("Predict")
        assert [i.encoded for i in nlvr2.images] == [b"left", b"jpeg-bytes"]
        assert (nlvr2.task, nlvr2.text) == ("nlvr2", "both have dogs")


def test_video_tasks_and_features(fake_server):
    target, recorder = fake_server
    features = np.arange(12, dtype=np.float64).reshape(3, 4)
    with Client(target) as client:
        client.video_qa([b"f0", b"f1"], "who?", ["a", "b", "c"], "tv", task="how2qa",
                        subtitles="hello")
        video_qa = recorder.last("Predict")
        assert video_qa.task == "how2qa" and list(video_qa.choices) == ["a", "b", "c"]
        assert [f.encoded for f in video_qa.video.frames] == [b"f0", b"f1"]
        assert video_qa.video.subtitles == "hello" and not video_qa.images
        assert recorder.calls[-1][2] == ""
        client.video_caption([features], "tvc-adapter")
        video_caption = recorder.last("Predict")
        assert video_caption.task == "tvc" and video_caption.HasField("video")
        sent = video_caption.video.frames[0].features
        assert (sent.tokens, sent.feat_dim) == (3, 4)
        np.testing.assert_array_equal(np.frombuffer(sent.data, np.float32).reshape(3, 4),
                                      features.astype(np.float32))


def test_predict_stream_and_repository_methods(fake_server):
    target, recorder = fake_server
    request = inference_pb2.PredictRequest(task="vqa", text="raw request")
    with Client(target) as client:
        assert client.predict(request).text == "answer to 'raw request'"
        assert recorder.last("Predict") == request
        chunks = list(client.stream(request))
        assert [c.token_text for c in chunks] == ["two", " cats"] and chunks[-1].done
        assert client.load("vqa-lora", version=3).adapter == STATE
        assert recorder.last("Load").adapter.version == 3
        client.unload("vqa-lora")
        assert recorder.last("Unload").name == "vqa-lora"
        assert list(client.index().adapters) == [STATE]
        assert recorder.last("Index").ready_only is False
        client.status()
        assert recorder.last("Status").name == ""
        client.status("vqa-lora")
        assert recorder.last("Status").name == "vqa-lora"
        assert client.pin("vqa-lora").adapter.name == "vqa-lora"
        assert recorder.last("Pin").name == "vqa-lora"
        client.unpin("vqa-lora")
        assert recorder.last("Unpin").name == "vqa-lora"
        with pytest.raises(grpc.RpcError) as error:
            client.load("missing")
        assert error.value.code() == grpc.StatusCode.NOT_FOUND


def test_async_client_has_the_same_methods(fake_server):
    target, recorder = fake_server

    async def session() -> list[str]:
        async with AsyncClient(target, token="tok") as client:
            answer = await client.vqa(b"img", "async?", "vqa-lora", version=1)
            chunks = [chunk.token_text async for chunk in client.stream(
                predict_request("caption", "cap", images=[b"img"]))]
            loaded = await client.load("vqa-lora", alias="prod")
            status = await client.status("vqa-lora")
            return [answer.text, "".join(chunks), loaded.adapter.name, status.adapters[0].state]

    assert asyncio.run(session()) == ["answer to 'async?'", "two cats", "vqa-lora", "READY"]
    assert recorder.last("Status").name == "vqa-lora"
    assert recorder.calls[-1][2] == "Bearer tok"


def test_predict_calls_carry_the_adapter_reference_as_ray_serves_multiplexed_id(
        fake_server, tmp_path):
    """Ray Serve's proxy routes on `multiplexed_model_id`: every Predict and PredictStream
    of every client sends its adapter reference there, in the text form the CLI takes."""
    target, recorder = fake_server
    with Client(target) as client:
        client.vqa(b"raw", "what?", "vqa-lora", alias="prod")
        client.gqa(b"raw", "where?", "gqa-lora", version=2)
        list(client.stream(predict_request("caption", "cap", images=[b"raw"])))
        client.vqa(b"raw", "what?", "caf\u00e9")  # not ASCII: no metadata, the server answers
        client.index()
    assert recorder.routing[-5:] == ["vqa-lora@prod", "gqa-lora:2", "cap", None, None]

    async def run() -> None:
        async with AsyncClient(target) as client:
            await client.nlvr2(b"a", b"b", "left", "nl", version=7)
    asyncio.run(run())
    assert recorder.routing[-1] == "nl:7"
    image = tmp_path / "cat.png"
    image.write_bytes(PNG_MAGIC)
    assert main(["--target", target, "predict", "--task", "vqa", "--adapter", "vqa-lora:3",
                 "--image", str(image), "--text", "what?"]) == 0
    assert recorder.routing[-1] == "vqa-lora:3"
    for spec in ("vqa-lora:3", "vqa-lora@prod", "vqa-lora"):  # one text form both ways
        name, version, alias = parse_adapter_spec(spec)
        assert multiplexed_id(predict_request("vqa", name, version=version,
                                              alias=alias).adapter) == spec


def test_every_call_carries_the_clients_timeout_for_a_fleets_replicas(fake_server):
    """Ray Serve's proxy keeps gRPC's deadline to itself: every call of both clients also
    sends its timeout as metadata, which a replica reads (serving.fleet.replica)."""
    target, recorder = fake_server
    with Client(target, timeout=7.5) as client:
        client.vqa(b"raw", "what?", "vqa-lora")
        list(client.stream(predict_request("caption", "cap", images=[b"raw"])))
        client.status()
    assert recorder.timeouts[-3:] == ["7.5"] * 3

    async def run() -> None:
        async with AsyncClient(target, timeout=12) as client:
            await client.nlvr2(b"a", b"b", "left", "nl")
    asyncio.run(run())
    assert recorder.timeouts[-1] == "12.0"


def test_request_building_refuses_bad_input():
    with pytest.raises(ValueError, match="not both"):
        predict_request("vqa", "a", version=1, alias="prod")
    with pytest.raises(ValueError, match="tokens, feat_dim"):
        predict_request("vqa", "a", images=[np.zeros(4, np.float32)])
    with pytest.raises(TypeError, match="unsupported image type"):
        predict_request("vqa", "a", images=[3.5])
    assert parse_adapter_spec("vqa-lora") == ("vqa-lora", None, None)
    assert parse_adapter_spec("vqa-lora@prod") == ("vqa-lora", None, "prod")
    assert parse_adapter_spec("vqa-lora:12") == ("vqa-lora", 12, None)
    for bad in ("", "@prod", "x:", "x:latest", "x@"):
        with pytest.raises(ValueError):
            parse_adapter_spec(bad)


def test_cli_predict_prints_the_answer_and_json(fake_server, tmp_path, capsys):
    target, recorder = fake_server
    image = tmp_path / "cat.png"
    image.write_bytes(PNG_MAGIC)
    argv = ["--target", target, "predict", "--task", "vqa", "--adapter", "vqa-lora:3",
            "--image", str(image), "--text", "what?", "--max-new-tokens", "4", "--beams", "2"]
    assert main(argv) == 0
    assert capsys.readouterr().out == "answer to 'what?'\n"
    sent = recorder.last("Predict")
    assert (sent.adapter.version, sent.generation.num_beams, sent.images[0].encoded) == (
        3, 2, PNG_MAGIC)
    assert main([*argv, "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["text"] == "answer to 'what?'" and printed["adapter_name"] == "vqa-lora"


def test_cli_stream_prints_pieces_as_they_come_and_json_once(fake_server, tmp_path, capsys):
    target, recorder = fake_server
    image = tmp_path / "cat.png"
    image.write_bytes(PNG_MAGIC)
    argv = ["--target", target, "predict", "--task", "caption", "--adapter", "cap",
            "--image", str(image), "--stream"]
    assert main(argv) == 0
    assert capsys.readouterr().out == "two cats\n"
    assert recorder.last("PredictStream").task == "caption"
    assert main([*argv, "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"text": "two cats"}


def test_cli_video_predict_and_repository_commands(fake_server, tmp_path, capsys):
    target, recorder = fake_server
    frames = tmp_path / "clip"
    frames.mkdir()
    for name in ("002.jpg", "001.jpg", "notes.txt"):
        (frames / name).write_bytes(name.encode())
    token_file = tmp_path / "token"
    token_file.write_text("# ops\ns3cret\n")
    assert main(["--target", target, "--token-file", str(token_file), "predict", "--task",
                 "tvqa", "--adapter", "tv@prod", "--frames", str(frames), "--text", "who?",
                 "--choice", "a", "--choice", "b", "--subtitles", "hi"]) == 0
    sent = recorder.last("Predict")
    assert [f.encoded for f in sent.video.frames] == [b"001.jpg", b"002.jpg"]
    assert (list(sent.choices), sent.video.subtitles, sent.adapter.alias) == (["a", "b"], "hi",
                                                                             "prod")
    assert recorder.calls[-1][2] == "Bearer s3cret"
    capsys.readouterr()
    assert main(["--target", target, "load", "vqa-lora@prod"]) == 0
    assert recorder.last("Load").adapter.alias == "prod"
    assert "vqa-lora\tv3\tREADY\tdevice" in capsys.readouterr().out
    assert main(["--target", target, "index", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["adapters"][0]["name"] == "vqa-lora"
    assert main(["--target", target, "status"]) == 0
    assert main(["--target", target, "unload", "vqa-lora"]) == 0
    assert capsys.readouterr().out.endswith("unloaded vqa-lora\n")


def test_cli_server_error_is_one_line_and_exit_1(fake_server, capsys):
    target, _ = fake_server
    assert main(["--target", target, "load", "missing"]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == ("adapter-client: error: NOT_FOUND: adapter 'missing' is not in "
                            "the registry (looked in /reg)\n")


@pytest.mark.parametrize("argv", [
    ["predict", "--task", "vqa", "--adapter", "a"],
    ["predict", "--task", "tvqa", "--adapter", "a", "--text", "who?"],
    ["predict", "--task", "vqa", "--adapter", "a:latest", "--image", "x.png"],
    ["predict", "--task", "vqa", "--adapter", "a", "--image", "does-not-exist.png"],
    ["predict", "--task", "unknown", "--adapter", "a"],
    ["--token-file", "does-not-exist", "index"],
    ["load"],
], ids=["no-image", "no-frames", "bad-version", "missing-image", "bad-task", "no-token-file",
        "no-name"])
def test_cli_usage_errors_exit_2(argv, capsys):
    assert main(["--target", "127.0.0.1:9", *argv]) == 2
    assert re.search(r"^adapter-client( \w+)?: error: ", capsys.readouterr().err, re.MULTILINE)
