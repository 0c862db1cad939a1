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

from modeling.cli_parser import positive_int
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
    host_adapters: int | None = None  # most adapter versions in host memory (None: bytes only)
    load_on_demand: bool = False  # a Predict for an adapter not loaded loads it
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
    # Many replicas (serving.fleet, Ray Serve): `port` is then the gRPC proxy's port.
    ray: bool = False  # deploy on Ray Serve instead of serving in this process
    ray_address: str | None = None  # a running Ray cluster (None: RAY_ADDRESS, else a new one)
    replicas: int = 1  # fixed replica count, unless min_replicas / max_replicas autoscale
    min_replicas: int | None = None
    max_replicas: int | None = None
    target_ongoing_requests: float | None = None  # autoscaling target (None: max_batch)
    replica_cpus: float = 1.0  # Ray resources each replica reserves
    replica_gpus: float = 0.0
    http_port: int = 8000  # Ray Serve's HTTP proxy (it always runs; nothing of ours uses it)
    fleet_sync_s: float = 60.0  # how long a Load waits for every replica to serve it
    limits: Limits = field(default_factory=Limits)

    def check_fleet(self) -> None:
        """ValueError naming the setting when the fleet settings do not fit together."""
        if self.replicas < 1:
            raise ValueError(f"--replicas must be at least 1, got {self.replicas}")
        low, high = self.min_replicas, self.max_replicas
        if (low is None) != (high is None):
            raise ValueError("--min-replicas and --max-replicas go together (autoscaling)")
        if low is not None and (not 0 <= low <= high or high < 1):
            raise ValueError(f"need 0 <= --min-replicas <= --max-replicas and 1 <= "
                             f"--max-replicas, got {low} and {high}")
        if self.replica_cpus < 0 or self.replica_gpus < 0:
            raise ValueError("--replica-cpus and --replica-gpus must not be negative")
        if self.fleet_sync_s <= 0:
            raise ValueError(f"--fleet-sync-s must be positive, got {self.fleet_sync_s}")
        if self.tls_cert or self.tls_key or self.tls_client_ca:
            raise ValueError("--tls-* do not apply with --ray: Ray Serve's gRPC proxy serves "
                             "plaintext (terminate TLS in front of it)")

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
    add("--host-adapters", type=positive_int, default=suppress, metavar="N",
        help="host tier: at most N adapter versions (least recently used, unpinned, idle "
             "ones leave first; default: --host-cache-bytes alone)")
    add("--load-on-demand", action="store_true", default=suppress,
        help="a Predict (both protocols) for an adapter that is not loaded but is in the "
             "registry loads it (latest version, unless it names one) instead of NOT_FOUND; "
             "such adapters leave host memory when the host tier is full")
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
    _add_fleet_arguments(parser)
    for limit in fields(Limits):
        extra = f"; each text field may hold {TEXT_BYTES_PER_TOKEN} bytes per token" \
            if limit.name == "max_text_tokens" else ""
        add(f"--{limit.name.replace('_', '-')}", type=int, default=suppress,
            help=f"limit (default {limit.default}{extra})")


def _add_fleet_arguments(parser: argparse.ArgumentParser) -> None:
    """The settings of many replicas on Ray Serve (serving.fleet)."""
    add, suppress = parser.add_argument, argparse.SUPPRESS
    add("--ray", action="store_true", default=suppress,
        help="serve with many replicas on Ray Serve (a local cluster, or --ray-address); "
             "--port is then its gRPC proxy's port")
    add("--ray-address", default=suppress, help="the Ray cluster to join (default: "
        "RAY_ADDRESS, else start a local one)")
    add("--replicas", type=int, default=suppress, help="replicas (default 1)")
    add("--min-replicas", type=int, default=suppress, help="autoscale: fewest replicas")
    add("--max-replicas", type=int, default=suppress, help="autoscale: most replicas")
    add("--target-ongoing-requests", type=float, default=suppress,
        help="autoscale: requests per replica to aim for (default --max-batch)")
    add("--replica-cpus", type=float, default=suppress, help="CPUs per replica (default 1)")
    add("--replica-gpus", type=float, default=suppress, help="GPUs per replica (default 0)")
    add("--http-port", type=int, default=suppress, help="Ray Serve's HTTP proxy port "
        "(default 8000; unused by vladapter)")
    add("--fleet-sync-s", type=float, default=suppress,
        help="how long a Load waits for every replica (default 60)")


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
