"""Readers of the video-text tasks: the official releases, which VALUE / HERO also use.

Each format lists the fields its reader uses; any other field is ignored, a missing or
malformed used field is a ``DataFormatError``. Subtitles come from ``subtitles_path``
(``training.data.subtitles``: an ``.srt`` folder, one ``.srt`` or VALUE JSON lines).

- TVQA, ``tvqa`` (official ``tvqa_<split>.jsonl``, as VALUE ships it) and How2QA,
  ``value``: JSON lines ``{vid_name, qid, q, a0, ..., a{k}, answer_idx?, ts?,
  question_type?}`` (TVQA has 5 options, How2QA 4); the text is ``[Subs] ... [Q] ...
  [Choices] a0: ... a1: ...`` and the target ``a{answer_idx}``.
- TVC (official ``tvc_<split>_release.jsonl``) and YouCook2 captions, ``value``: JSON
  lines ``{vid_name, clip_id (or id), descs: [{desc}], ts?}``.
- YouCook2, ``youcook2`` (official ``youcookii_annotations_trainval.json``):
  ``{database: {video_id: {subset, annotations: [{id, segment: [start, end],
  sentence}]}}}``; ``subset`` ``training`` / ``validation`` / ``testing`` is the run's
  ``train`` / ``val`` / ``test``; each segment is one clip ``<video_id>_<id>`` of the
  video's frames.
"""

from __future__ import annotations

from collections.abc import Mapping

from modeling.tasks import DEFAULT_FAMILY, TaskKind, choice_label, get_task
from training.data.example import Example, caption_examples
from training.data.formats import DataFormat, LoadOptions
from training.data.records import Document, Record, Shape, identified_records
from training.data.subtitles import load_subtitles

CLIP_ID_FIELDS = ("clip_id", "id")
YOUCOOK2_SUBSETS = {"train": "training", "val": "validation", "test": "testing"}
YOUCOOK2_NO_TEST = ("the official YouCook2 annotations (youcookii_annotations_trainval.json) "
                    "hold no test split: its test annotations were never released; "
                    "evaluate on val")
_JSON_LINES = (Shape.LINES, Shape.OBJECT)


def _choices(record: Record) -> tuple[str, ...]:
    """The options ``a0, a1, ...`` up to the first missing index; at least two."""
    choices = []
    while record.has(f"a{len(choices)}"):
        choices.append(record.text(f"a{len(choices)}").strip())
    if len(choices) < 2:
        record.fail(f"a{len(choices)}", "at least two options a0, a1, ...")
    return tuple(choices)


def _subtitles(options: LoadOptions) -> Mapping[str, str]:
    return load_subtitles(options.subtitles_path) if options.subtitles_path else {}


def _video_task(task: str, kind: TaskKind) -> None:
    if get_task(task).kind is not kind:
        raise ValueError(f"task {task!r} is not a {kind.value} video task")


def read_video_qa(document: Document, task: str, subtitles: Mapping[str, str],
                  family: str = DEFAULT_FAMILY) -> list[Example]:
    """TVQA / How2QA multiple-choice questions; ``answer_idx`` may be absent (test split);
    ``[Subs]`` is left out of the text of a video without subtitles; the prompt is the one
    of a backbone of ``family``."""
    _video_task(task, TaskKind.MULTIPLE_CHOICE)
    spec = get_task(task)
    examples = []
    for question_id, record in identified_records(document.lines(), "qid"):
        vid_name = record.identifier("vid_name")
        choices = _choices(record)
        has_answer = record.has("answer_idx")
        label = record.integer("answer_idx", allowed=range(len(choices))) if has_answer else None
        subtitle_text = subtitles.get(vid_name, "")
        examples.append(
            Example(
                task=task,
                example_id=question_id,
                visual_ids=(vid_name,),
                source_text=spec.source_text(record.text("q"), choices, subtitle_text, family),
                text=record.text("q"),
                subtitles=subtitle_text,
                targets=(choice_label(label),) if label is not None else (),
                choices=choices,
                label=label,
                question_type=record.text("question_type") if record.has("question_type") else None,
                time_span=record.time_span("ts") if record.has("ts") else None,
            )
        )
    return examples


