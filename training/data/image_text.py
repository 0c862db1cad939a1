"""Readers for the image-text formats VL-T5 / VL-Adapter users have on disk.

- VQAv2, Karpathy split (``karpathy_train.json`` ...): a JSON list of
  ``{img_id, sent, question_id, label: {answer: score}, answer_type, question_type}``; the
  10 raw answers come from the official ``v2_mscoco_*_annotations.json`` when given.
- GQA (``train.json``, ``testdev.json`` ...): ``{img_id, sent, question_id, label}``.
- NLVR2 (``train.json`` ...): ``{identifier, img0, img1, label: 0|1, sent, uid}``.
- COCO captions: Karpathy's ``dataset_coco.json``, ``restval`` merged into ``train``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from modeling.tasks import get_task
from training.data.example import Example, caption_examples
from training.data.records import identified_records, load_json_records

COCO_SPLIT_MEMBERS: dict[str, tuple[str, ...]] = {
    "train": ("train", "restval"),
    "val": ("val",),
    "test": ("test",),
}


def load_vqa_annotations(path: Path) -> dict[str, tuple[str, ...]]:
    """Question id -> the raw annotator answers, from an official VQAv2 annotations file.

    The file is ``{"annotations": [{"question_id", "answers": [{"answer", ...}] ...}]}``.
    """
    answers_by_question = {}
    records = load_json_records(path, top_key="annotations")
    for question_id, record in identified_records(records, "question_id", unique=False):
        answers = record.objects("answers")
        answers_by_question[question_id] = tuple(
            answer.text("answer", allow_empty=True) for answer in answers
        )
    return answers_by_question


def _scored_targets(label: dict[str, float]) -> tuple[tuple[str, ...], tuple[float, ...]]:
    """Label answers sorted best first (ties alphabetically), with their scores."""
    ranked = sorted(label.items(), key=lambda item: (-item[1], item[0]))
    return tuple(answer for answer, _ in ranked), tuple(score for _, score in ranked)


def _load_scored_qa(
    path: Path, task: str, raw_answers: dict[str, tuple[str, ...]]
) -> list[Example]:
    """VQA / GQA records; ``label`` may be absent (unlabelled test split)."""
    spec = get_task(task)
    examples = []
    for question_id, record in identified_records(load_json_records(path), "question_id"):
        label = record.score_dict("label") if record.has("label") else {}
        targets, weights = _scored_targets(label)
        has_type = record.has("question_type")
        examples.append(
            Example(
                task=task,
                example_id=question_id,
                visual_ids=(record.identifier("img_id"),),
                source_text=spec.format_source(record.text("sent")),
                text=record.text("sent"),
                targets=targets,
                target_weights=weights,
                answers=raw_answers.get(question_id, ()),
                question_type=record.text("question_type") if has_type else None,
            )
        )
    return examples


def load_vqa(path: Path, *, annotations_path: Path | None = None) -> list[Example]:
    """VQAv2 questions from a Karpathy-split JSON list.

    Args:
        path: ``karpathy_{train,val,test}.json``-style file.
        annotations_path: optional official annotations file; its 10 answers per question
            fill ``Example.answers`` so the official metric can be computed.
    """
    raw_answers = load_vqa_annotations(annotations_path) if annotations_path else {}
    return _load_scored_qa(path, "vqa", raw_answers)


def load_gqa(path: Path) -> list[Example]:
    """GQA questions from a VL-T5-style JSON list."""
    return _load_scored_qa(path, "gqa", {})


def load_nlvr2(path: Path) -> list[Example]:
    """NLVR2 statements about an image pair; target ``"true"`` (label 1) or ``"false"``."""
    spec = get_task("nlvr2")
    examples = []
    for identifier, record in identified_records(load_json_records(path), "identifier"):
        label = record.integer("label", allowed=range(2))
        examples.append(
            Example(
                task="nlvr2",
                example_id=identifier,
                visual_ids=(record.identifier("img0"), record.identifier("img1")),
                source_text=spec.format_source(record.text("sent")),
                text=record.text("sent"),
                targets=("true" if label == 1 else "false",),
                label=label,
            )
        )
    return examples


def load_coco_captions(
    path: Path, split: str, *, one_per_caption: bool | None = None
) -> list[Example]:
    """COCO captions of one Karpathy split from ``dataset_coco.json``.

    Args:
        path: the Karpathy file ``{"images": [{filename, cocoid, split, sentences}]}``.
        split: ``"train"`` (holds ``train`` and ``restval`` images), ``"val"`` or ``"test"``.
        one_per_caption: one example per reference caption (ids ``"<cocoid>#<j>"``, one
            target each), as for training; otherwise one example per image with every
            reference as a target, as for evaluation. Defaults to ``split == "train"``.
    """
    if split not in COCO_SPLIT_MEMBERS:
        raise ValueError(f"COCO split must be one of {sorted(COCO_SPLIT_MEMBERS)}, got {split!r}")
    expand = split == "train" if one_per_caption is None else one_per_caption
    spec = get_task("caption")
    examples: list[Example] = []
    for coco_id, record in identified_records(load_json_records(path, top_key="images"),
                                              "cocoid"):
        image_split = record.text("split")
        if image_split not in ("train", "restval", "val", "test"):
            record.fail("split", "one of train, restval, val, test", image_split)
        if image_split not in COCO_SPLIT_MEMBERS[split]:
            continue
        image_id = Path(record.text("filename")).stem
        references = tuple(sentence.text("raw").strip() for sentence in record.objects("sentences"))
        examples += caption_examples(coco_id, references, expand, task="caption",
                                     visual_ids=(image_id,), source_text=spec.format_source(""))
    return examples


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
