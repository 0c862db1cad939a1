"""Benchmark 10: a fleet on Ray Serve. Adapter-affinity routing (Ray Serve's multiplexed
model id, as `serving.client` sends it) against adapter-oblivious routing, each over a
fleet of the same settings, in one run.

    python -m benchmarks.fleet [--backbone tiny] [--adapters 1000] [--alpha 1.0]
                               [--replicas 2] [--device-slots 32] [--requests 1500]
                               [--clients 16] [--rounds 2] [--rank 8] [--all-tasks]
                               [--load-on-demand --host-adapters 128]

Publishes `adapters` LoRA adapters (`rank` on q and v, VQA, or one per task for every task
with `--all-tasks`) to a temporary registry, starts a local Ray cluster and the fleets
(serving.fleet: `replicas` AdapterReplicas each, each replica with
`device_slots` device slots, far fewer than adapters) and sends
the same request sequence (adapters drawn with probability proportional to rank**-alpha,
seeded) through Ray Serve's gRPC proxy from `clients` closed-loop threads, in two modes,
each to a fleet of its own (two Ray Serve applications with the same settings in one
cluster), so one mode's routing never fills the other's caches or multiplexed tables:

    oblivious  no multiplexed id: Ray Serve's default routing (power of two choices on
               queue length), which does not know adapters -- round-robin's equal, as far
               as caches go: every replica sees every adapter
    affinity   `multiplexed_model_id` = the adapter: Ray Serve prefers a replica that
               holds it (what `Client` / `adapter-client` send)

Adapters in service: by default every one, loaded at start (`--load`): each replica holds
all of them in host memory and only device slots differ. With `--load-on-demand` none is
loaded at start: a replica loads an adapter when a request needs it (registry -> host ->
device, verified) and holds at most `--host-adapters` in host memory (LRU), as LoRAX and
vLLM's LoRA do; Ray Serve's multiplexed table then follows the host tier.

The modes alternate (`rounds` of each, after a warm-up of each), so both see the same
machine. Per mode: device-slot hit rate and bank writes per request (from the replicas'
cache counters, reported to the fleet controller), registry loads per request (on demand),
req/s, p50 / p99 latency, and the ratio affinity / oblivious. The client threads share
the machine with the replicas.
"""

from __future__ import annotations

import argparse
import math
import os
import queue
import random
import tempfile
import threading
import time
from pathlib import Path

import grpc

from adapters_registry import Registry
from benchmarks.common import machine_line, percentile, random_adapter, serving_backbone
from modeling.cli_parser import positive_int
from modeling.recipe import MethodEntry
from modeling.tasks import TASKS
from serving.client import multiplexed_id, predict_request
from serving.config import ServeConfig
from serving.protos import inference_pb2_grpc
from training.artifact import write_artifact

DISTINCT = 8  # distinct weight sets, published under every name in turn (publishing is I/O)
MODES = ("oblivious", "affinity")


def publish_adapters(root: Path, backbone_name: str, count: int, rank: int = 8,
                     all_tasks: bool = False) -> list[str]:
    """`count` adapter names in a new registry under `root`: LoRA of `rank` on q and v for
    VQA, or (`all_tasks`) one LoRA per task for all eight tasks, as VL-Adapter's
    multi-task artifacts ("multiple" sharing: the artifact, and a load, grow with tasks)."""
    backbone = serving_backbone(backbone_name)
    registry = Registry(str(root / "store"))
    recipe = [MethodEntry("lora", {"rank": rank, "alpha": 16},
                          "multiple" if all_tasks else "single")]
    tasks = list(TASKS) if all_tasks else ["vqa"]
    artifacts = []
    for seed in range(DISTINCT):
        model = random_adapter(backbone, recipe, tasks, seed=seed)
        out = root / f"artifact-{seed}"
        write_artifact(out, model, backbone, {"trainable": model.trainable_count()})
        artifacts.append(out)
    names = [f"lora-{i:04d}" for i in range(count)]
    for i, name in enumerate(names):
        registry.publish(artifacts[i % DISTINCT], name)
    return names


def workload(names: list[str], requests: int, alpha: float, seed: int = 0) -> list:
    """The request sequence: adapters by power-law popularity (rank r: weight r**-alpha,
    ranks shuffled by `seed`), a small pool of images (vision cache hits both ways)."""
    rng = random.Random(seed)
    ranked = names[:]
    rng.shuffle(ranked)
    weights = [(rank + 1) ** -alpha for rank in range(len(ranked))]
    images = [_png(i) for i in range(4)]
    return [predict_request("vqa", name, images=[images[i % len(images)]],
                            text="what is the color", max_new_tokens=4)
            for i, name in enumerate(rng.choices(ranked, weights, k=requests))]


