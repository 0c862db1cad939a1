"""What every benchmark shares: the machine line, pinned threads, interleaved timing,
the same benchmark run on an older commit, random adapters published to a temporary
registry, and a server on 127.0.0.1.

Benchmarks run as modules from the repository root (`python -m benchmarks.<name>`), each
prints the ratio it measured in the same run and the machine it ran on.
"""

from __future__ import annotations

import io
import os
import platform
import random
import re
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import torch

from adapters_registry import Registry
from modeling import decode_rows
from modeling.backbone import VLBackbone, VLBatch
from modeling.bank import AdapterBank
from modeling.host_memory import keep_freed_memory
from modeling.kernels import RowIndex
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


def as_process(main: Callable[[], int]) -> int:
    """A benchmark's `main` run as its own process (`python -m benchmarks.<name>`): freed
    memory kept first, as `adapter-serve` and `train-adapter` keep it at start
    (`modeling.host_memory`; `run_at_ref` gives an older commit's run the same). Tests call
    `main` itself and leave their process as it is."""
    keep_freed_memory()
    return main()


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


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def add_dtype_option(parser) -> None:
    """--dtype: what the backbone, the banks and the visual features compute in."""
    parser.add_argument("--dtype", choices=list(DTYPES), default="float32",
                        help="float32 (default), or bfloat16 / float16: what the server runs "
                             "on CUDA (bfloat16 where supported)")


def placed(backbone: VLBackbone, batch: VLBatch, device: str, dtype: str
           ) -> tuple[VLBackbone, VLBatch]:
    """`backbone` and `batch` on `device`, the backbone and the batch's floating tensors
    (visual features, boxes) in `dtype` (a key of `DTYPES`); ids and masks as they are.
    What `VLBatch.to(device, dtype)` does, written out: `run_at_ref` runs these scripts
    over older trees, whose `VLBatch.to` takes no dtype."""
    kind = DTYPES[dtype]
    moved = {name: value.to(device, kind if value.is_floating_point() else value.dtype)
             if isinstance(value, torch.Tensor) else value
             for name, value in batch.__dict__.items()}
    return backbone.to(device, kind), VLBatch(**moved)


# Seconds since an arbitrary start: the wall clock, or the calling thread's CPU time. At
# one torch thread every op runs on the calling thread, so its CPU time is the compute
# time; on a machine shared with other jobs it leaves out the time they hold the core
# (memory and cache contention stay in). Not the process's CPU time: idle OpenMP workers
# spinning after start-up would count.
CLOCKS: dict[str, Callable[[], float]] = {"wall": time.perf_counter, "cpu": time.thread_time}


def add_clock_option(parser) -> None:
    """--clock wall|cpu: what each timed call is measured with (`CLOCKS`)."""
    parser.add_argument(
        "--clock", choices=sorted(CLOCKS), default="wall",
        help="wall (default), or cpu: the CPU time of the thread running torch per call, "
             "steadier on a machine other jobs share (needs --threads 1; the baseline uses "
             "it too)")


def check_clock(parser, args) -> None:
    """The cpu clock sees only the calling thread's CPU work: refuse it with more torch
    threads, and on a GPU (the kernels' time is not the thread's)."""
    if args.clock == "cpu" and args.threads != 1:
        parser.error("--clock cpu needs --threads 1 (it reads the calling thread's CPU time)")
    if args.clock == "cpu" and getattr(args, "device", "cpu") != "cpu":
        parser.error(f"--clock cpu times CPU work only: use --clock wall on --device "
                     f"{args.device}")


def add_baseline_option(parser) -> None:
    """--baseline GIT_REF: run the same benchmark on the code of an older commit too."""
    parser.add_argument(
        "--baseline", metavar="GIT_REF",
        help="also run this benchmark, same options, on the code of GIT_REF (e.g. the commit "
             "before a change) in a subprocess of this run, and print before / after ratios")


