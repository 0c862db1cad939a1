"""`train-adapter pretrain`: give the bundled benchmark a frozen backbone worth adapting.

A random backbone knows nothing, and adapters on it measure little (shared/notes/
synthetic-benchmark.md). So the `small` preset is first trained end to end — CLIP tower,
projection and LM — on a *separate* synthetic world (another seed): image captions,
VQA-style and GQA-style questions and video captions, VL-T5's recipe of captioning plus
visual QA. Downstream adapters then train on the main world's eight tasks, NLVR2 and
video multiple choice included, which pre-training never saw.

The result is a backbone folder (weights + word tokenizer) reused while it exists.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from modeling.backbone import VLBackbone
from modeling.config import preset
from modeling.inputs import VisualTokens, image_processor, images_to_pixels, make_batch
from training.adapter_step import sequence_loss
from training.batches import training_target
from training.config import TaskData, load_task_split
from training.data.example import Example
from training.data.visual_stores import ImageFolder, VideoFrameFolder, load_image
from training.evaluation import predict
from training.features import features_for
from training.metrics import evaluate
from training.synthetic import generate
from training.synthetic.generate import SplitSizes
from training.synthetic_run import synthetic_tasks
from training.text import corpus_tokenizer

PRETRAIN_TASKS = ("caption", "vqa", "gqa", "tvc")
PRETRAIN_SEED = 1000
VIDEO_TASKS = ("tvqa", "how2qa", "tvc", "yc2c")
LOG_FILE = "pretrain_log.json"
_MOTION = re.compile(r"\b(left|right|up|down|still)\b")


@dataclass(frozen=True)
class PretrainSettings:
    steps: int = 1500
    batch_size: int = 48
    lr: float = 5e-4
    seed: int = 0
    sizes: SplitSizes = SplitSizes(600, 100, 100)


def world_examples(root: Path, split: str, tasks) -> list[Example]:
    """The `split` examples of `tasks` in a world written by `generate`."""
    entries = synthetic_tasks(root, list(tasks))
    return [e for t in tasks for e in load_task_split(t, TaskData(**entries[t]), split)]


class PixelCache:
    """Every image / video of a world as CLIP pixel tensors, loaded once."""

    def __init__(self, root: Path, image_size: int):
        self.images, self.videos = ImageFolder(root / "images"), VideoFrameFolder(root / "videos")
        self.processor = image_processor(image_size)
        self.table: dict[str, torch.Tensor] = {}

    def pixels(self, visual_id: str, video: bool) -> torch.Tensor:
        if visual_id not in self.table:
            paths = self.videos.frame_paths(visual_id) if video else \
                [self.images.image_path(visual_id)]
            self.table[visual_id] = images_to_pixels([load_image(p) for p in paths],
                                                     self.processor)
        return self.table[visual_id]


def visual_tokens(backbone: VLBackbone, cache: PixelCache, example: Example) -> VisualTokens:
    """Differentiable visual tokens of one example (the tower is being trained)."""
    if example.task in VIDEO_TASKS:
        tokens, valid = backbone.frame_tokens(cache.pixels(example.visual_ids[0], True))
        return VisualTokens.video(tokens[valid], backbone.config)
    per_image = [backbone.image_tokens(cache.pixels(v, False))[0] for v in example.visual_ids]
    return VisualTokens.concat(per_image)


def pretrain_step(backbone: VLBackbone, cache: PixelCache, rows: list[Example],
                  rng: np.random.Generator) -> torch.Tensor:
    targets = [training_target(e, rng)[0] for e in rows]
    # make_batch copies the features into its padded tensor, which autograd tracks, so
    # the loss reaches the vision tower through it.
    visuals = [visual_tokens(backbone, cache, e) for e in rows]
    batch = make_batch(backbone.tokenizer, [e.source_text for e in rows], visuals, targets)
    return sequence_loss(backbone(batch), batch.labels)


def prepare(data: Path, settings: PretrainSettings
            ) -> tuple[VLBackbone, PixelCache, list[Example]]:
    """Both worlds written under `data`, the word tokenizer over them, and the seeded
    random `small` backbone in train mode, with the pre-training world's pixels and
    examples: everything a pre-training run starts from."""
    main_paths = generate(data / "world", seed=settings.seed, sizes=settings.sizes)
    generate(data / "pretrain-world", seed=PRETRAIN_SEED, sizes=settings.sizes)
    every = world_examples(data / "world", "train", main_paths)
    train = world_examples(data / "pretrain-world", "train", PRETRAIN_TASKS)
    config = preset("small")
    tokenizer = corpus_tokenizer(every + train, config.lm_type, config.lm["vocab_size"])
    torch.manual_seed(settings.seed)
    backbone = VLBackbone.from_config(config, seed=settings.seed, tokenizer=tokenizer)
    backbone.requires_grad_(True)
    backbone.train()
    return backbone, PixelCache(data / "pretrain-world", config.vision.image_size), train


def train_losses(backbone: VLBackbone, cache: PixelCache, train: list[Example],
                 settings: PretrainSettings) -> Iterator[float]:
    """Run the `settings.steps` optimizer steps (AdamW, 100 warm-up steps, linear decay),
    yielding each step's loss; a caller may stop early (the schedule stays the full run's)."""
    optimizer = torch.optim.AdamW(backbone.parameters(), lr=settings.lr, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / 100) * max(0.0, 1 - s / settings.steps))
    rng = np.random.default_rng(settings.seed)
    for _ in range(settings.steps):
        rows = [train[i] for i in rng.choice(len(train), settings.batch_size, replace=False)]
        loss = pretrain_step(backbone, cache, rows, rng)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(backbone.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        yield loss.item()


def pretrain(out_dir: str | Path, data_dir: str | Path,
             settings: PretrainSettings = PretrainSettings(), show_progress: bool = True
             ) -> VLBackbone:
    """Pre-train (or reuse) the benchmark backbone in `out_dir`; `data_dir` gets both worlds."""
    out, data = Path(out_dir), Path(data_dir)
    if (out / "vladapter_backbone.json").is_file():
        return VLBackbone.from_pretrained(out)
    backbone, cache, train = prepare(data, settings)
    start, losses = time.time(), []
    steps = train_losses(backbone, cache, train, settings)
    bar = tqdm(steps, total=settings.steps, desc="pretrain", disable=not show_progress)
    for loss in bar:
        losses.append(round(loss, 4))
        seconds = (time.time() - start) / len(losses)
        bar.set_postfix(loss=f"{loss:.3f}", s_per_step=f"{seconds:.2f}")
    backbone.requires_grad_(False)
    backbone.eval()
    backbone.save_pretrained(out)
    write_log(out, settings, losses, time.time() - start)
    frozen = VLBackbone.from_pretrained(out)
    check_attributes(frozen, data / "pretrain-world", out)
    return frozen


def write_log(out: Path, settings: PretrainSettings, losses: list[float],
              seconds: float) -> None:
    """`pretrain_log.json`: the settings, the loss of every step and the wall time, so a
    shipped backbone can be checked against a short re-run (tests/training)."""
    log = {"settings": asdict(settings),
           "threads": torch.get_num_threads(), "seconds": round(seconds), "loss": losses}
    (out / LOG_FILE).write_text(json.dumps(log, indent=1))


def motion_accuracy(predictions: dict[str, str], examples: list[Example]) -> float:
    """Percent of video captions whose first motion word (left, right, up, down, still)
    matches the reference's: can the frozen frame features tell how shapes move?"""
    right = counted = 0
    for example in examples:
        wanted = _MOTION.findall(example.targets[0])
        if not wanted:
            continue
        said = _MOTION.findall(predictions.get(example.example_id, ""))
        counted += 1
        right += bool(said) and said[0] == wanted[0]
    return 100.0 * right / max(counted, 1)


def check_attributes(backbone: VLBackbone, root: Path, out: Path) -> dict:
    """Per question type accuracy of the pre-trained backbone on its own world's val split
    (the note's advice: know what the frozen model can see before comparing methods), and
    for video captions whether it names the right motion (chance: 20)."""
    report = {}
    for task, folder in (("vqa", "images"), ("gqa", "images"), ("tvc", "videos")):
        val = world_examples(root, "val", [task])
        features = features_for(backbone, task, root / folder, val, out / "feature-cache",
                                backbone.fingerprint())
        predictions = predict(backbone, None, task, val, features)
        report[task] = evaluate(task, predictions, val, use_java=False)
        if task == "tvc":
            report[task] = {"CIDEr": report[task]["CIDEr"],
                            "motion": motion_accuracy(predictions, val)}
    (out / "pretrain_report.json").write_text(json.dumps(report, indent=2))
    for task, metrics in report.items():
        shown = ", ".join(f"{k.split('/')[-1]} {v:.1f}" for k, v in metrics.items())
        print(f"pre-trained backbone, {task} val: {shown}")
    return report