def _png(seed: int, size: int = 32) -> bytes:
    import io

    import numpy as np
    from PIL import Image

    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG")
    return out.getvalue()


def app_name(mode: str) -> str:
    """The Ray Serve application (one fleet) that serves a routing mode."""
    return f"vladapter-{mode}"


def run_phase(target: str, requests: list, clients: int, mode: str) -> dict:
    """Send `requests` from `clients` threads to the fleet of `mode` (affinity: with the
    multiplexed id); latencies (s), wall time, failures."""
    pending: queue.SimpleQueue = queue.SimpleQueue()
    for request in requests:
        pending.put(request)
    latencies: list[float] = []
    failures: list[str] = []
    lock = threading.Lock()

    def client() -> None:
        with grpc.insecure_channel(target) as channel:
            stub = inference_pb2_grpc.InferenceStub(channel)
            while True:
                try:
                    request = pending.get_nowait()
                except queue.Empty:
                    return
                metadata = (("application", app_name(mode)),) + (
                    (("multiplexed_model_id", multiplexed_id(request.adapter)),)
                    if mode == "affinity" else ())
                start = time.perf_counter()
                try:
                    stub.Predict(request, metadata=metadata, timeout=120)
                except grpc.RpcError as error:
                    with lock:
                        failures.append(error.code().name)
                    continue
                with lock:
                    latencies.append(time.perf_counter() - start)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return {"latencies": latencies, "wall": time.perf_counter() - start, "failures": failures}


def device_counts(fleet_snapshot: dict) -> dict[str, float]:
    """Device-tier events, adapters loaded on demand and answered Predicts, summed over
    the fleet's replicas."""
    total = {"hit": 0.0, "miss": 0.0, "restack": 0.0, "loads": 0.0, "answered": 0.0}
    for report in fleet_snapshot["replicas"].values():
        device = report["stats"].get("cache", {}).get("device", {})
        for event in ("hit", "miss", "restack"):
            total[event] += device.get(event, 0.0)
        total["loads"] += report["stats"].get("on_demand_loads", 0.0)
        total["answered"] += report["stats"].get("answered", {}).get("Predict", 0)
    return total


def snapshot(handle) -> dict:
    """The controller's view once every replica has reported since now (polls <= 1 s)."""
    time.sleep(2.5)
    return handle.snapshot.remote().result(timeout_s=60)


def summarize(mode: str, phases: list[dict], deltas: list[dict]) -> dict:
    latencies = [x for phase in phases for x in phase["latencies"]]
    hits = sum(d["hit"] for d in deltas)
    misses = sum(d["miss"] for d in deltas)
    answered = sum(d["answered"] for d in deltas) or 1.0
    return {"mode": mode, "requests": len(latencies),
            "failures": sum(len(p["failures"]) for p in phases),
            "rps": len(latencies) / sum(p["wall"] for p in phases),
            "p50": 1000 * percentile(latencies, 50), "p99": 1000 * percentile(latencies, 99),
            "hit_rate": hits / max(hits + misses, 1.0),
            "writes": (misses + sum(d["restack"] for d in deltas)) / answered,
            "loads": sum(d["loads"] for d in deltas) / answered}


