"""The services Ray Serve's gRPC proxy serves (`grpc_options.grpc_servicer_functions`).

Ray Serve registers each service on its proxy through an `add_...Servicer_to_server`
function given by import path, then replaces every handler's behaviour with a call to the
replica method of the RPC's name (Predict, Load, ModelInfer, ...; serving.fleet.replica).
It keeps the handlers' request deserializers: the ones registered here never raise
(`serving.decoding.tolerant`), so request bytes that do not parse reach the replica as
`Undecodable` and answer INVALID_ARGUMENT naming the field, as on the single server,
instead of the proxy's INTERNAL "Exception deserializing request!".
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import grpc
from tritonclient.grpc import service_pb2, service_pb2_grpc

from serving.decoding import tolerant
from serving.protos import inference_pb2_grpc, repository_pb2_grpc

SERVICER_FUNCTIONS = [f"{__name__}.{name}"
                      for name in ("add_inference", "add_repository", "add_kserve")]


def name_kserve_messages() -> None:
    """tritonclient builds its KServe messages under the module name `grpc_service_pb2`,
    which no import provides; Ray Serve pickles each request from the proxy to a replica by
    class reference, so both processes need that name (called on import of this module and
    of serving.fleet.replica)."""
    sys.modules.setdefault(service_pb2.ModelInferRequest.__module__, service_pb2)


name_kserve_messages()


class _TolerantServer:
    """Forwards handler registrations to Ray Serve's proxy server with never-raising
    request deserializers (the generated code registers each service both ways)."""

    def __init__(self, server: Any):
        self._server = server

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


def _tolerant(add: Callable[[Any, Any], None]) -> Callable[[Any, Any], None]:
    def add_to_proxy(servicer: Any, server: Any) -> None:
        add(servicer, _TolerantServer(server))
    return add_to_proxy


add_inference = _tolerant(inference_pb2_grpc.add_InferenceServicer_to_server)
add_repository = _tolerant(repository_pb2_grpc.add_RepositoryServicer_to_server)
add_kserve = _tolerant(service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server)
