"""ONNX Runtime against torch eager for the frozen vision tower, measured in one run.

    python benchmarks/onnx_vision.py [--presets small,tiny] [--batch 32] [--repeats 30]
                                     [--warmup 3] [--threads N]

For each preset (random weights, seed 0) or backbone folder of any family (CLIP / SigLIP,
Florence-2, BLIP; `--presets` takes folders too): one random batch of pixels
[batch, 3, H, W], the tower exported with `export_vision_onnx`, then the same batch
encoded by torch eager and by onnxruntime (warm-up first, then `repeats` timed calls
each, interleaved so both see the same machine state). Prints median and fastest
milliseconds per batch, images per second, the speed ratio (onnxruntime speed / torch
eager speed; > 1: onnxruntime is faster), the largest feature difference, and the
machine. Both get the same intra-op thread count (--threads).
On a machine shared with other processes, compare against --threads 1: torch's OpenMP
barriers stall when a core is taken away, which can dominate the eager numbers.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import onnxruntime
import torch

from benchmarks.common import machine_line
from modeling.families import load_backbone
from serving.vision_backends import OnnxVisionEncoder, TorchVisionEncoder, export_vision_onnx


def timed_ms(encode: Callable[[torch.Tensor], torch.Tensor], pixels: torch.Tensor) -> float:
    """One timed call of `encode(pixels)` in milliseconds (wall clock)."""
    start = time.perf_counter()
    encode(pixels)
    return (time.perf_counter() - start) * 1000


def bench_preset(name: str, batch: int, warmup: int, repeats: int, workdir: Path) -> None:
    """Export `name`'s tower, time torch eager and onnxruntime on one batch, print a line."""
    backbone = load_backbone(name)
    size = backbone.config.vision.image_size
    pixels = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(0))
    path = export_vision_onnx(backbone, workdir / f"{name}.onnx")
    eager = TorchVisionEncoder(backbone)
    ort = OnnxVisionEncoder(path, intra_op_threads=torch.get_num_threads())
    difference = (ort.encode(pixels) - eager.encode(pixels)).abs().max().item()
    for _ in range(warmup):
        eager.encode(pixels)
        ort.encode(pixels)
    times: dict[str, list[float]] = {"torch": [], "onnxruntime": []}
    for _ in range(repeats):
        times["torch"].append(timed_ms(eager.encode, pixels))
        times["onnxruntime"].append(timed_ms(ort.encode, pixels))
    torch_ms, ort_ms = statistics.median(times["torch"]), statistics.median(times["onnxruntime"])
    torch_best, ort_best = min(times["torch"]), min(times["onnxruntime"])
    print(f"{name:6s} image {size}px tokens {backbone.tokens_per_image} batch {batch}, "
          f"max |diff| {difference:.1e}\n"
          f"  torch eager  median {torch_ms:8.2f} ms ({batch / torch_ms * 1000:6.0f} img/s)"
          f"  min {torch_best:8.2f} ms\n"
          f"  onnxruntime  median {ort_ms:8.2f} ms ({batch / ort_ms * 1000:6.0f} img/s)"
          f"  min {ort_best:8.2f} ms\n"
          f"  ratio (onnxruntime speed / torch eager): median {torch_ms / ort_ms:.2f}x"
          f"  min {torch_best / ort_best:.2f}x")

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", default="small,tiny")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--threads", type=int, default=None,
                        help="intra-op threads for both (default: torch's default)")
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    print(f"{machine_line()} | onnxruntime {onnxruntime.__version__}")
    print(f"median of {args.repeats} calls after {args.warmup} warm-up; ratio = onnxruntime "
          "speed / torch eager speed (same inputs, same run)")
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as workdir:
        for name in args.presets.split(","):
            bench_preset(name.strip(), args.batch, args.warmup, args.repeats, Path(workdir))
    print(f"wall time {time.perf_counter() - started:.1f} s, load average "
          f"{os.getloadavg()[0]:.2f} (other processes on these cores skew both medians)")
    return 0


if __name__ == "__main__":
    from benchmarks.common import as_process

    raise SystemExit(as_process(main))
