"""Benchmark 4: memory. Bytes per resident adapter against its file, and process memory
with 1, 100 and 1000 adapters in service.

    python -m benchmarks.memory [--backbone small] [--counts 1,100,1000]

Part 1, per recipe (serial adapter + LayerNorms, LoRA r8, prompts per task, prefixes; all
eight tasks): the artifact's bytes on disk, the host tier's bytes as the store counts them
(sum of every task's serve form), the unique host bytes (tensors shared by tasks counted
once), and one device slot (one task's set, in the bank's dtype).

Part 2: the real server on 127.0.0.1 in this process; adapters (the four recipes in turn)
are published to a temporary registry and loaded over gRPC (`Repository.Load`, resident in
host memory) until 1, 100 and 1000 are in service; the process RSS is read after each step
(`/proc/self/statm`, after gc). Prints RSS per adapter against the mean file size.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import tempfile
from pathlib import Path

import torch

from adapters_registry import Registry
from benchmarks.common import (
    ALL_TASKS,
    MIXED_RECIPES,
    add_machine_options,
    machine_line,
    pin_threads,
    publish,
    rss_bytes,
    serving_backbone,
    start_server,
)
from serving.client import Client

KIB, MIB = 1024, 1024 * 1024
RECIPE_NAMES = ["adapter+norms", "lora-r8", "prompt-per-task", "prefix"]


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def unique_bytes(tensors: list[torch.Tensor]) -> int:
    """Bytes of distinct storages (a shared adapter is one tensor seen by every task)."""
    seen: dict[int, int] = {}
    for tensor in tensors:
        storage = tensor.untyped_storage()
        seen[storage.data_ptr()] = storage.nbytes()
    return sum(seen.values())


def per_adapter(server, registry_root: Path, workdir: Path) -> list[int]:
    """Print one row per recipe; returns the file sizes."""
    sizes = []
    print("| recipe | file KiB | host KiB (store's count) | host KiB (unique) | device slot KiB"
          " (one task) |\n|---|---|---|---|---|")
    for i, label in enumerate(RECIPE_NAMES):
        name = f"adapter-{i:04d}"
        entry = server.store.fetch(name, 1).result()
        files = folder_bytes(workdir / f"{name}-{1000 + i}")
        sizes.append(files)
        unique = unique_bytes([t for w in entry.serve.values() for t in w.tensors()])
        slot = server.slot_table.device_bytes(entry.serve["vqa"])
        print(f"| {label} | {files / KIB:.1f} | {entry.nbytes / KIB:.1f} | {unique / KIB:.1f} | "
              f"{slot / KIB:.1f} |")
    return sizes


def measure(rss: dict[str, int], label: str) -> None:
    gc.collect()
    rss[label] = rss_bytes()
    print(f"  RSS {label:28s} {rss[label] / MIB:8.1f} MiB", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="small")
    parser.add_argument("--counts", default="1,100,1000")
    add_machine_options(parser, device=False)
    args = parser.parse_args(argv)
    pin_threads(args.threads)
    print(machine_line())
    counts = [int(c) for c in args.counts.split(",")]
    rss: dict[str, int] = {}
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        backbone = serving_backbone(args.backbone)
        registry = Registry(str(workdir / "store"))
        for i in range(max(counts)):
            publish(registry, backbone, workdir, f"adapter-{i:04d}",
                    MIXED_RECIPES[i % len(MIXED_RECIPES)], ALL_TASKS, seed=1000 + i)
        print(f"published {max(counts)} adapters ({args.backbone}, 8 tasks each); registry "
              f"{folder_bytes(workdir / 'store') / MIB:.1f} MiB on disk")
        measure(rss, "backbone built")
        server = start_server(backbone, str(workdir / "store"), [],
                              host_cache_bytes=64 * 1024 * MIB)
        try:
            measure(rss, "server, 0 adapters")
            with Client(f"127.0.0.1:{server.port}", timeout=60) as client:
                loaded = 0
                for count in counts:
                    for i in range(loaded, count):
                        client.load(f"adapter-{i:04d}")
                    loaded = count
                    measure(rss, f"{count} adapters in service")
            print("\nper adapter, resident in host memory:")
            sizes = per_adapter(server, workdir / "store", workdir)
        finally:
            server.stop(grace=5)
    mean_file = statistics.mean(sizes)
    low, high = counts[0], counts[-1]
    growth = (rss[f"{high} adapters in service"] - rss[f"{low} adapters in service"])
    per = growth / (high - low)
    print(f"\nRSS growth {low} -> {high} adapters: {growth / MIB:.1f} MiB = {per / KIB:.1f} KiB "
          f"per adapter; mean file {mean_file / KIB:.1f} KiB; ratio RSS per adapter / file "
          f"{per / mean_file:.2f}")
    print(machine_line())
    return 0


if __name__ == "__main__":
    from benchmarks.common import as_process

    raise SystemExit(as_process(main))
