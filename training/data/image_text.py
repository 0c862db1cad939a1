"""Readers of the image-text tasks, in the official releases and VL-T5's preprocessed files.

Each format lists the fields its reader uses; any other field is ignored, a missing or
malformed used field is a ``DataFormatError``.

- VQAv2, ``vqav2`` (official): ``v2_OpenEnded_mscoco_<split>_questions.json`` =
  ``{data_subtype, questions: [{image_id, question, question_id}]}`` and, for labelled
  splits, ``v2_mscoco_<split>_annotations.json`` = ``{annotations: [{question_id,
  answers: [{answer}], question_type?}]}``; the label is VL-T5's soft score of the 10
  answers, the image ``COCO_<data_subtype>_<image_id:012d>`` (``test-dev2015`` questions
  use ``test2015`` images).
- VQAv2, ``vl-t5`` (VL-T5 / VL-Adapter ``karpathy_<split>.json``): a JSON list of
  ``{img_id, sent, question_id, label?: {answer: score}, question_type?}``; the raw
  answers come from the official annotations file when given.
- GQA, ``gqa`` (official ``<split>_balanced_questions.json``): ``{question_id:
  {imageId, question, answer?, types?: {structural}}}``; ``vl-t5``: the VQA list above.
- NLVR2, ``nlvr2`` (official ``<split>.json``, JSON lines): ``{identifier, sentence,
  label: "True"|"False"}``, images ``<identifier minus its last part>-img0/1``;
  ``vl-t5``: a JSON list of ``{identifier, img0, img1, sent, label: 0|1}``.
- COCO captions, ``karpathy``: ``dataset_coco.json`` = ``{images: [{filename, cocoid,
  split, sentences: [{raw}]}]}``, ``restval`` merged into ``train``; the image is the
  file name's stem, found in the image folder or its sub-folders (``filepath``:
  ``train2014/``, ``val2014/``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from modeling.tasks import get_task
from training.data.example import Example, caption_examples
from training.data.formats import DataFormat, LoadOptions
from training.data.records import (
    DataFormatError,
    Document,
    Record,
    Shape,
    identified_records,
    read_document,
)
from training.metrics.vqa import vqa_label

COCO_SPLIT_MEMBERS: dict[str, tuple[str, ...]] = {
    "train": ("train", "restval"),
    "val": ("val",),
    "test": ("test",),
}
# VQAv2 test-dev questions are about a subset of the test2015 images.
VQA_IMAGE_FOLDER = {"test-dev2015": "test2015"}
VQA_ANNOTATIONS_FORMAT = ("VQAv2 annotations file {annotations: [{question_id, answers: "
                          "[{answer}], question_type?}]}")


@dataclass(frozen=True)
class VqaAnnotation:
    """One question's entry of an official VQAv2 annotations file."""

    answers: tuple[str, ...]
    question_type: str | None


def load_vqa_annotations(path: Path) -> dict[str, VqaAnnotation]:
    """Question id -> its 10 raw answers and question type, from an official annotations
    file; errors say the file is read as one."""
    annotations = {}
    try:
        records = read_document(path).items("annotations")
        for question_id, record in identified_records(records, "question_id", unique=False):
            answers = tuple(answer.text("answer", allow_empty=True)
                            for answer in record.objects("answers"))
            question_type = record.text("question_type") if record.has("question_type") \
                else None
            annotations[question_id] = VqaAnnotation(answers, question_type)
    except DataFormatError as error:
        raise error.in_format(f"read as a {VQA_ANNOTATIONS_FORMAT}") from None
    return annotations


def _scored_targets(label: dict[str, float]) -> tuple[tuple[str, ...], tuple[float, ...]]:
    """Label answers sorted best first (ties alphabetically), with their scores."""
    ranked = sorted(label.items(), key=lambda item: (-item[1], item[0]))
    return tuple(answer for answer, _ in ranked), tuple(score for _, score in ranked)