def run_at_ref(ref: str, module: str, argv: list[str], clock: str = "wall") -> str:
    """The output of `python -m benchmarks.<module> argv` on the code of git `ref`.

    The tree of `ref` is extracted (`git archive`) into a temporary folder that the child
    process puts first on its path: the same interpreter, packages and machine run the
    older code, in the same invocation as the newer one, timed by `clock`. The benchmark
    scripts themselves are this checkout's (copied over the older tree's `benchmarks/`):
    both sides are measured the same way (the child gets `--clock` as this process did,
    and `modeling.host_memory`, the process set-up of `as_process`), and a figure added
    since `ref` has a before.
    Exits with one line on stderr (status 2) when `ref` is unknown or the older code fails.
    """
    root = Path(__file__).resolve().parent.parent
    archive = subprocess.run(["git", "-C", str(root), "archive", "--format=tar", ref],
                             capture_output=True)
    if archive.returncode != 0:
        _fail(f"--baseline {ref}: git archive failed: {_last_line(archive.stderr)}")
    with tempfile.TemporaryDirectory(prefix="vladapter-baseline-") as tree:
        with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
            tar.extractall(tree, filter="data")
        shutil.copytree(root / "benchmarks", Path(tree) / "benchmarks", dirs_exist_ok=True,
                        ignore=shutil.ignore_patterns("results", "__pycache__"))
        # the process set-up the scripts make (`as_process`), which older trees may lack
        shutil.copy2(root / "modeling" / "host_memory.py", Path(tree) / "modeling")
        child = subprocess.run([sys.executable, "-m", f"benchmarks.{module}", *argv,
                                "--clock", clock], cwd=tree,
                               env={**os.environ, "PYTHONPATH": tree}, capture_output=True,
                               text=True)
    if child.returncode != 0:
        _fail(f"--baseline {ref}: benchmarks.{module} failed there: {_last_line(child.stderr)}")
    return child.stdout


def _last_line(text: str | bytes) -> str:
    lines = (text.decode(errors="replace") if isinstance(text, bytes) else text).splitlines()
    return lines[-1] if lines else "(no output)"


def _fail(message: str) -> None:
    print(message, file=sys.stderr)
    raise SystemExit(2)


def ratios_in(output: str, pattern: str) -> dict[tuple[str, ...], float]:
    """The ratio each result line of a benchmark's `output` printed, by its key.

    pattern: a regular expression matched at the start of each line; its named group
    `ratio` is the value, its other named groups (in order) the key.
    """
    found = {}
    for line in output.splitlines():
        match = re.match(pattern, line)
        if match:
            groups = match.groupdict()
            ratio = float(groups.pop("ratio"))
            found[tuple(groups.values())] = ratio
    return found


def print_before_after(title: str, before: dict[tuple[str, ...], float],
                       after: dict[tuple[str, ...], float], ref: str) -> None:
    """One line per key measured by both: the ratio on `ref`, on this code, and after/before."""
    print(f"{title}: before ({ref}) -> after (this code), measured in this run")
    for key in after:
        if key in before:
            print(f"  {' '.join(key):24s} {before[key]:5.2f} -> {after[key]:5.2f}"
                  f"   ({after[key] / before[key]:.2f}x)")


def machine_line() -> str:
    """Platform, CPU count, torch threads, accelerator and the 1-minute load average."""
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (f"machine: {platform.platform()} | {platform.processor() or platform.machine()} | "
            f"cpus {os.cpu_count()} | torch {torch.__version__} threads "
            f"{torch.get_num_threads()} | {device} | load average "
            f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}")


def interleaved(candidates: dict[str, Callable[[], object]], repeats: int,
                warmup: int = 1, clock: str = "wall") -> dict[str, list[float]]:
    """Seconds per call of each candidate, calls interleaved so all see the same machine.

    Each round calls every candidate once, in an order shuffled per round (seeded): a call
    runs faster or slower after some candidates than after others (what they left in the
    caches and the allocator), and a fixed order would charge that to one candidate every
    round. `warmup` rounds are not kept. clock: a key of `CLOCKS`. Where CUDA is in use,
    each call is timed to its last kernel's end (a call returns as soon as its kernels are
    queued); the call before it ended the same way, so each starts on an idle GPU.
    """
    now = CLOCKS[clock]
    times: dict[str, list[float]] = {name: [] for name in candidates}
    order = random.Random(0)
    for round_index in range(warmup + repeats):
        for name in order.sample(list(candidates), k=len(candidates)):
            start = now()
            candidates[name]()
            settle()
            if round_index >= warmup:
                times[name].append(now() - start)
    return times


def settle() -> None:
    """Wait for the GPU's queued kernels, where CUDA is in use (nothing to wait for else)."""
    if torch.cuda.is_initialized():
        torch.cuda.synchronize()


def median_ms(seconds: list[float]) -> float:
    return 1000.0 * statistics.median(seconds)


