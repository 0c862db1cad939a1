"""`ServeConfig`: every server setting, from command-line flags and an optional YAML file.

Precedence: built-in defaults < the YAML file (`--config`) < flags given on the command
line. YAML keys are the field names below (`max_batch: 16`); limits sit under `limits:`
(`limits: {max_new_tokens: 32}`) or as flags (`--max-new-tokens 32`).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import yaml

from serving.limits import TEXT_BYTES_PER_TOKEN, Limits

MIB = 1024 * 1024


@dataclass(frozen=True)
class ServeConfig:
    """Server settings. Byte budgets in bytes; delays in milliseconds; grace in seconds."""

    registry: str = ".registry"
    backbone: str = "tiny"
    load: tuple[str, ...] = ()  # NAME[@ALIAS] or NAME[:VERSION]
    host: str = "[::]"
    port: int = 50051
    metrics_port: int | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_client_ca: str | None = None
    token_file: str | None = None
    protect_inference: bool = False
    device: str = "auto"  # auto, cpu, cuda, cuda:N
    dtype: str = "auto"  # auto (bf16 on CUDA, fp32 on CPU), float32, bfloat16, float16
    seed: int = 0  # random weights of a preset backbone
    max_batch: int = 8
    max_queue: int = 64
    max_queue_delay_ms: float = 5.0
    host_cache_bytes: int = 1024 * MIB
    cache_bytes: int = 512 * MIB  # accelerator tier
    device_slots: int = 16
    vision_cache_entries: int = 1024
    workers: int = 64  # gRPC threads: each waiting call holds one
    grace_s: float = 30.0  # how long SIGTERM waits for in-flight calls
    vision_backend: str = "torch"  # torch, onnxruntime or triton (serving.vision_backends)
    onnx_path: str | None = None  # --vision-backend onnxruntime: the exported tower
    triton_url: str | None = None  # --vision-backend triton: HOST:PORT of a KServe v2 server
    triton_model: str | None = None  # ... and the model there (PIXELS -> FEATURES)
    serve_vision_model: str | None = None  # host the tower as this KServe v2 model
    limits: Limits = field(default_factory=Limits)

    @classmethod
    def from_mapping(cls, data: dict[str, Any]) -> ServeConfig:
        """From a YAML-style mapping; an unknown key is a ValueError naming it."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown config key(s) {unknown}; expected some of "
                             f"{sorted(known)}")
        values = dict(data)
        if "limits" in values:
            limit_names = {f.name for f in fields(Limits)}
            bad = sorted(set(values["limits"] or {}) - limit_names)
            if bad:
                raise ValueError(f"unknown limit(s) {bad}; expected some of "
                                 f"{sorted(limit_names)}")
            values["limits"] = Limits(**(values["limits"] or {}))
        if "load" in values:
            values["load"] = _refs(values["load"])
        return cls(**values)


def _refs(value: str | list[str] | tuple[str, ...] | None) -> tuple[str, ...]:
    """`a,b@prod` or a list -> ("a", "b@prod")."""
    if not value:
        return ()
    items = value.split(",") if isinstance(value, str) else list(value)
    return tuple(item.strip() for item in items if item.strip())


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Every setting as a flag; defaults are suppressed so the YAML file can fill them."""
    add = parser.add_argument
    suppress = argparse.SUPPRESS
    add("--config", help="YAML file with any of these settings (flags override it)")
    add("--registry", default=suppress, help="registry root (path or fsspec URL)")
    add("--backbone", default=suppress, help="backbone folder or preset name (tiny, small, ...)")
    add("--load", default=suppress, help="adapters to serve at start: NAME[@ALIAS|:VERSION],...")
    add("--host", default=suppress, help="address to bind (default [::])")
    add("--port", type=int, default=suppress, help="gRPC port (default 50051; 0: any free)")
    add("--metrics-port", type=int, default=suppress, help="Prometheus /metrics port")
    add("--tls-cert", default=suppress, help="PEM certificate chain (with --tls-key)")
    add("--tls-key", default=suppress, help="PEM private key")
    add("--tls-client-ca", default=suppress, help="PEM CA: require client certificates")
    add("--token-file", default=suppress, help="bearer tokens, one a line (Repository calls)")
    add("--protect-inference", action="store_true", default=suppress,
        help="inference calls need a token too")
    add("--device", default=suppress, help="auto, cpu, cuda or cuda:N")
    add("--dtype", default=suppress, help="auto, float32, bfloat16 or float16")
    add("--seed", type=int, default=suppress, help="seed of a preset backbone's weights")
    add("--max-batch", type=int, default=suppress, help="requests decoded together "
        "(default 8; a beam request decodes one row per beam)")
    add("--max-queue", type=int, default=suppress, help="requests accepted and not yet "
        "running (queued or waiting for their adapter) before RESOURCE_EXHAUSTED (default 64)")
    add("--max-queue-delay-ms", type=float, default=suppress,
        help="how long an idle batcher waits to fill a batch (default 5)")
    add("--host-cache-bytes", type=int, default=suppress, help="host tier budget")
    add("--cache-bytes", type=int, default=suppress, help="accelerator tier budget")
    add("--device-slots", type=int, default=suppress, help="adapter sets on the accelerator")
    add("--vision-cache-entries", type=int, default=suppress, help="image features kept")
    add("--workers", type=int, default=suppress, help="gRPC worker threads")
    add("--grace-s", type=float, default=suppress, help="SIGTERM drain time")
    add("--vision-backend", choices=("torch", "onnxruntime", "triton"), default=suppress,
        help="where the CLIP tower runs (default torch)")
    add("--onnx-path", default=suppress, help="exported tower for --vision-backend onnxruntime "
        "(see `adapter-serve export-onnx`)")
    add("--triton-url", default=suppress, help="HOST:PORT of the KServe v2 / Triton gRPC "
        "server for --vision-backend triton")
    add("--triton-model", default=suppress, help="the vision model's name on that server")
    add("--serve-vision-model", nargs="?", const="clip_vision", default=suppress,
        metavar="NAME", help="also serve the tower as a KServe v2 model (PIXELS -> FEATURES; "
        "default name clip_vision)")
    for limit in fields(Limits):
        extra = f"; each text field may hold {TEXT_BYTES_PER_TOKEN} bytes per token" \
            if limit.name == "max_text_tokens" else ""
        add(f"--{limit.name.replace('_', '-')}", type=int, default=suppress,
            help=f"limit (default {limit.default}{extra})")


def from_args(args: argparse.Namespace) -> ServeConfig:
    """Defaults < YAML (`args.config`) < flags; raises ValueError on a bad file or key."""
    base = ServeConfig()
    if getattr(args, "config", None):
        path = Path(args.config)
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ValueError(f"cannot read config {path}: {exc}") from None
        if not isinstance(data, dict):
            raise ValueError(f"config {path} must be a mapping of settings")
        base = ServeConfig.from_mapping(data)
    given = {k: v for k, v in vars(args).items() if k != "config"}
    limit_names = {f.name for f in fields(Limits)}
    limits = {k: given.pop(k) for k in list(given) if k in limit_names}
    if "load" in given:
        given["load"] = _refs(given["load"])
    config = replace(base, **given)
    return replace(config, limits=replace(config.limits, **limits)) if limits else config
