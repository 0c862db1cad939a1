"""Build and run the gRPC server: one backbone, the adapter tiers, the engine, the services.

    Server(config).start()      binds the port, starts the engine, loads `config.load`
    Server.stop(grace)          health NOT_SERVING, refuse new calls, drain, stop the engine
    serve(config)               the CLI entry: runs until SIGTERM / SIGINT, then drains, 0

The stack it serves (backbone, adapter tiers, engine, servicers) comes from
`serving.stack.build_stack`, the builder a Ray Serve replica uses too (serving.fleet).
Services: `vladapter.v1.Inference`, `vladapter.v1.Repository`, KServe v2
`inference.GRPCInferenceService` (serving.kserve), `grpc.health.v1.Health` and server
reflection; TLS and bearer tokens come from `serving.security`; request bytes that do
not parse answer INVALID_ARGUMENT on every method (`serving.decoding`). The CLIP tower runs on the
`--vision-backend` (serving.vision_backends) and may itself be served as a KServe model.
"""

from __future__ import annotations

import logging
import threading
from concurrent import futures

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from tritonclient.grpc import service_pb2_grpc

from adapters_registry.names import parse_ref
from modeling.backbone import VLBackbone
from modeling.host_memory import keep_freed_memory
from serving.config import ServeConfig
from serving.decoding import DecodeErrorInterceptor
from serving.kserve import SERVICE as KSERVE
from serving.protos import inference_pb2, inference_pb2_grpc, repository_pb2, repository_pb2_grpc
from serving.signals import stop_requested
from serving.stack import build_stack

log = logging.getLogger("vladapter.serving")

INFERENCE = inference_pb2.DESCRIPTOR.services_by_name["Inference"].full_name
REPOSITORY = repository_pb2.DESCRIPTOR.services_by_name["Repository"].full_name


class Server:
    """One serving process: a serving stack (serving.stack) and the gRPC server around it."""

    def __init__(self, config: ServeConfig, backbone: VLBackbone | None = None):
        """backbone: an already built one (tests); otherwise loaded from `config.backbone`."""
        self.config = config
        self.stack = stack = build_stack(config, backbone)
        self.backbone, self.metrics, self.registry = stack.backbone, stack.metrics, stack.registry
        self.fingerprint, self.store, self.slot_table = (stack.fingerprint, stack.store,
                                                         stack.slot_table)
        self.vision, self.vision_encoder = stack.vision, stack.vision_encoder
        self.engine, self.adapters = stack.engine, stack.adapters
        self.inference, self.repository = stack.inference, stack.repository
        self.kserve, self.kserve_stats = stack.kserve, stack.kserve_stats
        self.health = health.HealthServicer()
        self.grpc_server = self._build_grpc()
        self.port = self._bind()
        self._stopped = threading.Event()

    def _build_grpc(self) -> grpc.Server:
        interceptors: list[grpc.ServerInterceptor] = []
        if self.config.token_file:
            from serving.security import TokenAuthInterceptor, read_token_file
            interceptors.append(TokenAuthInterceptor(read_token_file(self.config.token_file),
                                                     self.config.protect_inference))
        # Innermost, so a refused token still wins over bytes that do not parse.
        interceptors.append(DecodeErrorInterceptor())
        # gRPC's own cap sits above ours so oversized requests get our INVALID_ARGUMENT.
        cap = 2 * self.config.limits.max_message_bytes + 1024 * 1024
        server = grpc.server(futures.ThreadPoolExecutor(self.config.workers,
                                                        thread_name_prefix="grpc"),
                             interceptors=interceptors,
                             options=[("grpc.max_receive_message_length", cap),
                                      ("grpc.max_send_message_length", cap)])
        inference_pb2_grpc.add_InferenceServicer_to_server(self.inference, server)
        repository_pb2_grpc.add_RepositoryServicer_to_server(self.repository, server)
        service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(self.kserve, server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        reflection.enable_server_reflection(
            (INFERENCE, REPOSITORY, KSERVE, health.SERVICE_NAME, reflection.SERVICE_NAME),
            server)
        return server

    def _bind(self) -> int:
        address = f"{self.config.host}:{self.config.port}"
        if self.config.tls_cert or self.config.tls_key:
            from serving.security import server_credentials
            credentials = server_credentials(self.config.tls_cert, self.config.tls_key,
                                             self.config.tls_client_ca)
            port = self.grpc_server.add_secure_port(address, credentials)
        else:
            port = self.grpc_server.add_insecure_port(address)
        if port == 0:
            raise OSError(f"cannot bind {address}")
        return port

    def _set_health(self, status) -> None:
        for service in ("", INFERENCE, REPOSITORY, KSERVE):
            self.health.set(service, status)
        if status == health_pb2.HealthCheckResponse.SERVING:
            self.kserve.ready.set()
        else:
            self.kserve.ready.clear()

    def start(self) -> Server:
        """Start the engine, load the configured adapters, then accept calls."""
        self.engine.start()
        for text in self.config.load:
            ref = parse_ref(text)  # InvalidName: the CLI's one line and exit 2
            version = self.adapters.load(ref.name, ref.version, ref.alias)
            log.info("loaded %s:%d at start", ref.name, version)
        self.grpc_server.start()
        if self.metrics is not None and self.config.metrics_port is not None:
            self.metrics.start_http(self.config.metrics_port)
        self._set_health(health_pb2.HealthCheckResponse.SERVING)
        log.info("serving on port %d (backbone %s, %s, %s)", self.port,
                 self.backbone.config.preset or self.config.backbone,
                 next(self.backbone.parameters()).device, next(self.backbone.parameters()).dtype)
        return self

    def stop(self, grace: float | None = None) -> None:
        """Stop accepting calls, let in-flight ones finish (up to `grace` s), stop the engine."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        grace = self.config.grace_s if grace is None else grace
        log.info("shutting down: draining %d in-flight request(s)", self.engine.in_flight())
        self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        self.grpc_server.stop(grace).wait()
        self.stack.stop(grace)
        log.info("stopped")

    def wait(self) -> None:
        self.grpc_server.wait_for_termination()


def serve(config: ServeConfig) -> int:
    """Run until SIGTERM or SIGINT, then drain in-flight calls and return 0."""
    keep_freed_memory()  # a step's activations reused by the next, not faulted in again
    server = Server(config).start()
    done = stop_requested()
    print(f"adapter-serve: listening on port {server.port}", flush=True)
    done.wait()
    server.stop()
    return 0
