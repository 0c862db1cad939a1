"""Only the engine thread runs the model and changes the adapter lifecycle: KServe's vision
model runs there (not on the gRPC thread that received it), and Load / Pin / Unload sent
from gRPC threads are carried out there while callers wait for the result."""

from __future__ import annotations

import threading

import grpc
import numpy as np
import pytest
import torch
import tritonclient.grpc as triton
from serving_helpers import VISION_MODEL

from serving.lifecycle import AdapterLifecycle
from serving.protos import repository_pb2, repository_pb2_grpc
from serving.vision_backends import TorchVisionEncoder

VISION = VISION_MODEL


@pytest.fixture(scope="module")
def server(vision_server):
    return vision_server


def _recording(monkeypatch, cls, name: str) -> list[str]:
    """Names of the threads that call `cls.name` from now on."""
    threads: list[str] = []
    original = getattr(cls, name)

    def recorded(self, *args, **kwargs):
        threads.append(threading.current_thread().name)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(cls, name, recorded)
    return threads


def test_the_vision_model_runs_on_the_engine_thread(server, backbone, monkeypatch):
    threads = _recording(monkeypatch, TorchVisionEncoder, "encode")
    pixels = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    tensor = triton.InferInput("PIXELS", [2, 3, 32, 32], "FP32")
    tensor.set_data_from_numpy(pixels.numpy())
    with triton.InferenceServerClient(f"127.0.0.1:{server.port}") as client:
        result = client.infer(VISION, [tensor], client_timeout=30)
    assert threads == ["engine"]
    np.testing.assert_array_equal(result.as_numpy("FEATURES"),
                                  backbone.encode_images(pixels).numpy())


def test_repository_changes_from_grpc_threads_run_on_the_engine_thread(server,
                                                                       monkeypatch):
    changes = [_recording(monkeypatch, AdapterLifecycle, name)
               for name in ("_activate", "_set_pin", "_deactivate")]
    with triton.InferenceServerClient(f"127.0.0.1:{server.port}") as client:
        client.load_model("alpha")
        client.unload_model("gamma")
        client.load_model("gamma")
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        repo = repository_pb2_grpc.RepositoryStub(channel)
        assert repo.Pin(repository_pb2.PinRequest(name="beta"), timeout=30).adapter.pinned
        assert not repo.Unpin(repository_pb2.PinRequest(name="beta"),
                              timeout=30).adapter.pinned
    assert changes == [["engine", "engine"], ["engine", "engine"], ["engine"]]
