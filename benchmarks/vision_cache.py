"""Benchmark 5: the vision feature cache. Requests on a repeated image against new images.

    python -m benchmarks.vision_cache [--backbone small] [--requests 60] [--frames 6]

The real server on 127.0.0.1 with one adapter (single shared adapter + LayerNorms). One
client sends, alternately, a request on the same picture (after the first, CLIP's output
comes from the cache keyed by the image's sha256) and a request on a picture never seen
before (CLIP runs). Two workloads: VQA (one image) and TVC (a clip of `frames` frames).
Prints per workload the median client latency and server vision time of each kind, the
ratio new / repeated, and the machine.
"""

from __future__ import annotations

import argparse
import io
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from adapters_registry import Registry
from benchmarks.common import (
    ALL_TASKS,
    add_machine_options,
    machine_line,
    pin_threads,
    publish,
    serving_backbone,
    start_server,
)
from benchmarks.hot_swap import recipe
from serving.client import Client, predict_request


def png(seed: int, size: int = 64) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG")
    return out.getvalue()


def message(task: str, seed: int, frames: int):
    """A request whose picture(s) are determined by `seed` (same seed, same bytes)."""
    if task == "tvc":
        return predict_request("tvc", "cached", frames=[png(seed * 100 + i)
                                                        for i in range(frames)],
                               subtitles="look at the circle", max_new_tokens=4)
    return predict_request("vqa", "cached", images=[png(seed)], text="what colour is it",
                           max_new_tokens=4)


def workload(client: Client, task: str, requests: int, frames: int) -> None:
    """Interleave repeated-image and new-image requests; print medians and the ratio."""
    kinds: dict[str, dict[str, list[float]]] = {
        k: {"latency": [], "vision": []} for k in ("repeated", "new")}
    repeated = message(task, 0, frames)
    client.predict(repeated)  # fills the cache
    for i in range(requests):
        for kind, request in (("repeated", repeated), ("new", message(task, i + 1, frames))):
            start = time.perf_counter()
            response = client.predict(request)
            kinds[kind]["latency"].append((time.perf_counter() - start) * 1000)
            kinds[kind]["vision"].append(response.timings.vision_ms)
    medians = {k: {m: statistics.median(v) for m, v in d.items()} for k, d in kinds.items()}
    for kind, m in medians.items():
        print(f"  {task:4s} {kind:9s} latency p50 {m['latency']:7.2f} ms   server vision p50 "
              f"{m['vision']:7.2f} ms")
    print(f"  {task:4s} ratio new / repeated: latency "
          f"{medians['new']['latency'] / medians['repeated']['latency']:.2f}x  "
          f"(requests/s on one client: repeated {1000 / medians['repeated']['latency']:.1f}, "
          f"new {1000 / medians['new']['latency']:.1f})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="small")
    parser.add_argument("--requests", type=int, default=60, help="pairs per workload")
    parser.add_argument("--frames", type=int, default=6)
    add_machine_options(parser, device=False)
    args = parser.parse_args(argv)
    pin_threads(args.threads)
    print(machine_line())
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        backbone = serving_backbone(args.backbone)
        publish(Registry(str(workdir / "store")), backbone, workdir, "cached", recipe(8),
                ALL_TASKS, seed=0)
        server = start_server(backbone, str(workdir / "store"), ["cached"],
                              max_queue_delay_ms=0.0)
        vision = backbone.config.vision
        print(f"backbone {args.backbone}: CLIP {vision.num_hidden_layers} layers, "
              f"{vision.hidden_size}-d, {vision.image_size}px; {args.requests} pairs each, "
              "sequential on one client")
        try:
            with Client(f"127.0.0.1:{server.port}", timeout=60) as client:
                for task in ("vqa", "tvc"):
                    workload(client, task, args.requests, args.frames)
        finally:
            server.stop(grace=5)
    print(machine_line())
    return 0


if __name__ == "__main__":
    from benchmarks.common import as_process

    raise SystemExit(as_process(main))
