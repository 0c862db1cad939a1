"""The services Ray Serve's gRPC proxy serves (`grpc_options.grpc_servicer_functions`).

Ray Serve registers each service on its proxy through an `add_...Servicer_to_server`
function given by import path, then replaces every handler's behaviour with a call to the
replica method of the RPC's name (Predict, Load, ModelInfer, ...; serving.fleet.replica).
The functions here register ours with two adaptations, so a client sees the codes of the
single server:

- request deserializers that never raise (`serving.decoding.tolerant`): bytes that do not
  parse reach the replica as `Undecodable` and answer INVALID_ARGUMENT naming the field,
  instead of the proxy's INTERNAL "Exception deserializing request!";
- a call whose replica died under it (killed, its node lost) answers UNAVAILABLE, which
  clients retry, instead of the proxy's INTERNAL "The actor died unexpectedly ...". The
  proxy's behaviours are wrapped as its server builds them (`service_handler_factory` of
  Ray Serve's gRPCGenericServer, ray[serve]==2.60.0).
"""

from __future__ import annotations

import inspect
import re
import sys
from collections.abc import Callable
from typing import Any

import grpc
from tritonclient.grpc import service_pb2, service_pb2_grpc

from serving.decoding import tolerant
from serving.protos import inference_pb2_grpc, repository_pb2_grpc

SERVICER_FUNCTIONS = [f"{__name__}.{name}"
                      for name in ("add_inference", "add_repository", "add_kserve")]
# How Ray reports a call whose actor is gone (RayActorError, ActorDiedError,
# ActorUnavailableError), which the proxy answers INTERNAL.
REPLICA_GONE = re.compile(r"The actor (died|is dead|is temporarily unavailable)")


def name_kserve_messages() -> None:
    """tritonclient builds its KServe messages under the module name `grpc_service_pb2`,
    which no import provides; Ray Serve pickles each request from the proxy to a replica by
    class reference, so both processes need that name (called on import of this module and
    of serving.fleet.replica)."""
    sys.modules.setdefault(service_pb2.ModelInferRequest.__module__, service_pb2)


name_kserve_messages()


def _retryable(context: Any) -> None:
    """INTERNAL because the replica is gone -> UNAVAILABLE (the call may be retried)."""
    details = context.details() or ""
    if context.code() == grpc.StatusCode.INTERNAL and REPLICA_GONE.search(details):
        context.set_code(grpc.StatusCode.UNAVAILABLE)
        context.set_details("the replica serving this call stopped before answering; "
                            f"retry ({details.splitlines()[0]})")


def _gone_is_unavailable(behaviour: Callable) -> Callable:
    """The proxy's behaviour for one RPC kind, with `_retryable` applied to its status."""
    if inspect.isasyncgenfunction(behaviour):
        async def stream(request: Any, context: Any):
            async for message in behaviour(request, context):
                yield message
            _retryable(context)
        return stream

    async def unary(request: Any, context: Any):
        response = await behaviour(request, context)
        _retryable(context)
        return response
    return unary


class _ProxyServer:
    """Ray Serve's proxy server as the generated `add_...` functions see it."""

    def __init__(self, server: Any):
        self._server = server
        factory = server.service_handler_factory
        if not getattr(factory, "vladapter", False):
            def wrapped(service_method: str, streaming_type: Any) -> Callable:
                return _gone_is_unavailable(factory(service_method=service_method,
                                                    streaming_type=streaming_type))
            wrapped.vladapter = True
            server.service_handler_factory = wrapped

    @staticmethod
    def _handler(handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        return handler._replace(request_deserializer=tolerant(handler.request_deserializer))

    def add_generic_rpc_handlers(self, generic_handlers: Any) -> None:
        for generic in generic_handlers:
            generic._method_handlers = {method: self._handler(handler) for method, handler
                                        in generic._method_handlers.items()}
        self._server.add_generic_rpc_handlers(generic_handlers)

    def add_registered_method_handlers(self, service: str, handlers: dict[str, Any]) -> None:
        self._server.add_registered_method_handlers(
            service, {method: self._handler(handler) for method, handler in handlers.items()})


def _for_proxy(add: Callable[[Any, Any], None]) -> Callable[[Any, Any], None]:
    def add_to_proxy(servicer: Any, server: Any) -> None:
        add(servicer, _ProxyServer(server))
    return add_to_proxy


add_inference = _for_proxy(inference_pb2_grpc.add_InferenceServicer_to_server)
add_repository = _for_proxy(repository_pb2_grpc.add_RepositoryServicer_to_server)
add_kserve = _for_proxy(service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server)
