"""Benchmark 3: hot-swap. Time from a `Load` call to the first response of the new version.

    python -m benchmarks.hot_swap [--backbone small] [--reduction-factor 11] [--swaps 100]
                                  [--clients 2]

Publishes versions 1..swaps+1 of one adapter (VL-Adapter's single shared adapter plus
LayerNorms, on vqa, gqa, nlvr2 and caption) to a temporary registry and starts the real
server on 127.0.0.1 serving version 1. `clients` threads send VQA requests back to back;
the main thread then loads version 2, 3, ... over gRPC, one swap at a time, each fresh
from the registry (read, verified, materialised). Per swap: the `Load` call's duration and
the time from the start of `Load` to the first response that names the new version.
Prints p50 / p99 of both, failed calls during the swaps (must be 0) and the machine.

VL-Adapter's shared adapter is 4.18% of VL-BART-base. On CPU the `small` preset with
reduction factor 11 gives about the same share (printed, from `modeling.params.report`);
`--backbone vl-bart-base --reduction-factor 8` is the paper's size (random weights,
precomputed features; slow on CPU).
"""

from __future__ import annotations

import argparse
import io
import tempfile
import threading
import time
from pathlib import Path

import grpc
import numpy as np
from PIL import Image

from adapters_registry import Registry
from benchmarks.common import (
    add_machine_options,
    machine_line,
    percentile,
    pin_threads,
    publish,
    serving_backbone,
    start_server,
)
from modeling.params import report
from modeling.recipe import MethodEntry
from serving.client import Client, predict_request

TASKS = ["vqa", "gqa", "nlvr2", "caption"]


def recipe(reduction_factor: int) -> list[MethodEntry]:
    """VL-Adapter's single_adapter preset with a chosen reduction factor."""
    return [MethodEntry("adapter", {"reduction_factor": reduction_factor}, "single"),
            MethodEntry("trainable_tensors", {"layer_norms": True}, "single", "tensors")]


def probe_image(backbone, seed: int = 0) -> bytes | np.ndarray:
    """A PNG for a backbone with a vision tower, else precomputed features."""
    rng = np.random.default_rng(seed)
    if backbone.config.vision is None:
        return rng.standard_normal((backbone.tokens_per_image, backbone.config.feat_dim)
                                   ).astype(np.float32)
    out = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(out, format="PNG")
    return out.getvalue()


class Traffic:
    """Client threads sending requests back to back; keeps (receive time, version)."""

    def __init__(self, target: str, message, clients: int) -> None:
        self.responses: list[tuple[float, int]] = []
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._loop, args=(target, message))
                         for _ in range(clients)]

    def _loop(self, target: str, message) -> None:
        with Client(target, timeout=60) as client:
            while not self._stop.is_set():
                try:
                    version = client.predict(message).adapter_version
                    self.responses.append((time.perf_counter(), version))
                except grpc.RpcError as exc:
                    self.errors.append(f"{exc.code().name}: {exc.details()}")

    def first_of(self, version: int, since: float, timeout: float = 60.0) -> float:
        """Receive time of the first response of `version` after `since`."""
        deadline = time.perf_counter() + timeout
        seen = 0
        while time.perf_counter() < deadline:
            for received, got in self.responses[seen:]:
                if got == version and received >= since:
                    return received
            seen = max(0, len(self.responses) - 16)
            time.sleep(0.0005)
        raise TimeoutError(f"no response from version {version} within {timeout} s")

    def __enter__(self) -> Traffic:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join()


def run(args: argparse.Namespace, workdir: Path) -> None:
    backbone = serving_backbone(args.backbone)
    entries = recipe(args.reduction_factor)
    share = report(backbone.config, entries, TASKS)
    registry = Registry(str(workdir / "store"))
    for version in range(1, args.swaps + 2):
        publish(registry, backbone, workdir, "hot", entries, TASKS, seed=version)
    artifact = workdir / "hot-1"
    file_bytes = sum(p.stat().st_size for p in artifact.rglob("*") if p.is_file())
    print(f"adapter: single shared adapter (reduction factor {args.reduction_factor}) + "
          f"LayerNorms on {args.backbone}: {share.trainable:,} / {share.total:,} parameters "
          f"= {share.percent:.2f}% (VL-Adapter on VL-BART-base: 4.18%); artifact "
          f"{file_bytes / 1024:.0f} KiB")
    server = start_server(backbone, str(workdir / "store"), ["hot:1"], max_queue_delay_ms=1.0)
    target = f"127.0.0.1:{server.port}"
    message = predict_request("vqa", "hot", images=[probe_image(backbone)],
                              text="what colour is the circle", max_new_tokens=4)
    load_ms, first_ms = [], []
    try:
        with Traffic(target, message, args.clients) as traffic, Client(target) as control:
            traffic.first_of(1, 0.0)
            for version in range(2, args.swaps + 2):
                start = time.perf_counter()
                control.load("hot", version=version)
                load_ms.append((time.perf_counter() - start) * 1000)
                first_ms.append((traffic.first_of(version, start) - start) * 1000)
        served, errors = len(traffic.responses), traffic.errors
    finally:
        server.stop(grace=10)
    print(f"{args.swaps} swaps, {args.clients} client threads, {served} requests served "
          f"during the run, failed calls {len(errors)}" + (f" (first: {errors[0]})"
                                                            if errors else ""))
    for label, values in (("Load call", load_ms), ("Load -> first response of new version",
                                                   first_ms)):
        print(f"  {label:40s} p50 {percentile(values, 50):7.1f} ms  p99 "
              f"{percentile(values, 99):7.1f} ms  max {max(values):7.1f} ms")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="small")
    parser.add_argument("--reduction-factor", type=int, default=11)
    parser.add_argument("--swaps", type=int, default=100)
    parser.add_argument("--clients", type=int, default=2)
    add_machine_options(parser, device=False)
    args = parser.parse_args(argv)
    pin_threads(args.threads)
    print(machine_line())
    with tempfile.TemporaryDirectory() as tmp:
        run(args, Path(tmp))
    print(machine_line())
    return 0


if __name__ == "__main__":
    from benchmarks.common import as_process

    raise SystemExit(as_process(main))
