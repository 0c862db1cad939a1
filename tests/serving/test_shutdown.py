"""Graceful shutdown: in-flight requests finish, new ones are refused; SIGTERM to the
`adapter-serve` process drains and exits 0."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading

import grpc
from serving_helpers import request_for, start_server

from serving.protos import inference_pb2_grpc


def _drain_stream(stub, message):
    """Open a stream, wait for its first token (so it is in flight), return the rest later."""
    call = stub.PredictStream(message, timeout=60)
    first = next(call)
    return first, call


def test_stop_drains_in_flight_requests(backbone, published):
    server = start_server(backbone, published)
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = inference_pb2_grpc.InferenceStub(channel)
        first, call = _drain_stream(stub, request_for("caption", seed=4, max_new_tokens=40))
        assert not first.done
        stopper = threading.Thread(target=server.stop, kwargs={"grace": 30})
        stopper.start()
        chunks = list(call)
        stopper.join()
    assert chunks[-1].done and chunks[-1].response.adapter_name == "alpha"
    assert server.engine.in_flight() == 0


def test_sigterm_drains_and_exits_zero(backbone, published, tmp_path):
    backbone.save_pretrained(tmp_path / "backbone")
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    process = subprocess.Popen(
        [sys.executable, "-m", "serving.cli", "--registry", published.root, "--backbone",
         str(tmp_path / "backbone"), "--load", "alpha@latest", "--host", "127.0.0.1",
         "--port", "0", "--grace-s", "30"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        line = process.stdout.readline()
        assert "listening on port" in line, process.stderr.read()
        port = int(line.rsplit(" ", 1)[1])
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = inference_pb2_grpc.InferenceStub(channel)
            first, call = _drain_stream(stub, request_for("caption", seed=4, max_new_tokens=40))
            process.send_signal(signal.SIGTERM)
            chunks = list(call)
        assert chunks[-1].done and chunks[-1].response.adapter_version == 2
        assert process.wait(timeout=60) == 0
        log = process.stderr.read()
        assert "received SIGTERM" in log and "stopped" in log
    finally:
        if process.poll() is None:
            process.kill()
