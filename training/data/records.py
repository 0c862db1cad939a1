"""Validated access to raw JSON / JSONL records.

Every field a reader uses goes through a ``Record`` method, so a malformed file fails with a
``DataFormatError`` that names the file, where in it (``line 7`` for JSONL, ``record 3
(question_id=12)`` for a JSON list), the field and what was expected, never with a bare
``KeyError`` deep in a reader. Every file is opened by ``data_file``, so a path that is a
folder, cannot be read or is not UTF-8 text fails the same way.

A data file is read once into a ``Document`` (one JSON value, or JSON lines); its shape
(``list``, ``object`` or ``lines``) is what format detection looks at, and its records
are handed out located for errors: ``record 3`` / ``images[3]`` (JSON list), ``entry
'0293'`` / ``database['xHr8X2Wpmno']`` (JSON object of objects), ``line 7`` (JSON lines).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, NoReturn, TextIO

_MISSING = object()


class DataFormatError(ValueError):
    """A data file does not have the format its reader expects.

    Attributes:
        path: the file.
        location: where in the file, e.g. ``"line 7"`` or ``"record 3 (uid=a1)"``.
        field: the field that is wrong (``"<json>"`` when the text is not JSON at all).
        expected: what the field should hold.
    """

    def __init__(self, path: Path, location: str, field: str, expected: str, got: str,
                 data_format: str | None = None) -> None:
        self.path = path
        self.location = location
        self.field = field
        self.expected = expected
        self.got = got
        self.data_format = data_format
        message = f"{path}: {location}: field {field!r}: expected {expected}, got {got}"
        super().__init__(message + (f" [{data_format}]" if data_format else ""))

    def in_format(self, data_format: str) -> DataFormatError:
        """The same error, saying which format the file was read as (and why)."""
        return DataFormatError(self.path, self.location, self.field, self.expected, self.got,
                               data_format)


def _describe(value: object) -> str:
    """A short description of a bad value for an error message."""
    if value is _MISSING:
        return "nothing (field missing)"
    text = json.dumps(value) if not isinstance(value, str) else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


class Record:
    """One JSON object from a data file, with typed, validated field access."""

    def __init__(self, raw: object, path: Path, location: str) -> None:
        self.path = path
        self.location = location
        if not isinstance(raw, dict):
            self.fail("<record>", "a JSON object", raw)
        self.raw: dict[str, Any] = raw

    def fail(self, field: str, expected: str, value: object = _MISSING) -> NoReturn:
        """Raise ``DataFormatError`` for ``field`` of this record."""
        raise DataFormatError(self.path, self.location, field, expected, _describe(value))

    def identified_by(self, key: str, value: str) -> Record:
        """The same record, with its id added to the location used in later errors."""
        return Record(self.raw, self.path, f"{self.location} ({key}={value})")

    def has(self, key: str) -> bool:
        """Whether ``key`` is present and not null."""
        return self.raw.get(key) is not None

    def text(self, key: str, *, allow_empty: bool = False) -> str:
        """A string field (non-empty unless ``allow_empty``)."""
        value = self.raw.get(key, _MISSING)
        if not isinstance(value, str) or (not allow_empty and not value.strip()):
            self.fail(key, "a string" if allow_empty else "a non-empty string", value)
        return value

    def identifier(self, key: str) -> str:
        """An id field: a non-empty string or an integer, returned as a string."""
        value = self.raw.get(key, _MISSING)
        if isinstance(value, bool) or not isinstance(value, str | int) or value == "":
            self.fail(key, "a non-empty string or an integer id", value)
        return str(value)

    def one_of(self, key: str, allowed: tuple[str, ...]) -> str:
        """A string field holding one of ``allowed`` (exactly as written)."""
        value = self.raw.get(key, _MISSING)
        if not isinstance(value, str) or value not in allowed:
            self.fail(key, "one of " + ", ".join(repr(option) for option in allowed), value)
        return value

    def child(self, key: str) -> Record:
        """An object field, as a ``Record`` located at ``key``."""
        value = self.raw.get(key, _MISSING)
        if not isinstance(value, dict):
            self.fail(key, "a JSON object", value)
        return Record(value, self.path, f"{self.location}, {key}")

    def integer(self, key: str, *, allowed: range | None = None) -> int:
        """An integer field, optionally restricted to ``allowed``."""
        value = self.raw.get(key, _MISSING)
        in_range = allowed is None or value in allowed
        if isinstance(value, bool) or not isinstance(value, int) or not in_range:
            wanted = f"an integer in [{allowed.start}, {allowed.stop - 1}]" if allowed else ""
            self.fail(key, wanted or "an integer", value)
        return value

    def score_dict(self, key: str) -> dict[str, float]:
        """A ``{answer: score}`` object with non-empty string keys and finite scores >= 0."""
        value = self.raw.get(key, _MISSING)
        expected = "an object {answer: score} with finite scores >= 0"
        if not isinstance(value, dict):
            self.fail(key, expected, value)
        for answer, score in value.items():
            number_ok = isinstance(score, int | float) and not isinstance(score, bool)
            if not answer or not number_ok or not math.isfinite(score) or score < 0:
                self.fail(key, expected, {answer: score})
        return {answer: float(score) for answer, score in value.items()}

    def objects(self, key: str, *, allow_empty: bool = False) -> list[Record]:
        """A list-of-objects field, each as a ``Record`` located at ``key[i]``."""
        value = self.raw.get(key, _MISSING)
        if not isinstance(value, list) or (not allow_empty and not value):
            self.fail(key, "a list of objects" + ("" if allow_empty else " (non-empty)"), value)
        records = []
        for index, item in enumerate(value):
            if not isinstance(item, dict):
                self.fail(f"{key}[{index}]", "a JSON object", item)
            records.append(Record(item, self.path, f"{self.location}, {key}[{index}]"))
        return records

    def time_span(self, key: str) -> tuple[float, float]:
        """A time span in seconds: ``"60.40-66.88"`` (TVQA) or ``[60.4, 66.88]``."""
        value = self.raw.get(key, _MISSING)
        expected = "a time span 'start-end' or [start, end] in seconds with start <= end"
        parts: list[object] = []
        if isinstance(value, str):
            parts = value.split("-")
        elif isinstance(value, list):
            parts = value
        try:
            start, end = (float(part) for part in parts)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            self.fail(key, expected, value)
        if not (math.isfinite(start) and math.isfinite(end) and 0 <= start <= end):
            self.fail(key, expected, value)
        return start, end


def identified_records(records: Iterable[Record], keys: str | tuple[str, ...], *,
                       unique: bool = True) -> Iterator[tuple[str, Record]]:
    """Each record with its id, the record located by that id for later errors.

    keys: the id field, or alternatives (the first one present is the id, and errors name
    it). unique: refuse a record whose id an earlier record of the file had.
    """
    keys = (keys,) if isinstance(keys, str) else keys
    seen: set[str] = set()
    for record in records:
        key = next((k for k in keys if record.has(k)), keys[0])
        if len(keys) > 1 and not record.has(key):
            record.fail(key, f"an id in one of the fields {', '.join(keys)}")
        value = record.identifier(key)
        record = record.identified_by(key, value)
        if unique and value in seen:
            record.fail(key, "an id not used by an earlier record", value)
        seen.add(value)
        yield value, record


@contextmanager
def data_file(path: Path) -> Iterator[TextIO]:
    """``path`` opened as UTF-8 text, for reading.

    Raises:
        FileNotFoundError: nothing exists at ``path``.
        DataFormatError: ``path`` is a folder, cannot be read, or is not UTF-8 text (also
            when the bad byte is met while reading).
    """
    try:
        with path.open(encoding="utf-8") as handle:
            yield handle
    except FileNotFoundError:
        raise
    except IsADirectoryError:
        raise DataFormatError(path, "top level", "<file>", "a file", "a folder") from None
    except UnicodeDecodeError as error:  # error.start counts from the decoder's chunk, not the file
        raise DataFormatError(path, "top level", "<text>", "UTF-8 text",
                              f"byte 0x{error.object[error.start]:02x}") from None
    except OSError as error:  # permissions, I/O errors
        raise DataFormatError(path, "top level", "<file>", "a readable file",
                              error.strerror or type(error).__name__) from None


def _parse_json(text: str, path: Path, first_line: int, expected: str) -> object:
    """``text`` (starting at line ``first_line`` of ``path``) parsed as JSON; a
    ``DataFormatError`` naming the line of the error otherwise."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise DataFormatError(path, f"line {first_line + error.lineno - 1}", "<json>", expected,
                              error.msg) from None


