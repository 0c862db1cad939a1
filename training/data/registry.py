"""One entry point from a task name and a file to examples, and the data-ratio subsample.

``FORMATS`` is the one list of the file layouts each task reads; ``read_split`` picks the
configured one or detects it from the file's top-level structure, and every error it
lets through names the format read as and the one detected.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from modeling.tasks import get_task
from training.data.example import Example
from training.data.formats import DataFormat, LoadOptions, SplitData, format_note
from training.data.image_text import IMAGE_TEXT_FORMATS
from training.data.records import DataFormatError, Document, read_document
from training.data.video_text import VIDEO_TEXT_FORMATS

# task -> its formats, in detection order (a format keyed by a top-level key first)
FORMATS: dict[str, tuple[DataFormat, ...]] = {**IMAGE_TEXT_FORMATS, **VIDEO_TEXT_FORMATS}


def format_names(task: str) -> tuple[str, ...]:
    """The values ``format:`` may take for ``task``."""
    return tuple(data_format.name for data_format in FORMATS[get_task(task).name])


def detect_format(task: str, document: Document) -> DataFormat | None:
    """The first of ``task``'s formats whose structure ``document`` has; ``None`` if none."""
    return next((f for f in FORMATS[task] if f.matches(document)), None)


def _chosen_format(task: str, document: Document, name: str | None,
                   detected: DataFormat | None) -> DataFormat:
    """The format named ``name`` (or else ``detected``); ``DataFormatError`` listing the
    task's formats when there is neither, ``ValueError`` for an unknown name."""
    if name is not None:
        if name not in format_names(task):
            raise ValueError(f"{task}: unknown format {name!r}; expected one of "
                             f"{', '.join(format_names(task))}")
        return next(f for f in FORMATS[task] if f.name == name)
    if detected is None:
        expected = "; ".join(f"{f.name!r} = {f.summary}" for f in FORMATS[task])
        raise DataFormatError(document.path, "top level", "<document>",
                              f"one of the {task} formats: {expected}", document.describe(),
                              "detected: none of them")
    return detected


def read_split(task: str, path: str | Path, options: LoadOptions | None = None) -> SplitData:
    """The examples of one split file of ``task``, and the format it was read as.

    Raises:
        ValueError: unknown task or format, or ``options.split`` missing where the file
            holds every split (COCO, YouCook2).
        FileNotFoundError: a file does not exist.
        DataFormatError: a file is malformed; the message names file, line or record,
            field, the format the file was read as and the one detected.
    """
    options = options or LoadOptions()
    get_task(task)
    try:
        document = read_document(Path(path))
    except DataFormatError as error:
        wanted = f"read as {task} format {options.data_format!r}" if options.data_format \
            else f"no {task} format detected"
        raise error.in_format(f"{wanted}: the file is not JSON text") from None
    detected = detect_format(task, document)
    chosen = _chosen_format(task, document, options.data_format, detected)
    configured = options.data_format is not None
    try:
        examples = chosen.read(document, options)
    except DataFormatError as error:
        if error.path != document.path or error.data_format is not None:
            raise  # a side file (annotations, subtitles) says its own format
        raise error.in_format(format_note(task, chosen, detected, configured)) from None
    withheld = None if examples else chosen.withheld.get(options.split or "")
    return SplitData(examples, chosen.name, detected.name if detected else None, configured,
                     withheld)


def load_split(
    task: str,
    path: str | Path,
    *,
    split: str | None = None,
    data_format: str | None = None,
    vqa_annotations_path: str | Path | None = None,
    subtitles_path: str | Path | None = None,
    one_per_caption: bool | None = None,
) -> list[Example]:
    """The examples of one split file of ``task`` (``read_split`` without the format).

    Raises:
        ValueError, FileNotFoundError, DataFormatError: as ``read_split``.
    """
    options = LoadOptions(
        split=split,
        data_format=data_format,
        vqa_annotations_path=Path(vqa_annotations_path) if vqa_annotations_path else None,
        subtitles_path=Path(subtitles_path) if subtitles_path else None,
        one_per_caption=one_per_caption,
    )
    return read_split(task, path, options).examples


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
