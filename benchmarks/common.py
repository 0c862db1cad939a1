"""What every benchmark shares: the machine line, pinned threads, interleaved timing,
random adapters published to a temporary registry, and a server on 127.0.0.1.

Benchmarks run as modules from the repository root (`python -m benchmarks.<name>`), each
prints the ratio it measured in the same run and the machine it ran on.
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from adapters_registry import Registry
from modeling.backbone import VLBackbone
from modeling.methods.base import BackboneFacts
from modeling.recipe import AdapterModel, MethodEntry
from modeling.tasks import TASKS
from serving.config import ServeConfig
from serving.server import Server
from serving.stack import load_backbone
from training.artifact import write_artifact

ALL_TASKS = list(TASKS)
RESULTS = Path(__file__).parent / "results"
# One recipe per serve form, cycled over adapter names (a realistic mix of methods).
MIXED_RECIPES: list[list[MethodEntry]] = [
    [MethodEntry("adapter", {"reduction_factor": 8}, "single"),
     MethodEntry("trainable_tensors", {"layer_norms": True}, "single", "tensors")],
    [MethodEntry("lora", {"rank": 8, "alpha": 16}, "single")],
    [MethodEntry("prompt_tuning", {"length": 8, "hidden_dim": 32}, "multiple")],
    [MethodEntry("prefix_tuning", {"length": 8, "hidden_dim": 32}, "single")],
]


def pin_threads(threads: int) -> int:
    """Fix torch's intra-op threads (shared cores: fewer threads, steadier medians)."""
    torch.set_num_threads(max(1, threads))
    return torch.get_num_threads()


def add_machine_options(parser, device: bool = True) -> None:
    """--threads (torch intra-op threads, default 1) and, unless told not to, --device
    (CUDA when present)."""
    parser.add_argument("--threads", type=int, default=1)
    if device:
        parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")


def machine_line() -> str:
    """Platform, CPU count, torch threads, accelerator and the 1-minute load average."""
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (f"machine: {platform.platform()} | {platform.processor() or platform.machine()} | "
            f"cpus {os.cpu_count()} | torch {torch.__version__} threads "
            f"{torch.get_num_threads()} | {device} | load average "
            f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}")


def interleaved(candidates: dict[str, Callable[[], object]], repeats: int,
                warmup: int = 1) -> dict[str, list[float]]:
    """Seconds per call of each candidate, calls interleaved so all see the same machine.

    Each round calls every candidate once (round-robin); `warmup` rounds are not kept.
    """
    times: dict[str, list[float]] = {name: [] for name in candidates}
    for round_index in range(warmup + repeats):
        for name, call in candidates.items():
            start = time.perf_counter()
            call()
            if round_index >= warmup:
                times[name].append(time.perf_counter() - start)
    return times


def median_ms(seconds: list[float]) -> float:
    return 1000.0 * statistics.median(seconds)


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0..100) by linear interpolation; nan for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100.0
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def serving_backbone(name: str, seed: int = 0) -> VLBackbone:
    """The backbone `adapter-serve --backbone NAME` builds (same weights, same tokenizer)."""
    return load_backbone(ServeConfig(backbone=name, seed=seed))


def random_adapter(backbone: VLBackbone, recipe: list[MethodEntry], tasks: list[str],
                   seed: int, noise: float = 0.3) -> AdapterModel:
    """An AdapterModel whose trainable tensors are randomly perturbed (non-trivial outputs)."""
    model = AdapterModel(recipe, BackboneFacts.of(backbone), tasks)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad:
                param.add_(torch.randn(param.shape, generator=generator) * noise)
    return model.eval()


def publish(registry: Registry, backbone: VLBackbone, workdir: Path, name: str,
            recipe: list[MethodEntry], tasks: list[str], seed: int) -> int:
    """Write one random adapter artifact and publish it as the next version of `name`."""
    model = random_adapter(backbone, recipe, tasks, seed)
    out = workdir / f"{name}-{seed}"
    write_artifact(out, model, backbone, {"trainable": model.trainable_count()})
    return registry.publish(out, name)


def publish_mixed(registry: Registry, backbone: VLBackbone, workdir: Path, count: int,
                  prefix: str = "adapter") -> list[str]:
    """Publish `count` adapters serving all eight tasks, cycling over `MIXED_RECIPES`."""
    names = []
    for i in range(count):
        name = f"{prefix}-{i:04d}"
        publish(registry, backbone, workdir, name, MIXED_RECIPES[i % len(MIXED_RECIPES)],
                ALL_TASKS, seed=1000 + i)
        names.append(name)
    return names


def start_server(backbone: VLBackbone, registry_root: str, load: list[str],
                 **settings: object) -> Server:
    """A real gRPC server on 127.0.0.1 (free port) over `backbone`, `load` in service."""
    config = ServeConfig(registry=registry_root, backbone=backbone.config.preset or "tiny",
                         host="127.0.0.1", port=0, load=tuple(load), **settings)
    return Server(config, backbone=backbone).start()


def rss_bytes() -> int:
    """Resident set size of this process (Linux /proc)."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
