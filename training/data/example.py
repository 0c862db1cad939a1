"""The one example type every reader yields, whatever the task."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Example:
    """One model input with what counts as a right output.

    Attributes:
        task: task key from ``modeling.tasks.TASKS``.
        example_id: id unique within a split (question id, NLVR2 identifier, COCO id, ...);
            predictions are keyed by it.
        visual_ids: image ids (1, or 2 for NLVR2 in order img0, img1) or the video name.
        source_text: encoder text, already starting with the task prompt (``"vqa: ..."``).
        targets: acceptable decoder outputs, best first; empty when the split has no labels.
        target_weights: one weight per target (VQA / GQA label scores in [0, 1]); empty when
            every target counts fully.
        answers: the raw annotator answers (10 for VQAv2) for the official VQA metric; empty
            when the data file has none.
        choices: answer options of a multiple-choice question, in order ``a0, a1, ...``.
        label: index of the right choice (multiple choice) or 0/1 (NLVR2); ``None`` otherwise.
        question_type: question category for per-type results (VQA ``question_type``, the
            synthetic world's ``colour``/``count``/...); ``None`` when unknown.
        time_span: ``(start, end)`` in seconds of the moment a video question is about.
        text: the question or statement as written in the data file (no prompt), what a
            client sends to the server.
        subtitles: the clip's subtitle text (video tasks), also part of ``source_text``.
    """

    task: str
    example_id: str
    visual_ids: tuple[str, ...]
    source_text: str
    targets: tuple[str, ...] = ()
    target_weights: tuple[float, ...] = ()
    answers: tuple[str, ...] = ()
    choices: tuple[str, ...] = ()
    label: int | None = None
    question_type: str | None = None
    time_span: tuple[float, float] | None = None
    # Raw inputs already folded into source_text: kept for clients, not part of identity.
    text: str = field(default="", compare=False)
    subtitles: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        if self.target_weights and len(self.target_weights) != len(self.targets):
            raise ValueError(
                f"example {self.example_id}: {len(self.target_weights)} target weights for "
                f"{len(self.targets)} targets"
            )
        if not self.visual_ids:
            raise ValueError(f"example {self.example_id}: no visual ids")


def caption_examples(example_id: str, references: tuple[str, ...], one_per_caption: bool,
                     **fields: Any) -> list[Example]:
    """The examples of one captioned image or clip (COCO, TVC, YouCook2).

    one_per_caption: one example per reference, ids ``"<example_id>#<j>"`` with one target
    each (training); otherwise one example with every reference as a target (evaluation).
    fields: the other ``Example`` fields, shared by every example.
    """
    if one_per_caption:
        return [Example(example_id=f"{example_id}#{index}", targets=(reference,), **fields)
                for index, reference in enumerate(references)]
    return [Example(example_id=example_id, targets=references, **fields)]
