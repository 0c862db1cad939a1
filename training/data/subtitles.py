"""Subtitles of the video tasks: video name -> its subtitle lines joined by spaces.

Three layouts, told apart by the path:

- ``srt`` folder (TVQA's ``tvqa_subtitles/``): one ``<vid_name>.srt`` per clip; a file is
  read only when a question about its clip is.
- one ``<vid_name>.srt`` file: the subtitles of that one clip.
- ``value`` JSON lines (VALUE / HERO ``*_subtitles.jsonl``): ``{vid_name, sub: [{text}]}``.

An ``.srt`` file is cues separated by blank lines: an optional cue number, a timing line
``HH:MM:SS,mmm --> HH:MM:SS,mmm`` (required), then the text lines; speaker tags such as
TVQA's ``(Sheldon:)`` are kept as written.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from pathlib import Path

from training.data.records import DataFormatError, data_file, identified_records, read_document

SRT_FORMAT = "srt: cues of an optional number, a timing line and text; one <vid_name>.srt per clip"
VALUE_FORMAT = "value: JSON lines {vid_name, sub: [{text}]}"
_TIME = r"\d{1,2}:\d{2}:\d{2}[,.]\d{1,3}"
_TIMING = re.compile(rf"\s*{_TIME}\s*-->\s*{_TIME}(\s.*)?")


def _cues(lines: list[str]) -> Iterator[tuple[int, list[str]]]:
    """Blocks of non-blank lines with the 1-based line number each starts at."""
    block: list[str] = []
    for number, line in enumerate([*lines, ""], start=1):
        if line.strip():
            block.append(line.strip())
        elif block:
            yield number - len(block), block
            block = []


def read_srt(path: Path) -> str:
    """The text of every cue of one ``.srt`` file, in order, joined by spaces.

    Raises:
        DataFormatError: a cue has no timing line (naming its line), or the file is not a
            readable UTF-8 file.
    """
    with data_file(path) as handle:
        lines = handle.read().lstrip("\ufeff").splitlines()
    texts = []
    for first_line, block in _cues(lines):
        timing = 1 if block[0].isdigit() and len(block) > 1 else 0
        if not _TIMING.fullmatch(block[timing]):
            raise DataFormatError(path, f"line {first_line + timing}", "<cue timing>",
                                  "an SRT timing line 'HH:MM:SS,mmm --> HH:MM:SS,mmm'",
                                  repr(block[timing][:60]), f"read as subtitles {SRT_FORMAT}")
        texts += block[timing + 1:]
    return " ".join(texts)


class SrtFolder(Mapping[str, str]):
    """A folder of ``<vid_name>.srt`` files as ``vid_name -> text``, each read when asked."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._texts: dict[str, str] = {}

    def __getitem__(self, vid_name: str) -> str:
        if vid_name not in self._texts:
            file = self.path / f"{vid_name}.srt"
            if "/" in vid_name or not file.is_file():
                raise KeyError(vid_name)
            self._texts[vid_name] = read_srt(file)
        return self._texts[vid_name]

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(file.stem for file in self.path.glob("*.srt")))

    def __len__(self) -> int:
        return sum(1 for _ in self)


def _read_value_subtitles(path: Path) -> dict[str, str]:
    subtitles = {}
    try:
        for vid_name, record in identified_records(read_document(path).lines(), "vid_name",
                                                   unique=False):
            lines = record.objects("sub", allow_empty=True)
            subtitles[vid_name] = " ".join(line.text("text").strip() for line in lines)
    except DataFormatError as error:
        raise error.in_format(f"read as subtitles {VALUE_FORMAT}") from None
    return subtitles


def load_subtitles(path: Path) -> Mapping[str, str]:
    """Video name -> subtitle text, from an ``.srt`` folder, one ``.srt`` file or a JSONL file.

    Raises:
        FileNotFoundError: nothing exists at ``path``.
        DataFormatError: a file is malformed (the message names the file, the line, the
            field and the subtitle format it was read as).
    """
    path = Path(path)
    if path.is_dir():
        if not any(path.glob("*.srt")):
            raise DataFormatError(path, "top level", "<folder>", "a folder of <vid_name>.srt "
                                  "files", "no .srt file in it", f"read as subtitles {SRT_FORMAT}")
        return SrtFolder(path)
    if path.suffix.lower() == ".srt":
        return {path.stem: read_srt(path)}
    return _read_value_subtitles(path)
