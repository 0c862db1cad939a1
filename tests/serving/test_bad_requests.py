"""Every bad input gets its status code and a message naming the limit; bad requests sent
alongside good ones leave the good ones' answers unchanged; the server stays SERVING."""

from __future__ import annotations

import io
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from PIL import Image
from serving_helpers import png, request_for, start_server

from serving.limits import Limits
from serving.protos import inference_pb2, inference_pb2_grpc, repository_pb2, repository_pb2_grpc

LIMITS = Limits(max_message_bytes=300_000, max_image_bytes=60_000, max_image_pixels=128 * 128,
                max_frames=4, max_text_tokens=40, max_new_tokens=8, max_beams=3)
INVALID, NOT_FOUND = grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND


def _encoded(size: int | tuple[int, int], fmt: str = "PNG", noise: bool = False) -> bytes:
    """An image of size x size (or (height, width)) pixels, plain or noise."""
    height, width = (size, size) if isinstance(size, int) else size
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8) if noise else \
        np.full((height, width, 3), 90, dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format=fmt)
    return out.getvalue()


def _with(message, **changes):
    """A copy of `message` changed by callables or values."""
    copy = inference_pb2.PredictRequest()
    copy.CopyFrom(message)
    for field, value in changes.items():
        if callable(value):
            value(copy)
        else:
            setattr(copy, field, value)
    return copy


def _image(data: bytes):
    def apply(message):
        del message.images[:]
        message.images.add(encoded=data)
    return apply


GOOD = request_for("vqa", "alpha", seed=8, max_new_tokens=4)
BAD = {
    "max_message_bytes": (INVALID, _with(GOOD, text="what " * 70_000)),
    "max_image_bytes": (INVALID, _with(GOOD, images=_image(_encoded(160, noise=True)))),
    "max_image_pixels": (INVALID, _with(GOOD, images=_image(_encoded(200)))),
    "max_image_aspect": (INVALID, _with(GOOD, images=_image(_encoded((4096, 1))))),
    "not a valid": (INVALID, _with(GOOD, images=_image(b"definitely not an image"))),
    "truncated": (INVALID, _with(GOOD, images=_image(png(1)[:60]))),
    "GIF": (INVALID, _with(GOOD, images=_image(_encoded(16, "GIF")))),
    "max_frames": (INVALID, _with(request_for("tvc", "alpha"), video=lambda m: m.video.frames
                                  .extend(inference_pb2.Image(encoded=png(i)) for i in range(2)))),
    "max_text_tokens": (INVALID, _with(GOOD, text="what is the color " * 12)),
    "max_new_tokens": (INVALID, _with(GOOD, generation=lambda m: setattr(
        m.generation, "max_new_tokens", 9))),
    "max_beams": (INVALID, _with(GOOD, generation=lambda m: setattr(
        m.generation, "num_beams", 4))),
    "takes 2 image": (INVALID, _with(request_for("nlvr2", "alpha"), images=_image(png(2)))),
    "feat_dim": (INVALID, _with(GOOD, images=lambda m: (m.ClearField("images"), m.images.add(
        features=inference_pb2.Features(data=bytes(4 * 3 * 8), tokens=3, feat_dim=8))))),
    "unknown task": (NOT_FOUND, _with(GOOD, task="sudoku")),
    "not loaded": (NOT_FOUND, _with(GOOD, adapter=lambda m: setattr(m.adapter, "name", "nope"))),
    "has no task": (NOT_FOUND, request_for("caption", "gamma")),
    "does not exist": (NOT_FOUND, request_for("vqa", "alpha", version=99)),
}


@pytest.fixture(scope="module")
def strict_server(backbone, published):
    running = start_server(backbone, published, limits=LIMITS, max_queue_delay_ms=30.0)
    yield running
    running.stop(grace=5)


@pytest.fixture(scope="module")
def stubs(strict_server):
    with grpc.insecure_channel(f"127.0.0.1:{strict_server.port}") as channel:
        yield (inference_pb2_grpc.InferenceStub(channel),
               repository_pb2_grpc.RepositoryStub(channel), health_pb2_grpc.HealthStub(channel))


@pytest.mark.parametrize("limit", sorted(BAD))
def test_bad_request_gets_its_code_and_names_the_limit(limit, stubs):
    code, message = BAD[limit]
    with pytest.raises(grpc.RpcError) as caught:
        stubs[0].Predict(message, timeout=30)
    assert caught.value.code() == code
    assert limit in caught.value.details()


def test_fingerprint_mismatch_is_failed_precondition(stubs):
    request = repository_pb2.LoadRequest()
    request.adapter.name = "alien"
    with pytest.raises(grpc.RpcError) as caught:
        stubs[1].Load(request, timeout=30)
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "base model" in caught.value.details()


def test_bad_requests_do_not_disturb_good_ones_in_the_same_batch(stubs):
    inference, _, health = stubs
    good = [request_for(task, "alpha", seed=20 + i, max_new_tokens=4)
            for i, task in enumerate(("vqa", "caption", "nlvr2", "tvqa"))]
    alone = [inference.Predict(m, timeout=30) for m in good]

    def call(message):
        try:
            return inference.Predict(message, timeout=30)
        except grpc.RpcError as exc:
            return exc.code()

    mixed = good + [message for _, message in BAD.values()]
    with ThreadPoolExecutor(len(mixed)) as pool:
        results = list(pool.map(call, mixed))
    for single, together in zip(alone, results[:len(good)], strict=True):
        assert together.text == single.text and together.label == single.label
    assert results[len(good):] == [code for code, _ in BAD.values()]
    reply = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
    assert inference.Predict(GOOD, timeout=30).text == inference.Predict(GOOD, timeout=30).text
