"""Run configs over the bundled synthetic world (the demo, the tests and the benchmark)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from modeling.tasks import TASKS, VisualInput
from training.config import RunConfig, parse_config

DEFAULT_BATCH = 32


def synthetic_tasks(world: str | Path, tasks: list[str] | None = None,
                    batch_size: int = DEFAULT_BATCH) -> dict[str, dict[str, Any]]:
    """The `tasks:` section for a world written by `training.synthetic.generate`."""
    root = Path(world)
    files = {"vqa": "vqa/{}.json", "gqa": "gqa/{}.json", "nlvr2": "nlvr2/{}.json",
             "caption": "coco/dataset_coco.json", "tvqa": "tvqa/{}.jsonl",
             "how2qa": "how2qa/{}.jsonl", "tvc": "tvc/{}.jsonl", "yc2c": "yc2c/{}.jsonl"}
    out = {}
    for task in tasks or list(TASKS):
        video = TASKS[task].visual_input is VisualInput.VIDEO_FRAMES
        entry = {split: str(root / files[task].format(split)) for split in ("train", "val", "test")}
        entry.update(visual=str(root / ("videos" if video else "images")), batch_size=batch_size)
        if video:
            entry["subtitles"] = str(root / "subtitles.jsonl")
        if task == "vqa":
            entry["annotations"] = str(root / "vqa" / "{split}_annotations.json")
        out[task] = entry
    return out


def synthetic_config(world: str | Path, backbone: str | Path, methods: Any, steps: int,
                     **overrides: Any) -> RunConfig:
    """A validated run config on the synthetic world (`methods`: preset name or list)."""
    raw = {"backbone": str(backbone), "tasks": synthetic_tasks(world), "methods": methods,
           "steps": steps, **overrides}
    return parse_config(raw)