def start_fleets(args: argparse.Namespace, registry_root: str, names: list[str]
                 ) -> ServeConfig:
    """A local Ray cluster and one fleet per mode: every adapter in service, or (on
    demand) none loaded and a bounded host tier."""
    import ray
    from ray import serve

    from serving.fleet.app import application, start_ray

    port = _free_port()
    config = ServeConfig(registry=registry_root, backbone=args.backbone,
                         load=() if args.load_on_demand else tuple(names),
                         load_on_demand=args.load_on_demand,
                         host_adapters=args.host_adapters if args.load_on_demand else None,
                         port=port, http_port=_free_port(), ray=True, replicas=args.replicas,
                         replica_cpus=args.replica_cpus, device_slots=args.device_slots,
                         max_batch=args.max_batch, max_queue=64, fleet_sync_s=600.0)
    cpus = max(os.cpu_count() or 1, math.ceil(len(MODES) * args.replicas * args.replica_cpus))
    ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False)
    start_ray(config)
    for mode in MODES:
        serve.run(application(config), name=app_name(mode), route_prefix=f"/{app_name(mode)}")
    return config


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def print_results(results: list[dict], args: argparse.Namespace) -> None:
    host = f"on demand, {args.host_adapters} host adapters" if args.load_on_demand \
        else "all loaded at start"
    host += f"; LoRA r{args.rank} for {'all 8 tasks' if args.all_tasks else 'VQA'}"
    print(f"\n{args.replicas} replicas (a fleet per mode) x {args.device_slots} device slots, "
          f"{args.adapters} adapters ({host}; alpha {args.alpha}), {args.clients} clients, "
          f"backbone {args.backbone}, {args.rounds} x {args.requests} requests per mode")
    print("| routing | requests | failed | device hit rate | bank writes / request | "
          "registry loads / request | req/s | p50 ms | p99 ms |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['mode']} | {r['requests']} | {r['failures']} | {r['hit_rate']:.3f} | "
              f"{r['writes']:.3f} | {r['loads']:.3f} | {r['rps']:.1f} | {r['p50']:.0f} | "
              f"{r['p99']:.0f} |")
    oblivious, affinity = results
    print(f"affinity / oblivious: hit rate {affinity['hit_rate'] / oblivious['hit_rate']:.2f}x, "
          f"bank writes per request {affinity['writes'] / max(oblivious['writes'], 1e-9):.2f}x, "
          f"registry loads per request {affinity['loads'] / max(oblivious['loads'], 1e-9):.2f}x, "
          f"req/s {affinity['rps'] / oblivious['rps']:.2f}x, "
          f"p50 {affinity['p50'] / oblivious['p50']:.2f}x, "
          f"p99 {affinity['p99'] / oblivious['p99']:.2f}x")


def measure(args: argparse.Namespace, target: str, requests: list) -> list[dict]:
    """Warm-up of each mode, then `rounds` alternating phases of each; per-mode summary."""
    from ray import serve

    from serving.fleet.app import CONTROLLER

    handles = {mode: serve.get_deployment_handle(CONTROLLER, app_name=app_name(mode))
               for mode in MODES}
    for mode in MODES:
        run_phase(target, requests[: len(requests) // 4], args.clients, mode)
    phases: dict[str, list[dict]] = {mode: [] for mode in MODES}
    deltas: dict[str, list[dict]] = {mode: [] for mode in MODES}
    for _ in range(args.rounds):
        for mode in MODES:
            before = device_counts(snapshot(handles[mode]))
            phases[mode].append(run_phase(target, requests, args.clients, mode))
            after = device_counts(snapshot(handles[mode]))
            deltas[mode].append({k: after[k] - before[k] for k in after})
            print(f"{mode}: {len(phases[mode][-1]['latencies'])} answered in "
                  f"{phases[mode][-1]['wall']:.1f}s, device {deltas[mode][-1]}", flush=True)
    return [summarize(mode, phases[mode], deltas[mode]) for mode in MODES]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="tiny")
    parser.add_argument("--adapters", type=int, default=1000)
    parser.add_argument("--alpha", type=float, default=1.0)
    parser.add_argument("--replicas", type=int, default=2)
    parser.add_argument("--replica-cpus", type=float, default=0.5)
    parser.add_argument("--device-slots", type=int, default=32)
    parser.add_argument("--max-batch", type=int, default=8)
    parser.add_argument("--requests", type=int, default=1500)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--rank", type=positive_int, default=8, help="LoRA rank (q and v)")
    parser.add_argument("--all-tasks", action="store_true",
                        help="artifacts carry a LoRA per task for all eight tasks (requests "
                             "stay VQA): a load reads and materializes eight")
    parser.add_argument("--load-on-demand", action="store_true",
                        help="load nothing at start: replicas load adapters on demand")
    parser.add_argument("--host-adapters", type=positive_int, default=128,
                        help="with --load-on-demand: adapters each replica's host tier holds")
    args = parser.parse_args(argv)
    import ray
    from ray import serve

    print(machine_line())
    with tempfile.TemporaryDirectory(prefix="fleet-bench-") as workdir:
        start = time.perf_counter()
        names = publish_adapters(Path(workdir), args.backbone, args.adapters, args.rank,
                                 args.all_tasks)
        config = start_fleets(args, str(Path(workdir) / "store"), names)
        print(f"published {len(names)} adapters and started the fleets in "
              f"{time.perf_counter() - start:.0f}s", flush=True)
        try:
            results = measure(args, f"127.0.0.1:{config.port}",
                              workload(names, args.requests, args.alpha))
        finally:
            serve.shutdown()
            ray.shutdown()
    print_results(results, args)
    print(machine_line())
    return 0


if __name__ == "__main__":
    from benchmarks.common import as_process

    raise SystemExit(as_process(main))