class Shape(StrEnum):
    """What a data file holds at the top: format detection starts from it."""

    LIST = "list"
    OBJECT = "object"
    LINES = "lines"
    OTHER = "other"  # a lone string, number, ...: no format reads it


@dataclass(frozen=True)
class Document:
    """A data file read once: one JSON value (``value``), or JSON lines (``lines_text``).

    A JSON-lines file with a single line is one JSON object; readers of a JSON-lines
    format take it as that one line.
    """

    path: Path
    value: object = None
    lines_text: str | None = None

    @property
    def shape(self) -> Shape:
        """``LINES`` for JSON lines, else the kind of the one JSON value."""
        if self.lines_text is not None:
            return Shape.LINES
        if isinstance(self.value, dict):
            return Shape.OBJECT
        return Shape.LIST if isinstance(self.value, list) else Shape.OTHER

    def describe(self) -> str:
        """The document's structure in a few words, for errors: its shape and first keys."""
        if self.shape is Shape.LINES:
            first = next(self.lines(), None)
            return ("JSON lines, line 1 with keys " + _keys(first.raw)) if first else \
                "an empty file"
        if isinstance(self.value, dict):
            return "a JSON object with keys " + _keys(self.value)
        if isinstance(self.value, list):
            first = self.value[0] if self.value else None
            return "a JSON list" + (f" of objects with keys {_keys(first)}"
                                    if isinstance(first, dict) else "")
        return f"a JSON {type(self.value).__name__}"

    def items(self, top_key: str | None = None) -> list[Record]:
        """The objects of a JSON list (or of ``{top_key: [...]}``), located by index."""
        document = self._top(top_key, "a JSON list", list)
        where = f"{top_key}[{{}}]" if top_key else "record {}"
        return [Record(item, self.path, where.format(index)) for index, item in enumerate(document)]

    def entries(self, top_key: str | None = None) -> list[tuple[str, Record]]:
        """The ``key -> object`` entries of a JSON object (or of ``{top_key: {...}}``), each
        located by its key (``entry 'k'`` or ``top_key['k']``)."""
        document = self._top(top_key, "a JSON object of objects", dict)
        where = f"{top_key}[{{!r}}]" if top_key else "entry {!r}"
        return [(key, Record(item, self.path, where.format(key)))
                for key, item in document.items()]

    def lines(self) -> Iterator[Record]:
        """The objects of a JSON-lines file, located by 1-based line number; blank lines
        skipped. A document that is one JSON object is its line 1."""
        if self.lines_text is None:
            if not isinstance(self.value, dict):
                raise DataFormatError(self.path, "top level", "<document>",
                                      "JSON lines (one object per line)", self.describe())
            yield Record(self.value, self.path, "line 1")
            return
        for line_number, line in enumerate(self.lines_text.splitlines(), start=1):
            if line.strip():
                raw = _parse_json(line, self.path, line_number, "a valid JSON object")
                yield Record(raw, self.path, f"line {line_number}")

    def _top(self, top_key: str | None, expected: str, kind: type) -> Any:
        document = self.value
        if top_key is not None:
            if not isinstance(document, dict) or top_key not in document:
                raise DataFormatError(self.path, "top level", top_key,
                                      "an object with this key", self.describe())
            document = document[top_key]
        if self.lines_text is not None or not isinstance(document, kind):
            got = self.describe() if top_key is None else _json_kind(document)
            raise DataFormatError(self.path, "top level", top_key or "<document>", expected, got)
        return document