def _question(task: str, question_id: str, image_id: str, text: str, label: dict[str, float],
              family: str, answers: tuple[str, ...] = (),
              question_type: str | None = None) -> Example:
    """One open question (VQA / GQA) with its label ``{answer: score}`` as targets, its
    encoder text prompted for a backbone of ``family``."""
    targets, weights = _scored_targets(label)
    return Example(task=task, example_id=question_id, visual_ids=(image_id,),
                   source_text=get_task(task).format_source(text, family), text=text,
                   targets=targets,
                   target_weights=weights, answers=answers, question_type=question_type)


def _read_vl_t5_questions(document: Document, task: str,
                          annotations: dict[str, VqaAnnotation], family: str) -> list[Example]:
    """VL-T5 VQA / GQA records; ``label`` may be absent (unlabelled test split)."""
    examples = []
    for question_id, record in identified_records(document.items(), "question_id"):
        label = record.score_dict("label") if record.has("label") else {}
        annotation = annotations.get(question_id)
        question_type = record.text("question_type") if record.has("question_type") else None
        examples.append(_question(task, question_id, record.identifier("img_id"),
                                  record.text("sent"), label, family,
                                  annotation.answers if annotation else (), question_type))
    return examples


def _read_vqa_vl_t5(document: Document, options: LoadOptions) -> list[Example]:
    path = options.vqa_annotations_path
    return _read_vl_t5_questions(document, "vqa", load_vqa_annotations(path) if path else {},
                                 options.family)


def _read_vqav2(document: Document, options: LoadOptions) -> list[Example]:
    """Official VQAv2 questions, labelled from the annotations file when one is given."""
    path = options.vqa_annotations_path
    annotations = load_vqa_annotations(path) if path else None
    subtype = Record(document.value, document.path, "top level").text("data_subtype")
    folder = VQA_IMAGE_FOLDER.get(subtype, subtype)
    examples = []
    for question_id, record in identified_records(document.items("questions"), "question_id"):
        image = f"COCO_{folder}_{record.integer('image_id', allowed=range(10**12)):012d}"
        annotation = None
        if annotations is not None:
            annotation = annotations.get(question_id)
            if annotation is None:
                record.fail("question_id", f"a question with an entry in {path}", question_id)
        examples.append(_question(
            "vqa", question_id, image, record.text("question"),
            vqa_label(annotation.answers) if annotation else {}, options.family,
            annotation.answers if annotation else (),
            annotation.question_type if annotation else None))
    return examples


def _read_gqa_balanced(document: Document, options: LoadOptions) -> list[Example]:
    """Official GQA questions; the label is ``{answer: 1.0}`` as VL-T5's GQA files hold it,
    the question type the ``types.structural`` category (query, verify, logical, ...)."""
    examples = []
    for question_id, record in document.entries():
        answer = record.text("answer") if record.has("answer") else None
        types = record.child("types") if record.has("types") else None
        question_type = types.text("structural") if types and types.has("structural") else None
        examples.append(_question("gqa", question_id, record.identifier("imageId"),
                                  record.text("question"), {answer: 1.0} if answer else {},
                                  options.family, question_type=question_type))
    return examples


def _pair(identifier: str, image_ids: tuple[str, str], sentence: str, label: int,
          family: str) -> Example:
    """One NLVR2 statement about an image pair; target ``"true"`` (label 1) or ``"false"``;
    its encoder text prompted for a backbone of ``family``."""
    return Example(task="nlvr2", example_id=identifier, visual_ids=image_ids,
                   source_text=get_task("nlvr2").format_source(sentence, family), text=sentence,
                   targets=("true" if label == 1 else "false",), label=label)


def _read_nlvr2_vl_t5(document: Document, options: LoadOptions) -> list[Example]:
    return [_pair(identifier, (record.identifier("img0"), record.identifier("img1")),
                  record.text("sent"), record.integer("label", allowed=range(2)), options.family)
            for identifier, record in identified_records(document.items(), "identifier")]


def _read_nlvr2(document: Document, options: LoadOptions) -> list[Example]:
    """Official NLVR2 lines; ``train-10171-0-0`` shows ``train-10171-0-img0/1``."""
    examples = []
    for identifier, record in identified_records(document.lines(), "identifier"):
        pair, _, sentence_number = identifier.rpartition("-")
        if not pair or not sentence_number.isdigit():
            record.fail("identifier", "'<split>-<set>-<pair>-<sentence>' such as "
                        "'dev-850-0-0' (its images: '<split>-<set>-<pair>-img0/1')", identifier)
        label = record.one_of("label", ("True", "False")) == "True"
        examples.append(_pair(identifier, (f"{pair}-img0", f"{pair}-img1"),
                              record.text("sentence"), int(label), options.family))
    return examples


