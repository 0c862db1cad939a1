"""Transport security and bearer-token auth for the gRPC server and its clients.

Two independent layers:

- TLS / mutual TLS: `server_credentials` for `server.add_secure_port`, and
  `channel_credentials` for `grpc.secure_channel`. With a client CA the server refuses any
  client that does not present a certificate signed by it.
- Bearer tokens: `TokenAuthInterceptor` checks the `authorization: Bearer <token>` metadata
  of each call before its handler runs. Which services need a token:

      /vladapter.v1.Repository/*          always (it changes what is loaded)
      /inference.GRPCInferenceService/RepositoryModelLoad, .../RepositoryModelUnload
                                          always (the same, over KServe v2)
      /vladapter.v1.Inference/*           only with protect_inference
      /inference.GRPCInferenceService/*   only with protect_inference (KServe v2)
      /grpc.health.v1.Health/*            never (load balancers probe it)
      /grpc.reflection.*                  never

  Tokens are compared with `hmac.compare_digest`, so the time a check takes does not tell a
  caller how much of a token was right. A refused call never reaches its handler.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc

REPOSITORY_PREFIX = "/vladapter.v1.Repository/"
KSERVE_REPOSITORY_METHODS = ("/inference.GRPCInferenceService/RepositoryModelLoad",
                             "/inference.GRPCInferenceService/RepositoryModelUnload")
INFERENCE_PREFIXES = ("/vladapter.v1.Inference/", "/inference.GRPCInferenceService/")
OPEN_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")
BEARER = "bearer "


def _read_file(path: str | Path, what: str) -> bytes:
    """The bytes of `path`; ValueError naming the file and its role when it cannot be read."""
    try:
        data = Path(path).read_bytes()
    except OSError as error:
        raise ValueError(f"cannot read {what} {str(path)!r}: {error.strerror or error}") from None
    if not data.strip():
        raise ValueError(f"{what} {str(path)!r} is empty")
    return data


def server_credentials(cert_path: str | Path, key_path: str | Path,
                       client_ca_path: str | Path | None = None) -> grpc.ServerCredentials:
    """TLS credentials of the server: its PEM certificate chain and private key.

    With `client_ca_path` (PEM bundle of the CA that signs client certificates) the server
    asks for and requires a client certificate: mutual TLS.
    """
    certificate = _read_file(cert_path, "server certificate")
    key = _read_file(key_path, "server private key")
    client_ca = _read_file(client_ca_path, "client CA") if client_ca_path is not None else None
    return grpc.ssl_server_credentials([(key, certificate)], root_certificates=client_ca,
                                       require_client_auth=client_ca is not None)


def channel_credentials(root_cert_path: str | Path | None = None,
                        client_cert_path: str | Path | None = None,
                        client_key_path: str | Path | None = None) -> grpc.ChannelCredentials:
    """TLS credentials of a client channel.

    `root_cert_path`: the CA that signed the server (None: the system roots). A client
    certificate and key, for mutual TLS, must come together.
    """
    if (client_cert_path is None) != (client_key_path is None):
        raise ValueError("a client certificate and a client key must be given together")
    root = _read_file(root_cert_path, "root CA") if root_cert_path is not None else None
    certificate = key = None
    if client_cert_path is not None and client_key_path is not None:
        certificate = _read_file(client_cert_path, "client certificate")
        key = _read_file(client_key_path, "client private key")
    return grpc.ssl_channel_credentials(root_certificates=root, private_key=key,
                                        certificate_chain=certificate)


def read_token_file(path: str | Path) -> set[str]:
    """The tokens in `path`: one per line; blank lines and `#` comments are ignored.

    A file without any token is an error: it would otherwise lock every protected method.
    """
    text = _read_file(path, "token file").decode("utf-8")
    tokens = {line.split("#", 1)[0].strip() for line in text.splitlines()}
    tokens.discard("")
    if not tokens:
        raise ValueError(f"token file {str(path)!r} holds no token")
    return tokens


def _abort_handler(handler: grpc.RpcMethodHandler, message: str) -> grpc.RpcMethodHandler:
    """A handler of the same kind as `handler` whose call ends UNAUTHENTICATED at once."""

    def abort(_request: Any, context: grpc.ServicerContext) -> None:
        context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    deserializer = handler.request_deserializer
    serializer = handler.response_serializer
    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(abort, deserializer, serializer)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(abort, deserializer, serializer)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(abort, deserializer, serializer)
    return grpc.unary_unary_rpc_method_handler(abort, deserializer, serializer)


class TokenAuthInterceptor(grpc.ServerInterceptor):
    """Refuses calls to protected methods without a valid `authorization: Bearer` token.

    Args:
        tokens: the accepted tokens; empty: nothing is protected.
        protect_inference: also protect inference (vladapter and KServe v2), not only the
            repository.
    """

    def __init__(self, tokens: set[str], protect_inference: bool) -> None:
        self._tokens = [token.encode("utf-8") for token in sorted(tokens)]
        self._protect_inference = protect_inference

    def requires_token(self, method: str) -> bool:
        """Whether a call of `method` (`/package.Service/Method`) must carry a token."""
        if not self._tokens or method.startswith(OPEN_PREFIXES):
            return False
        if method.startswith(REPOSITORY_PREFIX) or method in KSERVE_REPOSITORY_METHODS:
            return True
        return self._protect_inference and method.startswith(INFERENCE_PREFIXES)

    def refusal(self, metadata: tuple[tuple[str, Any], ...] | None) -> str | None:
        """Why the call's metadata is refused, or None when it carries a valid token."""
        values = [value for key, value in metadata or () if key == "authorization"]
        if not values:
            return "missing authorization metadata (expected 'Bearer <token>')"
        value = values[0] if isinstance(values[0], str) else values[0].decode("latin-1")
        if not value.lower().startswith(BEARER):
            return "authorization metadata must be 'Bearer <token>'"
        presented = value[len(BEARER):].strip().encode("utf-8")
        # Compare with every token, without stopping at a match: constant work per call.
        matched = False
        for token in self._tokens:
            matched |= hmac.compare_digest(presented, token)
        return None if matched else "invalid bearer token"

    def intercept_service(
            self, continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
            handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        """The real handler for an allowed call, an UNAUTHENTICATED one otherwise."""
        handler = continuation(handler_call_details)
        if handler is None or not self.requires_token(handler_call_details.method):
            return handler
        refusal = self.refusal(handler_call_details.invocation_metadata)
        return handler if refusal is None else _abort_handler(handler, refusal)