def _json_kind(value: object) -> str:
    """``a JSON object``, ``a JSON list``, ``a string``, ... for errors."""
    if isinstance(value, dict):
        return "a JSON object"
    if isinstance(value, list):
        return "a JSON list"
    return "null" if value is None else f"a {type(value).__name__} ({_describe(value)})"


def _keys(raw: dict[str, Any]) -> str:
    """The first keys of an object, sorted, for a structure description."""
    keys = sorted(raw)
    return "[" + ", ".join(keys[:8]) + (", ..." if len(keys) > 8 else "") + "]"


def read_document(path: Path) -> Document:
    """``path`` read as one JSON value or as JSON lines (several values, one per line).

    Raises:
        FileNotFoundError: there is no file at ``path``.
        DataFormatError: the text is neither (naming the line of the first error), or the
            file is not a readable UTF-8 file (see ``data_file``).
    """
    with data_file(path) as handle:
        text = handle.read()
    if not text.strip():
        return Document(path, lines_text="")
    try:
        return Document(path, value=json.loads(text))
    except json.JSONDecodeError as error:
        if error.msg == "Extra data" and _first_line_is_an_object(text):
            return Document(path, lines_text=text)
        raise DataFormatError(path, f"line {error.lineno}", "<json>",
                              "valid JSON or JSON lines", error.msg) from None


def _first_line_is_an_object(text: str) -> bool:
    first = next(line for line in text.splitlines() if line.strip())
    try:
        return isinstance(json.loads(first), dict)
    except json.JSONDecodeError:
        return False
