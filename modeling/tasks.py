"""The eight VL-Adapter tasks: text prompt, kind, visual input and headline metric.

The prompts are VL-Adapter's (Sung et al., CVPR 2022, public code): the model input is
``prompt + question`` (or the prompt alone for image captioning), and the visual tokens
follow the text. A backbone family fine-tuned with prompts of its own (Florence-2) replaces
some of them: ``FAMILY_PROMPTS``, read by ``TaskSpec.prompt_for``.

The one task definition of the project: training, serving and the registry's PEFT import
all read it, so it lives below them. Plain Python (no torch, nothing else of ours): the
torch-free registry imports it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

# The family of VL-T5 / VL-BART backbones (`modeling.families.vl`): VL-Adapter's prompts.
DEFAULT_FAMILY = "vl"
# Every value `BackboneConfig.family` takes (the modules of `modeling.families`, as
# `train-adapter backbone info` prints them): what a caller without the backbone at hand
# (the registry's `import-peft --family`) may name.
BACKBONE_FAMILIES = (DEFAULT_FAMILY, "florence2", "blip")

# Per backbone family (`BackboneConfig.family`), the prompts that replace a task's own on
# that family's backbones. Training and serving read them through `TaskSpec.prompt_for`
# alone, so an adapter is served with the prompt it was trained with.
FAMILY_PROMPTS: dict[str, dict[str, str]] = {
    "florence2": {
        # Florence-2 captions on its task token `<CAPTION>`, which Florence2Processor
        # (`task_prompts_without_inputs`) expands to this sentence before tokenising: the
        # text a Florence-2 checkpoint was trained to caption from.
        "caption": "What does the image describe?",
        # Florence-2 has no question-answering task token. Its processor passes any text
        # that is not one of its tokens through unchanged, and the common fine-tuning
        # recipe for questions (Hugging Face's Florence-2 DocVQA fine-tune: "<DocVQA>" +
        # question) prefixes a new tag in the task-token style. We do the same: the tag
        # keeps VQA and GQA apart under one shared adapter (VL-Adapter's reason for
        # prompts), and a client that uses Florence2Processor builds the same string.
        "vqa": "<VQA>",
        "gqa": "<GQA>",
    },
}

# Per backbone family, text the decoder reads after its start token before it answers
# (a decoder prompt): the answer is its continuation, and the loss and the returned text
# cover the continuation only. BLIP captions this way: BlipForConditionalGeneration's
# `generate(pixel_values, input_ids=prefix)` continues "a picture of" (the BLIP paper's
# captioning prompt, the one its captioning checkpoints were fine-tuned with). Generative
# tasks only: candidate scoring (`modeling.generation.score_candidates`) reads no prompt.
DECODER_PROMPTS: dict[str, dict[str, str]] = {
    "blip": {"caption": "a picture of"},
}


class TaskKind(StrEnum):
    """What a task asks the decoder to produce."""

    OPEN_QA = "open_qa"
    BINARY = "binary"
    CAPTIONING = "captioning"
    MULTIPLE_CHOICE = "multiple_choice"
    VIDEO_CAPTIONING = "video_captioning"


class ChoiceAnswer(StrEnum):
    """How a multiple-choice answer is written, in training and when scoring candidates.

    LABEL: the right option's label ``a{index}``, as VL-Adapter trains and scores it (the
    LM has to find which label lists the answer). TEXT: the option's own text, every
    option's text scored as the answer by the sum of its tokens' log-probabilities (the
    cloze form small LMs answer far better; README, "The bundled benchmark"). TEXT_MEAN:
    trained as TEXT, scored by the mean over the option's tokens instead, so a long right
    option (a real TVQA answer is a sentence) is not outscored by a short wrong one for
    having more tokens to pay for. An adapter is served with the form it was trained with
    (its manifest's ``choice_answer``).
    """

    LABEL = "label"
    TEXT = "text"
    TEXT_MEAN = "text_mean"

    @property
    def per_token(self) -> bool:
        """Whether candidates are scored by their mean token log-probability (not the sum)."""
        return self is ChoiceAnswer.TEXT_MEAN


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

    def prompt_for(self, family: str = DEFAULT_FAMILY) -> str:
        """The prompt on a backbone of ``family`` (``BackboneConfig.family``): the family's
        override in ``FAMILY_PROMPTS`` when it has one for this task, else ``prompt``."""
        return FAMILY_PROMPTS.get(family, {}).get(self.name, self.prompt)

    def decoder_prompt_for(self, family: str = DEFAULT_FAMILY) -> str:
        """The decoder prompt on a backbone of ``family`` (``DECODER_PROMPTS``); "" (the
        decoder starts from its start token alone) for most tasks and families."""
        return DECODER_PROMPTS.get(family, {}).get(self.name, "")

    def format_source(self, body: str, family: str = DEFAULT_FAMILY) -> str:
        """The encoder text: the family's prompt followed by ``body``, trailing spaces
        removed. The one place a prompt meets its text (training's readers and the server's
        requests both come here)."""
        return f"{self.prompt_for(family)}{body}".rstrip()

    @property
    def is_scored(self) -> bool:
        """True when the answer is the best-scoring of `candidate_labels` (NLVR2, multiple
        choice); False when the decoder generates it (open QA, captions)."""
        return self.kind in (TaskKind.BINARY, TaskKind.MULTIPLE_CHOICE)

    @property
    def is_captioning(self) -> bool:
        """True for image and video captioning: no question text, scored by CIDEr."""
        return self.kind in (TaskKind.CAPTIONING, TaskKind.VIDEO_CAPTIONING)

    def candidate_labels(self, choices: Sequence[str] = (),
                         answer: ChoiceAnswer = ChoiceAnswer.LABEL) -> list[str]:
        """The labels a scored task chooses between, in the order of `choices`: NLVR2
        "true"/"false"; multiple choice "a0".."a{n-1}" (`ChoiceAnswer.LABEL`) or the
        options' own texts (`ChoiceAnswer.TEXT`, `TEXT_MEAN`); empty for generative tasks.
        The label of the right answer is also the training target."""
        if self.kind is TaskKind.BINARY:
            return ["true", "false"]
        if self.kind is TaskKind.MULTIPLE_CHOICE:
            if answer != ChoiceAnswer.LABEL:
                return list(choices)
            return [choice_label(i) for i in range(len(choices))]
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
                    subtitles: str = "", family: str = DEFAULT_FAMILY) -> str:
        """The encoder text of one example on a backbone of ``family``, as VL-Adapter
        formats each task.

        Image tasks: prompt + question / statement (captioning: the prompt alone). Video QA:
        ``[Subs] ... [Q] ... [Choices] a0: ... a1: ...``; video captioning: ``[Subs] ...``.
        Training data readers and the server both build inputs here.
        """
        if self.kind is TaskKind.MULTIPLE_CHOICE:
            body = choice_body(text, choices)
            return self.format_source(f"[Subs] {subtitles} {body}" if subtitles else body,
                                      family)
        if self.kind is TaskKind.VIDEO_CAPTIONING:
            return self.format_source(f"[Subs] {subtitles}" if subtitles else "", family)
        return self.format_source(text, family)


def choice_label(index: int) -> str:
    """The label of option `index` of a multiple-choice question: ``"a0"``, ``"a1"``, ...
    (VL-Adapter's), in the encoder text and as the answer in `ChoiceAnswer.LABEL` form."""
    return f"a{index}"


def choice_body(text: str, choices: Sequence[str]) -> str:
    """A question with its numbered options, as VL-Adapter writes multiple choice:
    ``"[Q] which way does the red circle move ? [Choices] a0: left a1: up ..."``; the answer
    is the label ``a{index}`` of the right option (`TaskSpec.candidate_labels`)."""
    options = " ".join(f"{choice_label(index)}: {choice}" for index, choice in enumerate(choices))
    return f"[Q] {text.strip()} [Choices] {options}"


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


def task_prompt(name: str, family: str = DEFAULT_FAMILY) -> str:
    """The prompt an artifact records for task ``name`` on a backbone of ``family``: the
    spec's for the eight tasks (NLVR2's is ``"nlvr: "``; ``TaskSpec.prompt_for``),
    ``"<name>: "`` for any other task, VL-Adapter's pattern."""
    return TASKS[name].prompt_for(family) if name in TASKS else f"{name}: "