def _clip_examples(task: str, clip_id: str, vid_name: str, references: tuple[str, ...],
                   options: LoadOptions, subtitles: Mapping[str, str],
                   time_span: tuple[float, float] | None) -> list[Example]:
    """The examples of one captioned clip; its subtitles (when any) are the text input
    (``"tvc: [Subs] ..."``), otherwise the input is the prompt alone."""
    subtitle_text = subtitles.get(vid_name, "")
    return caption_examples(clip_id, references, bool(options.one_per_caption), task=task,
                            visual_ids=(vid_name,), subtitles=subtitle_text,
                            source_text=get_task(task).source_text(subtitles=subtitle_text,
                                                                   family=options.family),
                            time_span=time_span)


def read_video_captions(document: Document, task: str, options: LoadOptions) -> list[Example]:
    """TVC / YouCook2 clip captions in VALUE's JSON lines: one example per description
    (ids ``"<clip_id>#<j>"``) when ``one_per_caption``, else one per clip."""
    _video_task(task, TaskKind.VIDEO_CAPTIONING)
    subtitles = _subtitles(options)
    examples: list[Example] = []
    for clip_id, record in identified_records(document.lines(), CLIP_ID_FIELDS):
        references = tuple(desc.text("desc").strip() for desc in record.objects("descs"))
        examples += _clip_examples(task, clip_id, record.identifier("vid_name"), references,
                                   options, subtitles,
                                   record.time_span("ts") if record.has("ts") else None)
    return examples


def _read_youcook2(document: Document, options: LoadOptions) -> list[Example]:
    """The segments of the videos whose ``subset`` is the run's split."""
    if options.split not in YOUCOOK2_SUBSETS:
        raise ValueError(f"yc2c: youcookii_annotations_trainval.json holds every split; pass "
                         f"split= one of {sorted(YOUCOOK2_SUBSETS)}, got {options.split!r}")
    subtitles = _subtitles(options)
    examples: list[Example] = []
    for video_id, record in document.entries("database"):
        subset = record.one_of("subset", tuple(YOUCOOK2_SUBSETS.values()))
        if subset != YOUCOOK2_SUBSETS[options.split]:
            continue
        for segment_id, segment in identified_records(record.objects("annotations"), "id"):
            examples += _clip_examples("yc2c", f"{video_id}_{segment_id}", video_id,
                                       (segment.text("sentence").strip(),), options, subtitles,
                                       segment.time_span("segment"))
    return examples


def _qa_format(task: str, name: str, summary: str) -> DataFormat:
    return DataFormat(name, summary, _JSON_LINES, lambda document, options: read_video_qa(
        document, task, _subtitles(options), options.family))


def _captions_format(task: str) -> DataFormat:
    return DataFormat("value", "VALUE JSON lines {vid_name, clip_id, descs: [{desc}], ts?}",
                      _JSON_LINES,
                      lambda document, options: read_video_captions(document, task, options))


_QA_LINES = "JSON lines {vid_name, qid, q, a0..a%d, answer_idx?, ts?}"
VIDEO_TEXT_FORMATS: dict[str, tuple[DataFormat, ...]] = {
    "tvqa": (_qa_format("tvqa", "tvqa", "official TVQA (and VALUE) " + _QA_LINES % 4),),
    "how2qa": (_qa_format("how2qa", "value", "VALUE / HERO " + _QA_LINES % 3),),
    "tvc": (_captions_format("tvc"),),
    "yc2c": (
        DataFormat("youcook2", "official YouCook2 {database: {video_id: {subset, annotations: "
                   "[{id, segment, sentence}]}}}", (Shape.OBJECT,), _read_youcook2,
                   top_key="database", withheld={"test": YOUCOOK2_NO_TEST}),
        _captions_format("yc2c"),
    ),
}