def _read_karpathy(document: Document, options: LoadOptions) -> list[Example]:
    """COCO captions of the Karpathy split ``options.split`` (``train`` holds ``train`` and
    ``restval`` images); one example per reference caption (ids ``"<cocoid>#<j>"``) for
    training (``one_per_caption``, default: ``split == "train"``), else one per image."""
    split = options.split
    if split not in COCO_SPLIT_MEMBERS:
        raise ValueError(f"caption: dataset_coco.json holds every split; pass split= one of "
                         f"{sorted(COCO_SPLIT_MEMBERS)}, got {split!r}")
    expand = split == "train" if options.one_per_caption is None else options.one_per_caption
    examples: list[Example] = []
    for coco_id, record in identified_records(document.items("images"), "cocoid"):
        image_split = record.one_of("split", ("train", "restval", "val", "test"))
        if image_split not in COCO_SPLIT_MEMBERS[split]:
            continue
        image_id = Path(record.text("filename")).stem
        references = tuple(sentence.text("raw").strip() for sentence in record.objects("sentences"))
        examples += caption_examples(coco_id, references, expand, task="caption",
                                     visual_ids=(image_id,),
                                     source_text=get_task("caption").format_source(
                                         "", options.family))
    return examples


_VL_T5_QUESTIONS = "VL-T5 JSON list [{img_id, sent, question_id, label?: {answer: score}}]"
IMAGE_TEXT_FORMATS: dict[str, tuple[DataFormat, ...]] = {
    "vqa": (
        DataFormat("vqav2", "official VQAv2 questions {data_subtype, questions: [{image_id, "
                   "question, question_id}]} (+ annotations: labels)", (Shape.OBJECT,),
                   _read_vqav2, top_key="questions"),
        DataFormat("vl-t5", _VL_T5_QUESTIONS, (Shape.LIST,), _read_vqa_vl_t5),
    ),
    "gqa": (
        DataFormat("gqa", "official GQA questions {question_id: {imageId, question, answer?}}",
                   (Shape.OBJECT,), _read_gqa_balanced),
        DataFormat("vl-t5", _VL_T5_QUESTIONS, (Shape.LIST,),
                   lambda document, options: _read_vl_t5_questions(document, "gqa", {},
                                                                         options.family)),
    ),
    "nlvr2": (
        DataFormat("nlvr2", "official NLVR2 JSON lines {identifier, sentence, label: "
                   "'True'|'False'}", (Shape.LINES, Shape.OBJECT), _read_nlvr2),
        DataFormat("vl-t5", "VL-T5 JSON list [{identifier, img0, img1, sent, label: 0|1}]",
                   (Shape.LIST,), _read_nlvr2_vl_t5),
    ),
    "caption": (
        DataFormat("karpathy", "Karpathy dataset_coco.json {images: [{filename, cocoid, split, "
                   "sentences: [{raw}]}]}", (Shape.OBJECT,), _read_karpathy, top_key="images"),
    ),
}


def sample_vqa_target(example: Example, rng: np.random.Generator) -> tuple[str, float]:
    """A training target drawn in proportion to its label score, and its loss weight.

    As VL-T5 / VL-Adapter: with label scores ``s``, answer ``i`` is drawn with probability
    ``s_i / sum(s)`` and its loss is weighted by ``s_i``. A label whose scores are all 0
    gives ``("", 0.0)``; examples without weights draw uniformly with weight 1.

    Raises:
        ValueError: the example has no targets (unlabelled split).
    """
    if not example.targets:
        raise ValueError(f"example {example.example_id} has no targets to sample from")
    weights = np.asarray(example.target_weights or [1.0] * len(example.targets), dtype=float)
    total = float(weights.sum())
    if total == 0.0:
        return "", 0.0
    index = int(rng.choice(len(weights), p=weights / total))
    return example.targets[index], float(weights[index])
