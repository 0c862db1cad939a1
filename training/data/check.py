"""What `train-adapter data check` finds for one split of one task, without a model.

For a split: how many records its file holds and which format they were read as, how
many of the visual ids they name are found in the task's visual source (images, frame
folders or precomputed features) and which are not, for open questions how many have
their best answer among the answers of the training split, and for video tasks how many
videos have subtitles. Problems (a file that cannot be read, an empty split, a missing
image) are one line each; the command exits 2 when there is one. A split its release
withholds (YouCook2's test) reads empty with a note instead.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from modeling.tasks import TaskKind, VisualInput, get_task
from training.data.example import Example
from training.data.formats import SplitData
from training.data.records import DataFormatError
from training.data.visual_stores import (
    ImageFolder,
    MissingVisualError,
    VideoFrameFolder,
    VisualSource,
    open_visual_source,
)

FIRST_PROBLEMS = 5  # problems listed per split; the rest are counted


@dataclass
class SplitCheck:
    """The findings for one split: ``facts`` for the summary line, ``problems`` one line
    each."""

    task: str
    split: str
    facts: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    answers: set[str] = field(default_factory=set)  # every target of the split's examples

    def first_problems(self) -> list[str]:
        """The first ``FIRST_PROBLEMS`` problems, then a count of the others."""
        more = len(self.problems) - FIRST_PROBLEMS
        return self.problems[:FIRST_PROBLEMS] + ([f"... and {more} more"] if more > 0 else [])

    def summary(self) -> str:
        """One line: ``vqa/val: 3 records (format vqav2, detected); images: ...``."""
        return f"{self.task}/{self.split}: " + ("; ".join(self.facts)
                                                 or "not read (the problem is below)")


def open_source(task: str, visual: str | Path) -> tuple[VisualSource | None, str | None]:
    """The task's visual source, or ``None`` and the one-line reason it cannot be opened."""
    video = get_task(task).visual_input is VisualInput.VIDEO_FRAMES
    try:
        return open_visual_source(Path(visual), video), None
    except (NotADirectoryError, ValueError) as error:
        return None, _one_line(error)


def _one_line(error: Exception) -> str:
    if isinstance(error, FileNotFoundError) and error.filename:
        return f"{error.filename}: no such file"
    return " ".join(str(error).split("\n"))


def _kind(source: VisualSource) -> str:
    if isinstance(source, ImageFolder):
        return "images"
    return "frame folders" if isinstance(source, VideoFrameFolder) else "features"


def _missing(source: VisualSource, visual_id: str) -> str | None:
    """Why ``visual_id`` is not usable from ``source`` (one line), ``None`` when it is."""
    try:
        if visual_id in source:
            return None
        if isinstance(source, ImageFolder):
            source.image_path(visual_id)
        elif isinstance(source, VideoFrameFolder):
            source.frame_paths(visual_id)
        else:
            source.get(visual_id)
        return f"{visual_id!r} not found in {source.path}"
    except (MissingVisualError, ValueError) as error:
        return _one_line(error)


def _check_visuals(check: SplitCheck, examples: list[Example], source: VisualSource) -> None:
    first_use = {}
    for example in examples:
        for visual_id in example.visual_ids:
            first_use.setdefault(visual_id, example.example_id)
    missing = [(visual_id, reason) for visual_id, example_id in first_use.items()
               if (reason := _missing(source, visual_id)) is not None]
    check.facts.append(f"{_kind(source)}: {len(first_use) - len(missing)} found, "
                       f"{len(missing)} missing")
    check.problems += [f"{reason} (example {first_use[visual_id]})"
                       for visual_id, reason in missing]


def _check_answers(check: SplitCheck, examples: list[Example],
                   train_answers: set[str] | None) -> None:
    """Open questions: the split's answers, and how many of them training has seen."""
    labelled = [example for example in examples if example.targets]
    check.answers = {target for example in labelled for target in example.targets}
    if not labelled:
        check.facts.append("answers: none (unlabelled)")
    elif train_answers is None:
        check.facts.append(f"answers: {len(check.answers)} distinct")
    else:
        covered = sum(example.targets[0] in train_answers for example in labelled)
        check.facts.append(f"answers: {covered} of {len(labelled)} labelled questions "
                           f"({100 * covered / len(labelled):.1f}%) have their best answer "
                           f"among the {len(train_answers)} train answers")


def check_split(task: str, split: str, read: Callable[[], SplitData],
                source: VisualSource | None, train_answers: set[str] | None = None,
                with_subtitles: bool = False) -> SplitCheck:
    """Read one split with ``read`` and check it (see the module docstring).

    Args:
        source: the task's visual source; ``None`` when it could not be opened (that is
            reported once per task by the caller).
        train_answers: every target of the training split (open questions), for the
            coverage of a validation or test split; ``None`` for the training split.
        with_subtitles: a subtitles source is configured: count the videos it covers.
    """
    check = SplitCheck(task, split)
    try:
        data = read()
    except (DataFormatError, FileNotFoundError, ValueError) as error:
        check.problems.append(_one_line(error))
        return check
    examples = data.examples
    records = f"{len(examples)} record" + ("" if len(examples) == 1 else "s")
    check.facts.append(f"{records} (format {data.data_format}, {data.how})")
    if not examples and data.withheld is None:
        check.problems.append(f"no records for split {split!r} in this file")
    if source is not None:
        _check_visuals(check, examples, source)
    if get_task(task).kind is TaskKind.OPEN_QA:
        _check_answers(check, examples, train_answers)
    if with_subtitles:
        videos = {example.visual_ids[0]: bool(example.subtitles) for example in examples}
        check.facts.append(f"subtitles: {sum(videos.values())} of {len(videos)} videos")
    if data.withheld is not None:  # expected, not a problem: said so, not counted
        check.facts.append(f"note: {data.withheld}")
    return check
