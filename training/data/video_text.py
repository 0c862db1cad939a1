"""Readers for the video-text JSONL formats (VALUE / HERO releases) used by VL-Adapter.

- TVQA / How2QA: ``{vid_name, qid, q, a0, ..., a{k}, answer_idx, ts}`` per line (TVQA has 5
  options, How2QA 4); the text is ``[Subs] ... [Q] ... [Choices] a0: ... a1: ...`` and the
  target is ``a{answer_idx}``.
- TVC / YouCook2 captions: ``{vid_name, clip_id, descs: [{desc, ...}], ts}`` per line.
- Subtitles: ``{vid_name, sub: [{text, start, end}]}`` per line.
"""

from __future__ import annotations

from pathlib import Path

from modeling.tasks import TaskKind, get_task
from training.data.example import Example, caption_examples
from training.data.records import Record, identified_records, iter_jsonl_records

CLIP_ID_FIELDS = ("clip_id", "id")


def load_subtitles(path: Path) -> dict[str, str]:
    """Video name -> its subtitle lines joined by spaces."""
    subtitles = {}
    for vid_name, record in identified_records(iter_jsonl_records(path), "vid_name",
                                               unique=False):
        lines = record.objects("sub", allow_empty=True)
        subtitles[vid_name] = " ".join(line.text("text").strip() for line in lines)
    return subtitles


def _choices(record: Record) -> tuple[str, ...]:
    """The options ``a0, a1, ...`` up to the first missing index; at least two."""
    choices = []
    while record.has(f"a{len(choices)}"):
        choices.append(record.text(f"a{len(choices)}").strip())
    if len(choices) < 2:
        record.fail(f"a{len(choices)}", "at least two options a0, a1, ...")
    return tuple(choices)


def _video_task(task: str, kind: TaskKind) -> None:
    if get_task(task).kind is not kind:
        raise ValueError(f"task {task!r} is not a {kind.value} video task")


def load_video_qa(
    path: Path, task: str, *, subtitles: dict[str, str] | None = None
) -> list[Example]:
    """TVQA / How2QA multiple-choice questions; ``answer_idx`` may be absent (test split).

    Args:
        path: the JSONL file.
        task: ``"tvqa"`` or ``"how2qa"``.
        subtitles: video name -> subtitle text (``load_subtitles``); ``[Subs]`` is left out
            of the text of a video without subtitles.
    """
    _video_task(task, TaskKind.MULTIPLE_CHOICE)
    spec = get_task(task)
    examples = []
    for question_id, record in identified_records(iter_jsonl_records(path), "qid"):
        vid_name = record.identifier("vid_name")
        choices = _choices(record)
        has_answer = record.has("answer_idx")
        label = record.integer("answer_idx", allowed=range(len(choices))) if has_answer else None
        subtitle_text = (subtitles or {}).get(vid_name, "")
        examples.append(
            Example(
                task=task,
                example_id=question_id,
                visual_ids=(vid_name,),
                source_text=spec.source_text(record.text("q"), choices, subtitle_text),
                text=record.text("q"),
                subtitles=subtitle_text,
                targets=(f"a{label}",) if label is not None else (),
                choices=choices,
                label=label,
                question_type=record.text("question_type") if record.has("question_type") else None,
                time_span=record.time_span("ts") if record.has("ts") else None,
            )
        )
    return examples


def load_video_captions(
    path: Path,
    task: str,
    *,
    subtitles: dict[str, str] | None = None,
    one_per_caption: bool = False,
) -> list[Example]:
    """TVC / YouCook2 clip captions.

    Args:
        path: the JSONL file.
        task: ``"tvc"`` or ``"yc2c"``.
        subtitles: video name -> subtitle text; when present it is the text input
            (``"tvc: [Subs] ..."``), otherwise the input is the prompt alone.
        one_per_caption: one example per description (ids ``"<clip_id>#<j>"``) for
            training; otherwise one per clip with every description as a target.
    """
    _video_task(task, TaskKind.VIDEO_CAPTIONING)
    spec = get_task(task)
    examples: list[Example] = []
    for clip_id, record in identified_records(iter_jsonl_records(path), CLIP_ID_FIELDS):
        vid_name = record.identifier("vid_name")
        references = tuple(desc.text("desc").strip() for desc in record.objects("descs"))
        subtitle_text = (subtitles or {}).get(vid_name, "")
        examples += caption_examples(
            clip_id, references, one_per_caption, task=task, visual_ids=(vid_name,),
            source_text=spec.source_text(subtitles=subtitle_text), subtitles=subtitle_text,
            time_span=record.time_span("ts") if record.has("ts") else None)
    return examples
