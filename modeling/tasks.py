"""The eight VL-Adapter tasks: text prompt, kind, visual input and headline metric.

The prompts are VL-Adapter's (Sung et al., CVPR 2022, public code): the model input is
``prompt + question`` (or the prompt alone for image captioning), and the visual tokens
follow the text.

The one task definition of the project: training, serving and the registry's PEFT import
all read it, so it lives below them. Plain Python (no torch, nothing else of ours): the
torch-free registry imports it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum


class TaskKind(StrEnum):
    """What a task asks the decoder to produce."""

    OPEN_QA = "open_qa"
    BINARY = "binary"
    CAPTIONING = "captioning"
    MULTIPLE_CHOICE = "multiple_choice"
    VIDEO_CAPTIONING = "video_captioning"


class VisualInput(StrEnum):
    """What one example shows the vision tower."""

    ONE_IMAGE = "one_image"
    TWO_IMAGES = "two_images"
    VIDEO_FRAMES = "video_frames"


@dataclass(frozen=True)
class TaskSpec:
    """One task.

    Attributes:
        name: task key, e.g. ``"vqa"``.
        prompt: text put before the task's text input, e.g. ``"vqa: "``.
        kind: what the decoder produces.
        visual_input: one image, an image pair, or the frames of one video.
        metric: the key of the task's headline number among its evaluation metrics
            (percent), e.g. ``"accuracy"`` or ``"CIDEr"``.
    """

    name: str
    prompt: str
    kind: TaskKind
    visual_input: VisualInput
    metric: str

    @property
    def n_visual_ids(self) -> int:
        """How many entries ``Example.visual_ids`` holds: 1 image, 2 images or 1 video."""
        return 2 if self.visual_input is VisualInput.TWO_IMAGES else 1

    def format_source(self, body: str) -> str:
        """The encoder text: the prompt followed by ``body``, trailing spaces removed."""
        return f"{self.prompt}{body}".rstrip()

    @property
    def is_scored(self) -> bool:
        """True when the answer is the best-scoring of `candidate_labels` (NLVR2, multiple
        choice); False when the decoder generates it (open QA, captions)."""
        return self.kind in (TaskKind.BINARY, TaskKind.MULTIPLE_CHOICE)

    @property
    def is_captioning(self) -> bool:
        """True for image and video captioning: no question text, scored by CIDEr."""
        return self.kind in (TaskKind.CAPTIONING, TaskKind.VIDEO_CAPTIONING)

    def candidate_labels(self, n_choices: int = 0) -> list[str]:
        """The labels a scored task chooses between: NLVR2 "true"/"false", multiple
        choice "a0".."a{n-1}"; empty for generative tasks."""
        if self.kind is TaskKind.BINARY:
            return ["true", "false"]
        if self.kind is TaskKind.MULTIPLE_CHOICE:
            return [f"a{i}" for i in range(n_choices)]
        return []

    def answer_text(self, best: int, choices: Sequence[str] = ()) -> str:
        """The answer of a scored task whose best candidate is ``candidate_labels()[best]``:
        the label itself for NLVR2 ("true" / "false"), the chosen option's text for
        multiple choice (``choices[best]``)."""
        if self.kind is TaskKind.MULTIPLE_CHOICE:
            return choices[best]
        if self.kind is TaskKind.BINARY:
            return self.candidate_labels()[best]
        raise ValueError(f"task {self.name!r} generates its answer; it has no candidates")

    def source_text(self, text: str = "", choices: tuple[str, ...] = (),
                    subtitles: str = "") -> str:
        """The encoder text of one example, as VL-Adapter formats each task.

        Image tasks: prompt + question / statement (captioning: the prompt alone). Video QA:
        ``[Subs] ... [Q] ... [Choices] a0: ... a1: ...``; video captioning: ``[Subs] ...``.
        Training data readers and the server both build inputs here.
        """
        if self.kind is TaskKind.MULTIPLE_CHOICE:
            options = " ".join(f"a{index}: {choice}" for index, choice in enumerate(choices))
            body = f"[Q] {text.strip()} [Choices] {options}"
            return self.format_source(f"[Subs] {subtitles} {body}" if subtitles else body)
        if self.kind is TaskKind.VIDEO_CAPTIONING:
            return self.format_source(f"[Subs] {subtitles}" if subtitles else "")
        return self.format_source(text)


TASKS: dict[str, TaskSpec] = {
    spec.name: spec
    for spec in (
        TaskSpec("vqa", "vqa: ", TaskKind.OPEN_QA, VisualInput.ONE_IMAGE, "accuracy"),
        TaskSpec("gqa", "gqa: ", TaskKind.OPEN_QA, VisualInput.ONE_IMAGE, "accuracy"),
        TaskSpec("nlvr2", "nlvr: ", TaskKind.BINARY, VisualInput.TWO_IMAGES, "accuracy"),
        TaskSpec("caption", "caption: ", TaskKind.CAPTIONING, VisualInput.ONE_IMAGE, "CIDEr"),
        TaskSpec("tvqa", "tvqa: ", TaskKind.MULTIPLE_CHOICE, VisualInput.VIDEO_FRAMES, "accuracy"),
        TaskSpec(
            "how2qa", "how2qa: ", TaskKind.MULTIPLE_CHOICE, VisualInput.VIDEO_FRAMES, "accuracy"
        ),
        TaskSpec("tvc", "tvc: ", TaskKind.VIDEO_CAPTIONING, VisualInput.VIDEO_FRAMES, "CIDEr"),
        TaskSpec("yc2c", "yc2c: ", TaskKind.VIDEO_CAPTIONING, VisualInput.VIDEO_FRAMES, "CIDEr"),
    )
}


def get_task(name: str) -> TaskSpec:
    """The spec of task ``name``; an unknown name raises ``ValueError`` listing the known ones."""
    try:
        return TASKS[name]
    except KeyError:
        raise ValueError(f"unknown task {name!r}; known tasks: {', '.join(TASKS)}") from None


def task_prompt(name: str) -> str:
    """The prompt an artifact records for task ``name``: the spec's for the eight tasks
    (NLVR2's is ``"nlvr: "``), ``"<name>: "`` for any other task, VL-Adapter's pattern."""
    return TASKS[name].prompt if name in TASKS else f"{name}: "