class Ratio(NamedTuple):
    """How fast one candidate ran against another, round by round (`paired_ratio`): the
    median and the quartiles of the per-round ratios. The quartiles are the machine's
    noise that a reader needs to judge a target: on a shared 2-core CPU one ratio moves
    by +-0.05 between runs."""

    median: float
    low: float
    high: float

    def __str__(self) -> str:
        return f"{self.median:.2f} ({self.low:.2f}-{self.high:.2f})"

    @classmethod
    def of(cls, ratios: list[float]) -> Ratio:
        """The median and quartiles of ratios measured round by round (or process pair)."""
        return cls(statistics.median(ratios), percentile(ratios, 25), percentile(ratios, 75))


def paired_ratio(times: dict[str, list[float]], top: str, bottom: str) -> Ratio:
    """speed(top) / speed(bottom) from `interleaved` times, one ratio per round: both calls
    of a round saw the same machine, so a slow spell between rounds cancels out."""
    return Ratio.of([b / t for t, b in zip(times[top], times[bottom], strict=True)])


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0..100) by linear interpolation; nan for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100.0
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


@torch.no_grad()
def cached_greedy(backbone: VLBackbone, hidden: torch.Tensor, mask: torch.Tensor,
                  bank: AdapterBank | None, index: RowIndex | None, tokens: int
                  ) -> list[list[int]]:
    """The engine's decode loop (`modeling.decode_rows`): a first step that fills the
    key/value cache, then one token per row per step; `tokens` greedy tokens per row of the
    encoder output hidden [b, E, d], mask [b, E]."""
    state, logits = decode_rows.start(backbone, hidden, mask, bank, index)
    ids = [logits.argmax(-1)]
    for _ in range(tokens - 1):
        ids.append(state.step(backbone, ids[-1], bank, index).argmax(-1))
    return torch.stack(ids, 1).tolist()


def serving_backbone(name: str, seed: int = 0) -> VLBackbone:
    """The backbone `adapter-serve --backbone NAME` builds (same weights, same tokenizer)."""
    return load_backbone(ServeConfig(backbone=name, seed=seed))


def sharing_weights(model: torch.nn.Module, source: torch.nn.Module) -> torch.nn.Module:
    """`model` (a copy of `source`'s architecture) with every parameter and buffer made to
    hold `source`'s tensor: two modules, one copy of the weights in memory, so timing the
    two compares their code, not where each copy's weights landed."""
    tensors = dict(source.named_parameters(remove_duplicate=False))
    tensors |= dict(source.named_buffers(remove_duplicate=False))
    with torch.no_grad():
        for name, tensor in (*model.named_parameters(remove_duplicate=False),
                             *model.named_buffers(remove_duplicate=False)):
            if tensor.shape != tensors[name].shape:
                raise ValueError(f"{name}: {tuple(tensor.shape)} here, "
                                 f"{tuple(tensors[name].shape)} in the source")
            tensor.data = tensors[name].data
    return model


def random_batch(backbone: VLBackbone, rows: int, text: int = 12, labels: int = 4,
                 visual: int | None = None, seed: int = 0) -> VLBatch:
    """Seeded random requests for any family: `text` ids, `visual` feature vectors
    [rows, visual, feat_dim] as `encode_images` hands them over (None: one image,
    `backbone.tokens_per_image`: Florence-2's image tokens, BLIP's every ViT state) and
    `labels` teacher-forced label ids."""
    g = torch.Generator().manual_seed(seed)
    vocab = backbone.lm.config.vocab_size
    tokens = backbone.tokens_per_image if visual is None else visual
    return VLBatch(
        input_ids=torch.randint(3, vocab, (rows, text), generator=g),
        text_mask=torch.ones(rows, text, dtype=torch.bool),
        visual=torch.randn(rows, tokens, backbone.config.feat_dim, generator=g),
        visual_mask=torch.ones(rows, tokens, dtype=torch.bool),
        image_order=torch.zeros(rows, tokens, dtype=torch.long),
        labels=torch.randint(3, vocab, (rows, labels), generator=g))


def random_adapter(backbone: VLBackbone, recipe: list[MethodEntry], tasks: list[str],
                   seed: int, noise: float = 0.3) -> AdapterModel:
    """An AdapterModel whose trainable tensors are randomly perturbed (non-trivial outputs)."""
    model = AdapterModel(recipe, BackboneFacts.of(backbone), tasks)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad:
                param.add_(torch.randn(param.shape, generator=generator).to(param.device)
                           * noise)
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
