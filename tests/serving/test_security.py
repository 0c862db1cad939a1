"""Bearer-token auth and TLS / mutual TLS over a real localhost gRPC server.

A refused call must end UNAUTHENTICATED without reaching the servicer (its call counter
stays put). TLS certificates are made per test module with the `openssl` command.
"""

from __future__ import annotations

import shutil
import subprocess
from collections import Counter
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from serving.protos import inference_pb2, inference_pb2_grpc, repository_pb2, repository_pb2_grpc
from serving.security import (
    TokenAuthInterceptor,
    channel_credentials,
    read_token_file,
    server_credentials,
)

TOKEN = "s3cret-token"
PREDICT = inference_pb2.PredictRequest(task="vqa", text="what?")


class FakeRepository(repository_pb2_grpc.RepositoryServicer):
    """Counts the calls that reach it."""

    def __init__(self, calls: Counter[str]) -> None:
        self.calls = calls

    def Index(self, request, context):
        self.calls["Index"] += 1
        return repository_pb2.IndexResponse()

    def Load(self, request, context):
        self.calls["Load"] += 1
        return repository_pb2.LoadResponse(adapter=repository_pb2.AdapterState(name="a"))


class FakeInference(inference_pb2_grpc.InferenceServicer):
    """Answers "ok"; counts the calls that reach it."""

    def __init__(self, calls: Counter[str]) -> None:
        self.calls = calls

    def Predict(self, request, context):
        self.calls["Predict"] += 1
        return inference_pb2.PredictResponse(text="ok")

    def PredictStream(self, request, context):
        self.calls["PredictStream"] += 1
        yield inference_pb2.PredictChunk(token_text="ok", done=True)


