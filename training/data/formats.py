"""What a data format is: a name, how its file is recognised, and its reader.

Each task has one or more formats (``FORMATS`` in ``training.data.registry``): the
official release as downloaded and the VL-T5 / VL-Adapter / VALUE preprocessed files. A
run config names a task's format (``format:``) or leaves it to detection, which looks
only at the file's top-level structure: a JSON list, a JSON object (with a given key),
or JSON lines. Every error a reader raises says which format the file was read as and
which one detection saw.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from modeling.tasks import DEFAULT_FAMILY
from training.data.example import Example
from training.data.records import Document, Shape


@dataclass(frozen=True)
class LoadOptions:
    """What some readers need beyond the file; each reader uses only its own fields.

    Attributes:
        split: the split being read (``train``, ``val``, ``test``): files holding every
            split (COCO's ``dataset_coco.json``, YouCook2's annotations) take it from there.
        data_format: the format to read the file as; ``None``: detect it.
        vqa_annotations_path: VQAv2 annotations file (labels and the 10 raw answers).
        subtitles_path: subtitles of the video tasks (a folder of ``.srt``, one ``.srt``
            or a JSONL file).
        one_per_caption: caption tasks yield one example per reference (training); ``None``
            means: for COCO when ``split == "train"``, never for video captions.
        family: the backbone family the examples are for (``BackboneConfig.family``): its
            task prompts start each ``source_text`` (``modeling.tasks.FAMILY_PROMPTS``).
    """

    split: str | None = None
    data_format: str | None = None
    vqa_annotations_path: Path | None = None
    subtitles_path: Path | None = None
    one_per_caption: bool | None = None
    family: str = DEFAULT_FAMILY


Reader = Callable[[Document, LoadOptions], list[Example]]


@dataclass(frozen=True)
class DataFormat:
    """One file layout of one task.

    Attributes:
        name: the value of ``format:`` in a run config, e.g. ``"vqav2"``.
        summary: the layout in one line (the fields its reader uses), shown in errors.
        shapes: the top-level structures detection accepts for it.
        read: the reader, document -> examples.
        top_key: a key the top-level JSON object must have (detection).
        withheld: split -> why the release holds none of it (YouCook2's official file has
            no test annotations): an empty read of that split is expected, not a problem.
    """

    name: str
    summary: str
    shapes: tuple[Shape, ...]
    read: Reader
    top_key: str | None = None
    withheld: Mapping[str, str] = field(default_factory=dict)

    def matches(self, document: Document) -> bool:
        """Whether ``document``'s top-level structure is this format's."""
        if document.shape not in self.shapes:
            return False
        return self.top_key is None or (isinstance(document.value, dict)
                                        and self.top_key in document.value)


@dataclass(frozen=True)
class SplitData:
    """The examples of one split file and how it was read.

    Attributes:
        examples: what the reader produced.
        data_format: the format it was read as.
        detected: the format detection saw (``None``: none of the task's formats).
        configured: whether ``data_format`` came from the config rather than detection.
        withheld: why the split read empty when its format's release withholds it
            (``DataFormat.withheld``); ``None`` otherwise.
    """

    examples: list[Example]
    data_format: str
    detected: str | None
    configured: bool
    withheld: str | None = None

    @property
    def how(self) -> str:
        """``"detected"``, ``"configured"`` or ``"configured; detected <other>"``."""
        if not self.configured:
            return "detected"
        if self.detected == self.data_format:
            return "configured"
        return f"configured; detected {self.detected or 'none'}"


def format_note(task: str, chosen: DataFormat, detected: DataFormat | None,
                configured: bool) -> str:
    """What an error adds about the format: the one expected, and the one detected."""
    head = f"read as {task} format {chosen.name!r}: {chosen.summary}"
    if not configured:
        return f"{head}; detected from the file's structure"
    if detected is chosen:
        return f"{head}; set in the config, and detection agrees"
    seen = f"format {detected.name!r}" if detected else f"none of the {task} formats"
    return f"{head}; set in the config, but the file's structure looks like {seen}"
