"""Benchmark 6: adapter training step against full fine-tuning, same backbone and batch.

    python -m benchmarks.training_step [--backbone small] [--batch 32] [--steps 6]
                                       [--rounds 3] [--preset single_adapter]

Each measurement runs in a fresh process (`--worker MODE`), so its peak memory is its own:
the backbone (random weights, seed 0), the recipe (`--preset`, or `full_finetuning`, which
trains a copy of the LM and visual projection as `train-adapter` does), AdamW over the
trainable tensors, then `steps` training steps (forward, loss, backward, clipping, AdamW)
on one random batch (12 text tokens, the preset's visual tokens, 8 label tokens) after one
warm-up step. Rounds alternate full / adapter processes. Prints per mode the median step
time, peak memory (CPU: peak RSS, and peak RSS above the RSS once the backbone is built;
GPU: `torch.cuda.max_memory_allocated`), trainable parameters, the ratios and the machine.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

import torch

from benchmarks.common import (
    add_machine_options,
    machine_line,
    pin_threads,
    random_batch,
    rss_bytes,
    settle,
)
from modeling.families import load_backbone
from modeling.methods.base import BackboneFacts
from modeling.presets import method_preset
from modeling.recipe import AdapterModel
from training.adapter_step import adapter_logits, sequence_loss

MIB = 1024 * 1024


def worker(mode: str, args: argparse.Namespace) -> dict:
    """Build, train `steps` steps, return timings (ms) and memory (bytes) as a dict."""
    device = torch.device(args.device)
    backbone = load_backbone(args.backbone).to(device)
    batch = random_batch(backbone, args.batch, labels=8).to(device)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    base_rss = rss_bytes()
    model = AdapterModel(method_preset(mode), BackboneFacts.of(backbone), ["vqa"],
                         backbone=backbone).to(device)
    full = mode == "full_finetuning"
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    model.train()
    times = []
    for step in range(args.steps + 1):
        start = time.perf_counter()
        logits = model.methods["full_finetuning"].model(batch) if full else \
            adapter_logits(backbone, model, batch, ["vqa"] * batch.size)
        loss = sequence_loss(logits, batch.labels)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        settle()
        if step > 0:
            times.append((time.perf_counter() - start) * 1000)
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    gpu_peak = torch.cuda.max_memory_allocated() if device.type == "cuda" else 0
    return {"step_ms": statistics.median(times), "peak_rss": peak_rss,
            "above_backbone": peak_rss - base_rss, "gpu_peak": gpu_peak,
            "trainable": sum(p.numel() for p in params)}


def run_worker(mode: str, args: argparse.Namespace) -> dict:
    command = [sys.executable, "-m", "benchmarks.training_step", "--worker", mode,
               "--backbone", args.backbone, "--batch", str(args.batch), "--steps",
               str(args.steps), "--threads", str(args.threads), "--device", args.device]
    done = subprocess.run(command, capture_output=True, text=True, check=True, timeout=600)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="small")
    parser.add_argument("--preset", default="single_adapter")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--rounds", type=int, default=3)
    add_machine_options(parser)
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    pin_threads(args.threads)
    if args.worker:
        print(json.dumps(worker(args.worker, args)))
        return 0
    print(machine_line())
    modes = ["full_finetuning", args.preset]
    runs: dict[str, list[dict]] = {m: [] for m in modes}
    for _ in range(args.rounds):
        for mode in modes:
            runs[mode].append(run_worker(mode, args))
    print(f"backbone {args.backbone}, batch {args.batch}, {args.steps} steps after 1 warm-up, "
          f"{args.rounds} processes per mode (alternating), device {args.device}")
    summary = {}
    for mode in modes:
        med = {k: statistics.median(r[k] for r in runs[mode]) for k in runs[mode][0]}
        summary[mode] = med
        print(f"  {mode:16s} step {med['step_ms']:8.1f} ms   peak RSS "
              f"{med['peak_rss'] / MIB:7.1f} MiB   above backbone "
              f"{med['above_backbone'] / MIB:6.1f} MiB   GPU peak "
              f"{med['gpu_peak'] / MIB:7.1f} MiB   trainable "
              f"{int(med['trainable']):,}")
    full, ours = summary["full_finetuning"], summary[args.preset]
    print(f"  ratio full / {args.preset}: step time {full['step_ms'] / ours['step_ms']:.2f}x, "
          f"memory above backbone {full['above_backbone'] / max(ours['above_backbone'], 1):.2f}x"
          + (f", GPU peak {full['gpu_peak'] / ours['gpu_peak']:.2f}x" if ours["gpu_peak"] else ""))
    print(machine_line())
    return 0


if __name__ == "__main__":
    from benchmarks.common import as_process

    raise SystemExit(as_process(main))
