"""Why the bundled backbone's frames did not carry motion: a linear probe of a clip's
direction (left / right / up / down / still) from the frozen video tokens of a *random*
`small` backbone, in the old layout (one mean vector per frame) and the new one (a 2x2
grid per frame, `BackboneConfig.frame_grid`).

    python -m benchmarks.motion_probe [--world runs/data/pretrain-world]
    python -m benchmarks.motion_probe --backbone runs/backbone-small   # a pre-trained one

Clips with one moving shape (or two moving the same way) only, so the label is the clip's;
80% of them train the probe (Adam, 300 full-batch steps), 20% score it. If the probe
cannot read the direction from the tokens, no adapter or LM on top can.
"""

from __future__ import annotations

import argparse
import re
import time
from dataclasses import replace
from pathlib import Path

import torch

from modeling.backbone import VLBackbone
from modeling.config import preset
from training.pretrain import PRETRAIN_SEED, PixelCache, world_examples
from training.synthetic import generate
from training.synthetic.generate import SplitSizes

_MOTION = re.compile(r"\b(left|right|up|down|still)\b")


def labelled_clips(world: Path) -> tuple[list[str], torch.Tensor, list[str]]:
    """(clip ids, direction index [n], direction names) of the single-motion clips."""
    clips, names = [], []
    for example in world_examples(world, "train", ["tvc"]) + \
            world_examples(world, "val", ["tvc"]):
        motions = set(_MOTION.findall(example.targets[0]))
        if len(motions) == 1:
            clips.append(example.visual_ids[0])
            names.append(motions.pop())
    labels = sorted(set(names))
    return clips, torch.tensor([labels.index(n) for n in names]), labels


def probe_accuracy(features: torch.Tensor, labels: torch.Tensor, classes: int) -> float:
    """Held-out accuracy (percent) of a linear probe; features [n, f], labels [n]."""
    features = (features - features.mean(0)) / (features.std(0) + 1e-6)
    split = int(0.8 * len(features))
    probe = torch.nn.Linear(features.shape[1], classes)
    optimizer = torch.optim.Adam(probe.parameters(), lr=1e-2, weight_decay=1e-3)
    for _ in range(300):
        loss = torch.nn.functional.cross_entropy(probe(features[:split]), labels[:split])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    right = probe(features[split:]).argmax(1) == labels[split:]
    return 100.0 * right.float().mean().item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--world", default="runs/data/probe-world")
    parser.add_argument("--backbone", help="probe this saved backbone's frozen tokens instead")
    args = parser.parse_args()
    world, start = Path(args.world), time.time()
    if not (world / "world.json").is_file():
        generate(world, seed=PRETRAIN_SEED, sizes=SplitSizes(400, 100, 1))
    clips, labels, names = labelled_clips(world)
    cache = PixelCache(world, preset("small").vision.image_size)
    torch.manual_seed(0)
    layouts = {"one mean vector per frame (old)": replace(
        preset("small"), frame_grid=0, frame_order=False, cell_order=False, n_images=2),
        "2x2 grid per frame (new)": preset("small")}
    backbones = {name: VLBackbone.from_config(config, seed=0)
                 for name, config in layouts.items()}
    if args.backbone:
        backbones = {args.backbone: VLBackbone.from_pretrained(args.backbone)}
    for name, backbone in backbones.items():
        with torch.no_grad():
            features = torch.stack([backbone.encode_frames(cache.pixels(c, True))[0].flatten()
                                    for c in clips])
        accuracy = probe_accuracy(features, labels, len(names))
        print(f"{name}: {features.shape[1]} features per clip, {len(clips)} clips, "
              f"held-out direction accuracy {accuracy:.1f}% (chance {100 / len(names):.0f}%)")
    print(f"{args.backbone or 'random small tower, seed 0'}; wall {time.time() - start:.0f}s")


if __name__ == "__main__":
    main()