def start_server(calls: Counter[str], interceptors=(),
                 credentials: grpc.ServerCredentials | None = None) -> tuple[grpc.Server, int]:
    """A started server with the fakes and a health service on 127.0.0.1; (server, port)."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4), interceptors=interceptors)
    repository_pb2_grpc.add_RepositoryServicer_to_server(FakeRepository(calls), server)
    inference_pb2_grpc.add_InferenceServicer_to_server(FakeInference(calls), server)
    health_pb2_grpc.add_HealthServicer_to_server(health.HealthServicer(), server)
    if credentials is None:
        port = server.add_insecure_port("127.0.0.1:0")
    else:
        port = server.add_secure_port("127.0.0.1:0", credentials)
    server.start()
    return server, port


@pytest.fixture(params=[False, True], ids=["inference-open", "inference-protected"])
def auth_server(request) -> Iterator[tuple[grpc.Channel, Counter[str], bool]]:
    """(channel, call counter, protect_inference) of a token-protected server."""
    calls: Counter[str] = Counter()
    interceptor = TokenAuthInterceptor({TOKEN, "other-token"}, protect_inference=request.param)
    server, port = start_server(calls, interceptors=[interceptor])
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        yield channel, calls, request.param
    server.stop(grace=None)


def bearer(token: str) -> tuple[tuple[str, str]]:
    return (("authorization", f"Bearer {token}"),)


@pytest.mark.parametrize("metadata", [(), bearer("wrong"), bearer(""), (("authorization", TOKEN),)],
                         ids=["missing", "wrong", "empty", "no-bearer-scheme"])
def test_repository_refuses_a_bad_token_before_the_handler(auth_server, metadata):
    channel, calls, _ = auth_server
    repository = repository_pb2_grpc.RepositoryStub(channel)
    for call, request in ((repository.Index, repository_pb2.IndexRequest()),
                          (repository.Load, repository_pb2.LoadRequest())):
        with pytest.raises(grpc.RpcError) as error:
            call(request, metadata=metadata, timeout=5)
        assert error.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert error.value.details()
    assert sum(calls.values()) == 0


def test_repository_accepts_any_configured_token(auth_server):
    channel, calls, _ = auth_server
    repository = repository_pb2_grpc.RepositoryStub(channel)
    assert repository.Load(repository_pb2.LoadRequest(), metadata=bearer(TOKEN),
                           timeout=5).adapter.name == "a"
    repository.Index(repository_pb2.IndexRequest(), metadata=bearer("other-token"), timeout=5)
    assert calls == Counter({"Load": 1, "Index": 1})


def test_inference_needs_a_token_only_when_protected(auth_server):
    channel, calls, protected = auth_server
    inference = inference_pb2_grpc.InferenceStub(channel)
    if not protected:
        assert inference.Predict(PREDICT, timeout=5).text == "ok"
        assert [c.token_text for c in inference.PredictStream(PREDICT, timeout=5)] == ["ok"]
        assert calls == Counter({"Predict": 1, "PredictStream": 1})
        return
    with pytest.raises(grpc.RpcError) as unary:
        inference.Predict(PREDICT, metadata=bearer("wrong"), timeout=5)
    with pytest.raises(grpc.RpcError) as stream:
        list(inference.PredictStream(PREDICT, timeout=5))
    assert unary.value.code() == stream.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert sum(calls.values()) == 0
    assert inference.Predict(PREDICT, metadata=bearer(TOKEN), timeout=5).text == "ok"
    assert calls == Counter({"Predict": 1})


def test_health_is_always_open(auth_server):
    channel, _, _ = auth_server
    reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_which_methods_need_a_token():
    protected = TokenAuthInterceptor({TOKEN}, protect_inference=True)
    open_inference = TokenAuthInterceptor({TOKEN}, protect_inference=False)
    no_tokens = TokenAuthInterceptor(set(), protect_inference=True)
    methods = {"/vladapter.v1.Repository/Load": (True, True, False),
               "/vladapter.v1.Inference/Predict": (True, False, False),
               "/inference.GRPCInferenceService/ModelInfer": (True, False, False),
               "/grpc.health.v1.Health/Check": (False, False, False),
               "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo":
                   (False, False, False)}
    for method, expected in methods.items():
        got = tuple(i.requires_token(method) for i in (protected, open_inference, no_tokens))
        assert got == expected, method


def test_read_token_file(tmp_path):
    path = tmp_path / "tokens"
    path.write_text("# tokens of the ops team\n\nalpha\n  beta  # rotated 2024\n#gamma\n")
    assert read_token_file(path) == {"alpha", "beta"}
    path.write_text("# only a comment\n\n")
    with pytest.raises(ValueError, match="no token"):
        read_token_file(path)
    path.write_text("")
    with pytest.raises(ValueError, match="empty"):
        read_token_file(path)
    with pytest.raises(ValueError, match="missing-tokens"):
        read_token_file(tmp_path / "missing-tokens")


def test_credentials_name_the_missing_file(tmp_path):
    cert = tmp_path / "server.pem"
    cert.write_text("-----BEGIN CERTIFICATE-----\n")
    with pytest.raises(ValueError, match="server private key .*nokey.pem"):
        server_credentials(cert, tmp_path / "nokey.pem")
    with pytest.raises(ValueError, match="client CA .*ca.pem"):
        server_credentials(cert, cert, tmp_path / "ca.pem")
    with pytest.raises(ValueError, match="root CA .*root.pem"):
        channel_credentials(tmp_path / "root.pem")
    with pytest.raises(ValueError, match="together"):
        channel_credentials(cert, client_cert_path=cert)


def _openssl(*args: str | Path) -> None:
    subprocess.run(["openssl", *map(str, args)], check=True, capture_output=True, timeout=30)


def _signed_cert(directory: Path, name: str, extensions: str) -> None:
    """`name`.key / `name`.pem: an EC key and a certificate signed by ca.pem."""
    (directory / f"{name}.ext").write_text(extensions)
    _openssl("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
             "-nodes", "-keyout", directory / f"{name}.key", "-out", directory / f"{name}.csr",
             "-subj", f"/CN={name}")
    _openssl("x509", "-req", "-in", directory / f"{name}.csr", "-CA", directory / "ca.pem",
             "-CAkey", directory / "ca.key", "-CAcreateserial", "-days", "1",
             "-extfile", directory / f"{name}.ext", "-out", directory / f"{name}.pem")


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Path:
    """A throwaway CA, a server certificate for localhost / 127.0.0.1 and a client cert."""
    if shutil.which("openssl") is None:
        pytest.skip("TLS tests need the openssl command (the cryptography package is not "
                    "installed either)")
    directory = tmp_path_factory.mktemp("pki")
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
             "-nodes", "-keyout", directory / "ca.key", "-out", directory / "ca.pem",
             "-days", "1", "-subj", "/CN=vladapter test CA",
             "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    _signed_cert(directory, "localhost", "subjectAltName=DNS:localhost,IP:127.0.0.1\n"
                 "extendedKeyUsage=serverAuth\n")
    _signed_cert(directory, "client", "extendedKeyUsage=clientAuth\n")
    return directory


def _predict_over(port: int, credentials: grpc.ChannelCredentials | None) -> str:
    """Predict's text over a fresh channel (TLS with `credentials`, else plaintext)."""
    target = f"127.0.0.1:{port}"
    channel = (grpc.secure_channel(target, credentials) if credentials is not None
               else grpc.insecure_channel(target))
    with channel:
        return inference_pb2_grpc.InferenceStub(channel).Predict(PREDICT, timeout=5).text


def test_tls_channel_works_and_plaintext_fails(pki):
    calls: Counter[str] = Counter()
    server, port = start_server(calls, credentials=server_credentials(
        pki / "localhost.pem", pki / "localhost.key"))
    try:
        assert _predict_over(port, channel_credentials(pki / "ca.pem")) == "ok"
        with pytest.raises(grpc.RpcError) as error:
            _predict_over(port, None)
        assert error.value.code() == grpc.StatusCode.UNAVAILABLE
        assert calls == Counter({"Predict": 1})
    finally:
        server.stop(grace=None)


def test_mutual_tls_requires_a_client_certificate(pki):
    calls: Counter[str] = Counter()
    server, port = start_server(calls, credentials=server_credentials(
        pki / "localhost.pem", pki / "localhost.key", client_ca_path=pki / "ca.pem"))
    try:
        with pytest.raises(grpc.RpcError) as error:
            _predict_over(port, channel_credentials(pki / "ca.pem"))
        assert error.value.code() == grpc.StatusCode.UNAVAILABLE
        assert calls == Counter()
        with_client_cert = channel_credentials(pki / "ca.pem", pki / "client.pem",
                                               pki / "client.key")
        assert _predict_over(port, with_client_cert) == "ok"
    finally:
        server.stop(grace=None)
