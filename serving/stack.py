"""One serving stack, built by one function for every transport.

    build_stack(config)  ->  ServingStack: the backbone on its device, the adapter tiers
                             (AdapterStore: registry -> host; SlotTable: host -> device),
                             the engine and its adapter lifecycle, the vision cache and
                             encoder, the metrics and the protocol servicers

`serving.server.Server` puts a gRPC server around one stack; a Ray Serve replica
(`serving.fleet.replica`) holds one too and answers through Ray Serve's gRPC proxy. Both
build it here, so a replica behaves as the single server does.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from adapters_registry import Registry
from modeling.backbone import VLBackbone
from modeling.families import load_backbone as load_any_backbone
from modeling.inputs import image_processor
from modeling.methods.base import BackboneFacts
from modeling.tasks import TASKS, choice_label
from modeling.tokenizer import build_word_tokenizer
from serving.adapter_store import AdapterStore
from serving.config import ServeConfig
from serving.engine import Engine
from serving.kserve import KServeServicer, VisionModel
from serving.kserve_stats import ModelStats
from serving.kserve_tensors import vision_specs
from serving.lifecycle import AdapterLifecycle
from serving.limits import RequestChecker
from serving.servicer import InferenceServicer, RepositoryServicer
from serving.slot_table import SlotTable
from serving.vision_backends import VisionEncoder, make_vision_encoder, require_vit_tower
from serving.vision_cache import VisionCache

log = logging.getLogger("vladapter.serving")

# A preset backbone has random weights and no tokenizer of its own: these words cover the
# task prompts, the video-QA markers and the candidate labels.
PRESET_WORDS = [w for spec in TASKS.values() for w in spec.prompt.replace(":", " ").split()] + [
    ":", "[", "]", "subs", "q", "choices", "true", "false", "yes", "no", "what", "is", "the",
    "a", "of", "color", "shape", "how", "many", *[choice_label(i) for i in range(10)],
    *[str(i) for i in range(10)]]

# What the Repository-side servicers change adapters through: the lifecycle itself on one
# server; in a fleet, a view that reaches every replica (serving.fleet.adapters).
AdapterControl = Callable[[AdapterLifecycle], Any]


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
    """A backbone folder of any family (with its tokenizer) or a preset name (random
    weights, seeded, with a word tokenizer over PRESET_WORDS)."""
    backbone = load_any_backbone(
        config.backbone, seed=config.seed,
        preset_tokenizer=lambda settings: build_word_tokenizer(
            PRESET_WORDS, settings.lm_type, settings.lm.get("vocab_size")))
    if backbone.tokenizer is None:
        raise ValueError(f"backbone {config.backbone} has no tokenizer/ folder")
    return backbone


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
    require_vit_tower(backbone, "--serve-vision-model")
    inputs, outputs = vision_specs(vision.image_size, backbone.config.tokens_per_image,
                                   backbone.config.feat_dim)
    return encoder, VisionModel(config.serve_vision_model, encoder.name, inputs, outputs)


def _metrics():
    try:
        from serving.metrics import ServerMetrics
    except ImportError:  # the metrics module is optional
        return None
    return ServerMetrics()


@dataclass
class ServingStack:
    """Everything one backbone serves with, without a transport (see `build_stack`).

    adapters: the lifecycle, the one owner of active versions and pins (serving.lifecycle);
    the servicers change them through `control(adapters)` (the lifecycle itself unless a
    fleet replica passes its fleet-wide view).
    """

    config: ServeConfig
    backbone: VLBackbone
    metrics: Any  # serving.metrics.ServerMetrics, or None without prometheus_client
    registry: Registry
    fingerprint: str
    store: AdapterStore
    slot_table: SlotTable
    vision: VisionCache
    vision_encoder: VisionEncoder | None
    engine: Engine
    adapters: AdapterLifecycle
    inference: InferenceServicer
    repository: RepositoryServicer
    kserve: KServeServicer
    kserve_stats: ModelStats

    def ready(self) -> bool:
        """Serving: the engine thread runs and the transport marked it ready (kserve.ready,
        which KServe's ServerReady reports too)."""
        return self.engine.running() and self.kserve.ready.is_set()

    def stop(self, grace: float) -> None:
        """Not ready any more; finish queued and running requests (up to `grace` s)."""
        self.kserve.ready.clear()
        self.engine.stop(timeout=grace)
        self.store.close()


def _event(metrics, tier: str):
    if metrics is None:
        return None
    return lambda event: metrics.cache_event(tier, event)


def _tiers(config: ServeConfig, backbone: VLBackbone, fingerprint: str, metrics,
           registry: Registry) -> tuple[AdapterStore, SlotTable]:
    """(host tier, device tier) of `backbone` (already on its device and in its dtype)."""
    on_load = None if metrics is None else metrics.adapter_load
    store = AdapterStore(registry, BackboneFacts.of(backbone), fingerprint,
                         config.host_cache_bytes, on_event=_event(metrics, "host"),
                         on_load=on_load, max_adapters=config.host_adapters)
    parameter = next(backbone.parameters())
    like = torch.zeros((), device=parameter.device, dtype=parameter.dtype)
    slot_table = SlotTable(config.device_slots, config.cache_bytes, backbone.frozen_tensors(),
                           backbone.config.d_model, like, on_event=_event(metrics, "device"))
    return store, slot_table


def build_stack(config: ServeConfig, backbone: VLBackbone | None = None,
                control: AdapterControl | None = None) -> ServingStack:
    """Build every serving part of `config` (not started: `stack.engine.start()`).

    backbone: an already built one (tests); otherwise loaded from `config.backbone`.
    control(lifecycle): what Load / Unload / Pin of both protocols go through (None: the
    lifecycle).
    """
    backbone = backbone if backbone is not None else load_backbone(config)
    # The checkpoint's fingerprint as loaded, before the cast: adapters were trained on those
    # weights, and serving them in bf16 (CUDA's default) must not read as another backbone.
    fingerprint = backbone.fingerprint()
    device, dtype = device_and_dtype(config)
    backbone = backbone.to(device=device, dtype=dtype).eval()
    metrics = _metrics()
    registry = Registry(config.registry)
    store, slot_table = _tiers(config, backbone, fingerprint, metrics, registry)
    vision = VisionCache(config.vision_cache_entries)
    vision_encoder, vision_model = vision_parts(config, backbone)
    engine = Engine(backbone, store, slot_table, vision, config.max_batch, config.max_queue,
                    config.max_queue_delay_ms, metrics,
                    vision_encoder, config.load_on_demand)
    lifecycle = engine.adapters  # the one owner of what serves (lifecycle.py)
    controlled = lifecycle if control is None else control(lifecycle)
    visual = backbone.config.vision
    checker = RequestChecker(config.limits, backbone.tokenizer,
                             image_processor(visual.image_size, visual.tower) if visual
                             else None, backbone.config)
    inference = InferenceServicer(engine, controlled, checker)
    kserve_stats = ModelStats()
    kserve = KServeServicer(engine, controlled, inference, checker, kserve_stats,
                            vision_model, config.max_queue_delay_ms)
    return ServingStack(config, backbone, metrics, registry, fingerprint, store, slot_table,
                        vision, vision_encoder, engine, lifecycle, inference,
                        RepositoryServicer(controlled), kserve, kserve_stats)
