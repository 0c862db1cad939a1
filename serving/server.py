"""Build and run the gRPC server: one backbone, the adapter tiers, the engine, the services.

    Server(config).start()      binds the port, starts the engine, loads `config.load`
    Server.stop(grace)          health NOT_SERVING, refuse new calls, drain, stop the engine
    serve(config)               the CLI entry: runs until SIGTERM / SIGINT, then drains, 0

Services: `vladapter.v1.Inference`, `vladapter.v1.Repository`, KServe v2
`inference.GRPCInferenceService` (serving.kserve), `grpc.health.v1.Health` and server
reflection; TLS and bearer tokens come from `serving.security`; request bytes that do
not parse answer INVALID_ARGUMENT on every method (`serving.decoding`). The CLIP tower runs on the
`--vision-backend` (serving.vision_backends) and may itself be served as a KServe model.
"""

from __future__ import annotations

import logging
import signal
import threading
from concurrent import futures
from pathlib import Path

import grpc
import torch
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from tritonclient.grpc import service_pb2_grpc

from adapters_registry import Registry
from adapters_registry.names import parse_ref
from modeling.backbone import VLBackbone
from modeling.config import preset
from modeling.inputs import image_processor
from modeling.methods.base import BackboneFacts
from modeling.tasks import TASKS
from modeling.tokenizer import build_word_tokenizer
from serving.adapter_store import AdapterStore
from serving.config import ServeConfig
from serving.decoding import DecodeErrorInterceptor
from serving.engine import Engine
from serving.kserve import SERVICE as KSERVE
from serving.kserve import KServeServicer, VisionModel
from serving.kserve_stats import ModelStats
from serving.kserve_tensors import vision_specs
from serving.limits import RequestChecker
from serving.protos import inference_pb2, inference_pb2_grpc, repository_pb2, repository_pb2_grpc
from serving.servicer import InferenceServicer, RepositoryServicer
from serving.slot_table import SlotTable
from serving.vision_backends import VisionEncoder, make_vision_encoder
from serving.vision_cache import VisionCache

log = logging.getLogger("vladapter.serving")

INFERENCE = inference_pb2.DESCRIPTOR.services_by_name["Inference"].full_name
REPOSITORY = repository_pb2.DESCRIPTOR.services_by_name["Repository"].full_name
# A preset backbone has random weights and no tokenizer of its own: these words cover the
# task prompts, the video-QA markers and the candidate labels.
PRESET_WORDS = [w for spec in TASKS.values() for w in spec.prompt.replace(":", " ").split()] + [
    ":", "[", "]", "subs", "q", "choices", "true", "false", "yes", "no", "what", "is", "the",
    "a", "of", "color", "shape", "how", "many", *[f"a{i}" for i in range(10)],
    *[str(i) for i in range(10)]]


def device_and_dtype(config: ServeConfig) -> tuple[torch.device, torch.dtype]:
    """auto: CUDA in bfloat16 (float16 where bf16 is unsupported) if present, else CPU fp32."""
    name = config.device
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if config.dtype != "auto":
        return device, getattr(torch, config.dtype)
    if device.type == "cuda":
        return device, torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return device, torch.float32


def load_backbone(config: ServeConfig) -> VLBackbone:
    """A backbone folder (with its tokenizer) or a preset name (random weights, seeded)."""
    if Path(config.backbone).is_dir():
        backbone = VLBackbone.from_pretrained(config.backbone)
        if backbone.tokenizer is None:
            raise ValueError(f"backbone {config.backbone} has no tokenizer/ folder")
        return backbone
    settings = preset(config.backbone)
    tokenizer = build_word_tokenizer(PRESET_WORDS, settings.lm_type,
                                     settings.lm.get("vocab_size"))
    return VLBackbone.from_config(settings, seed=config.seed, tokenizer=tokenizer)


