"""One entry point from a task name and a file to examples, and the data-ratio subsample."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from modeling.tasks import get_task
from training.data.example import Example
from training.data.image_text import load_coco_captions, load_gqa, load_nlvr2, load_vqa
from training.data.video_text import load_subtitles, load_video_captions, load_video_qa


@dataclass(frozen=True)
class LoadOptions:
    """What some readers need beyond the file; each reader uses only its own fields.

    Attributes:
        split: COCO Karpathy split to take from ``dataset_coco.json`` (required for caption).
        vqa_annotations_path: official VQAv2 annotations file giving the 10 raw answers.
        subtitles_path: subtitles JSONL for the video tasks.
        one_per_caption: caption tasks yield one example per reference (training); ``None``
            means: for COCO when ``split == "train"``, never for video captions.
    """

    split: str | None = None
    vqa_annotations_path: Path | None = None
    subtitles_path: Path | None = None
    one_per_caption: bool | None = None


Loader = Callable[[Path, LoadOptions], list[Example]]


def _load_caption(path: Path, options: LoadOptions) -> list[Example]:
    if options.split is None:
        raise ValueError("caption: dataset_coco.json holds every split; pass split=")
    return load_coco_captions(path, options.split, one_per_caption=options.one_per_caption)


def _subtitles(options: LoadOptions) -> dict[str, str] | None:
    return load_subtitles(options.subtitles_path) if options.subtitles_path else None


def _video_qa_loader(task: str) -> Loader:
    def load(path: Path, options: LoadOptions) -> list[Example]:
        """Multiple-choice questions of ``task``, with subtitles when given."""
        return load_video_qa(path, task, subtitles=_subtitles(options))

    return load


def _video_caption_loader(task: str) -> Loader:
    def load(path: Path, options: LoadOptions) -> list[Example]:
        """Clip captions of ``task``, with subtitles when given."""
        return load_video_captions(
            path,
            task,
            subtitles=_subtitles(options),
            one_per_caption=bool(options.one_per_caption),
        )

    return load


LOADERS: dict[str, Loader] = {
    "vqa": lambda path, options: load_vqa(path, annotations_path=options.vqa_annotations_path),
    "gqa": lambda path, options: load_gqa(path),
    "nlvr2": lambda path, options: load_nlvr2(path),
    "caption": _load_caption,
    "tvqa": _video_qa_loader("tvqa"),
    "how2qa": _video_qa_loader("how2qa"),
    "tvc": _video_caption_loader("tvc"),
    "yc2c": _video_caption_loader("yc2c"),
}


def load_split(
    task: str,
    path: str | Path,
    *,
    split: str | None = None,
    vqa_annotations_path: str | Path | None = None,
    subtitles_path: str | Path | None = None,
    one_per_caption: bool | None = None,
) -> list[Example]:
    """The examples of one split file of ``task``, read by that task's reader.

    Raises:
        ValueError: unknown task, or ``split`` missing for ``caption``.
        FileNotFoundError: a file does not exist.
        DataFormatError: a file is malformed (the message names file, line or record, field).
    """
    get_task(task)
    options = LoadOptions(
        split=split,
        vqa_annotations_path=Path(vqa_annotations_path) if vqa_annotations_path else None,
        subtitles_path=Path(subtitles_path) if subtitles_path else None,
        one_per_caption=one_per_caption,
    )
    return LOADERS[task](Path(path), options)


def subsample(examples: Sequence[Example], ratio: float, seed: int) -> list[Example]:
    """A seeded random fraction of ``examples`` (the paper's 1%-100% data ratio).

    Keeps ``round(ratio * len(examples))`` examples (at least 1 of a non-empty list) in their
    original order; the same seed and input give the same subset.

    Raises:
        ValueError: ``ratio`` is not in (0, 1].
    """
    if not 0.0 < ratio <= 1.0:
        raise ValueError(f"data ratio must be in (0, 1], got {ratio}")
    if not examples:
        return []
    keep = max(1, round(ratio * len(examples)))
    chosen = np.random.default_rng(seed).choice(len(examples), size=keep, replace=False)
    return [examples[index] for index in sorted(chosen.tolist())]