def vision_parts(config: ServeConfig, backbone: VLBackbone
                 ) -> tuple[VisionEncoder | None, VisionModel | None]:
    """The configured vision encoder (None: the backbone takes only features) and the
    KServe vision model when `--serve-vision-model` asks for one."""
    vision = backbone.config.vision
    if vision is None:
        if config.serve_vision_model or config.vision_backend != "torch":
            raise ValueError(f"backbone {config.backbone} has no vision tower: "
                             "--vision-backend / --serve-vision-model do not apply")
        return None, None
    encoder = make_vision_encoder(config.vision_backend, backbone, onnx_path=config.onnx_path,
                                  triton_url=config.triton_url,
                                  triton_model=config.triton_model)
    log.info("vision backend: %s", encoder.name)
    if not config.serve_vision_model:
        return encoder, None
    inputs, outputs = vision_specs(vision.image_size, backbone.config.image_grid ** 2,
                                   backbone.config.feat_dim)
    return encoder, VisionModel(config.serve_vision_model, encoder.name, inputs, outputs)


def _metrics(config: ServeConfig):
    try:
        from serving.metrics import ServerMetrics
    except ImportError:  # the metrics module is optional
        return None
    return ServerMetrics()


class Server:
    """One serving process: backbone, tiers, engine and the gRPC server around them."""

    def __init__(self, config: ServeConfig, backbone: VLBackbone | None = None):
        """backbone: an already built one (tests); otherwise loaded from `config.backbone`."""
        self.config = config
        backbone = backbone if backbone is not None else load_backbone(config)
        device, dtype = device_and_dtype(config)
        self.backbone = backbone.to(device=device, dtype=dtype).eval()
        self.metrics = _metrics(config)
        self.registry = Registry(config.registry)
        facts = BackboneFacts.of(self.backbone)
        self.fingerprint = self.backbone.fingerprint()
        self.store = AdapterStore(self.registry, facts, self.fingerprint,
                                  config.host_cache_bytes, on_event=self._event("host"),
                                  on_load=self._on_load)
        like = torch.zeros((), device=device, dtype=dtype)
        self.slot_table = SlotTable(config.device_slots, config.cache_bytes,
                                    self.backbone.frozen_tensors(),
                                    self.backbone.config.d_model, like,
                                    on_event=self._event("device"))
        self.vision = VisionCache(config.vision_cache_entries)
        self.vision_encoder, vision_model = vision_parts(config, self.backbone)
        self.engine = Engine(self.backbone, self.store, self.slot_table, self.vision,
                             config.max_batch, config.max_queue, config.max_queue_delay_ms,
                             config.limits.max_text_tokens, self.metrics, self.vision_encoder)
        self.adapters = self.engine.adapters  # the one owner of what serves (lifecycle.py)
        vision = self.backbone.config.vision
        checker = RequestChecker(config.limits, self.backbone.tokenizer,
                                 image_processor(vision.image_size) if vision else None,
                                 self.backbone.config.feat_dim, vision is not None)
        self.inference = InferenceServicer(self.engine, self.adapters, checker)
        self.repository = RepositoryServicer(self.adapters)
        self.kserve_stats = ModelStats()
        self.kserve = KServeServicer(self.engine, self.adapters, self.inference, checker,
                                     self.kserve_stats, vision_model, config.max_queue_delay_ms)
        self.health = health.HealthServicer()
        self.grpc_server = self._build_grpc()
        self.port = self._bind()
        self._stopped = threading.Event()

    def _event(self, tier: str):
        if self.metrics is None:
            return None
        return lambda event: self.metrics.cache_event(tier, event)

    def _on_load(self, seconds: float) -> None:
        if self.metrics is not None:
            self.metrics.adapter_load(seconds)

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
        self.engine.stop(timeout=grace)
        self.store.close()
        log.info("stopped")

    def wait(self) -> None:
        self.grpc_server.wait_for_termination()


def serve(config: ServeConfig) -> int:
    """Run until SIGTERM or SIGINT, then drain in-flight calls and return 0."""
    server = Server(config).start()
    done = threading.Event()

    def on_signal(signum, frame) -> None:
        log.info("received %s", signal.Signals(signum).name)
        done.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    print(f"adapter-serve: listening on port {server.port}", flush=True)
    done.wait()
    server.stop()
    return 0
