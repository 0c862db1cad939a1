"""Safetensors files checked and rewritten by hand, without torch and without unpickling.

Layout of a safetensors file::

    [8 bytes: header length N, little-endian u64][N bytes: JSON header][data buffer]

The header maps each tensor name to ``{"dtype", "shape", "data_offsets": [begin, end]}``
(offsets relative to the data buffer) plus an optional ``"__metadata__"`` string map.
:func:`read_header` refuses a header that lies: an unknown dtype, a shape whose byte size
differs from its offsets, overlapping or gapped tensors, or a buffer that is not covered
exactly. :func:`check_tensor_file` also refuses a float tensor holding a NaN or an infinity,
naming it: such weights would poison every answer of the adapter, silently.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np

from adapters_registry.errors import InvalidArtifact
from adapters_registry.strict_json import load_object

MAX_HEADER_BYTES = 100_000_000
SCAN_CHUNK_BYTES = 1024 * 1024  # a multiple of every element size
METADATA_KEY = "__metadata__"
DTYPE_BYTES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "F8_E8M0": 1,
    "U16": 2, "I16": 2, "F16": 2, "BF16": 2,
    "U32": 4, "I32": 4, "F32": 4,
    "U64": 8, "I64": 8, "F64": 8, "C64": 8,
}  # fmt: skip
# A float is NaN or infinite exactly when every bit of `mask` is set: the exponent bits for
# IEEE-style formats; F8_E4M3 (no infinity) and F8_E8M0 (exponent only) use all-ones for NaN.
# dtype -> (unsigned little-endian view of one element or one complex half, mask)
NONFINITE_MASKS = {
    "F16": ("<u2", 0x7C00), "BF16": ("<u2", 0x7F80), "F32": ("<u4", 0x7F80_0000),
    "F64": ("<u8", 0x7FF0_0000_0000_0000), "C64": ("<u4", 0x7F80_0000),
    "F8_E5M2": ("u1", 0x7C), "F8_E4M3": ("u1", 0x7F), "F8_E8M0": ("u1", 0xFF),
}  # fmt: skip


@dataclass(frozen=True)
class TensorEntry:
    """One tensor of a safetensors file; ``begin``/``end`` are byte offsets in the buffer."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int

    @property
    def numel(self) -> int:
        """Number of elements."""
        return math.prod(self.shape)


@dataclass(frozen=True)
class Header:
    """A validated header: tensors sorted by offset, and where the data buffer starts."""

    tensors: tuple[TensorEntry, ...]
    metadata: dict[str, str]
    data_start: int


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _entry(label: str, name: str, spec: object) -> TensorEntry:
    if not isinstance(spec, dict) or set(spec) != {"dtype", "shape", "data_offsets"}:
        raise InvalidArtifact(f"{label}: tensor {name!r} needs exactly dtype, shape, data_offsets")
    dtype, shape, offsets = spec["dtype"], spec["shape"], spec["data_offsets"]
    if dtype not in DTYPE_BYTES:
        raise InvalidArtifact(f"{label}: tensor {name!r} has unknown dtype {dtype!r}")
    if not isinstance(shape, list) or not all(_is_int(d) and d >= 0 for d in shape):
        raise InvalidArtifact(f"{label}: tensor {name!r} has an invalid shape {shape!r}")
    if (
        not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(_is_int(o) and o >= 0 for o in offsets)
    ):
        raise InvalidArtifact(f"{label}: tensor {name!r} has invalid data_offsets {offsets!r}")
    entry = TensorEntry(name, dtype, tuple(shape), offsets[0], offsets[1])
    if entry.end - entry.begin != entry.numel * DTYPE_BYTES[dtype]:
        raise InvalidArtifact(
            f"{label}: tensor {name!r} is {dtype}{list(shape)} but its data_offsets span "
            f"{entry.end - entry.begin} bytes"
        )
    return entry


def read_header(stream: BinaryIO, size: int, label: str) -> Header:
    """Read and validate the header of a safetensors file of ``size`` bytes.

    ``stream`` is positioned at the start of the file; ``label`` names the file in errors.
    """
    prefix = stream.read(8)
    if len(prefix) != 8:
        raise InvalidArtifact(f"{label}: not a safetensors file (shorter than 8 bytes)")
    (header_len,) = struct.unpack("<Q", prefix)
    if header_len < 2 or header_len > MAX_HEADER_BYTES or 8 + header_len > size:
        raise InvalidArtifact(f"{label}: not a safetensors file (header length {header_len})")
    header = load_object(stream.read(header_len), f"{label}: safetensors header")
    metadata = header.pop(METADATA_KEY, {})
    if not isinstance(metadata, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()
    ):
        raise InvalidArtifact(f"{label}: __metadata__ must map strings to strings")
    entries = sorted(
        (_entry(label, name, spec) for name, spec in header.items()),
        key=lambda e: (e.begin, e.end),
    )
    cursor = 0
    for entry in entries:
        if entry.begin != cursor:
            raise InvalidArtifact(
                f"{label}: tensor {entry.name!r} starts at byte {entry.begin}, expected {cursor} "
                "(tensors overlap or leave a gap)"
            )
        cursor = entry.end
    buffer_size = size - 8 - header_len
    if cursor != buffer_size:
        raise InvalidArtifact(
            f"{label}: tensors cover {cursor} bytes but the data buffer holds {buffer_size}"
        )
    return Header(tuple(entries), metadata, 8 + header_len)


def _read_exact(stream: BinaryIO, count: int, label: str) -> bytes:
    data = b""
    while len(data) < count:
        chunk = stream.read(count - len(data))
        if not chunk:
            raise InvalidArtifact(f"{label}: file ends inside its data buffer")
        data += chunk
    return data


def check_finite(stream: BinaryIO, header: Header, label: str) -> None:
    """Raise :class:`InvalidArtifact` naming the first float tensor with a NaN or infinity.

    Reads every float tensor of a file whose ``header`` was validated, in chunks of
    ``SCAN_CHUNK_BYTES``; integer and bool tensors are skipped.
    """
    for entry in header.tensors:
        if entry.dtype not in NONFINITE_MASKS:
            continue
        view, mask = NONFINITE_MASKS[entry.dtype]
        stream.seek(header.data_start + entry.begin)
        remaining = entry.end - entry.begin
        while remaining:
            chunk = _read_exact(stream, min(remaining, SCAN_CHUNK_BYTES), label)
            remaining -= len(chunk)
            bits = np.frombuffer(chunk, dtype=view)
            if np.any((bits & mask) == mask):
                raise InvalidArtifact(
                    f"{label}: tensor {entry.name!r} ({entry.dtype}{list(entry.shape)}) holds "
                    "NaN or infinite values"
                )


def check_tensor_file(stream: BinaryIO, size: int, label: str) -> Header:
    """Validate a safetensors file of ``size`` bytes: an honest header, finite floats.

    ``stream`` is positioned at the start of the file; ``label`` names the file in errors.
    """
    header = read_header(stream, size, label)
    check_finite(stream, header, label)
    return header


def encode_header(tensors: list[TensorEntry], metadata: dict[str, str] | None = None) -> bytes:
    """Length prefix plus JSON header (space-padded to 8 bytes) for tensors laid out in order."""
    header: dict[str, object] = {METADATA_KEY: metadata} if metadata else {}
    for entry in tensors:
        header[entry.name] = {
            "dtype": entry.dtype,
            "shape": list(entry.shape),
            "data_offsets": [entry.begin, entry.end],
        }
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw


def write_tensors(
    destination: BinaryIO, source: BinaryIO, source_header: Header, keep: dict[str, TensorEntry]
) -> None:
    """Write a safetensors file holding selected tensors of ``source``, byte for byte.

    ``keep`` maps a source tensor name to the entry to write: its new name, and a shape whose
    row-major bytes are a prefix of the source tensor's bytes (a reshape or a leading slice).
    """
    by_name = {entry.name: entry for entry in source_header.tensors}
    planned, cursor = [], 0
    for source_name, target in keep.items():
        nbytes = target.numel * DTYPE_BYTES[target.dtype]
        source_entry = by_name[source_name]
        if target.dtype != source_entry.dtype or nbytes > source_entry.end - source_entry.begin:
            raise ValueError(f"{target.name}: does not fit in source tensor {source_name}")
        placed = TensorEntry(target.name, target.dtype, target.shape, cursor, cursor + nbytes)
        planned.append((source_entry, placed))
        cursor += nbytes
    destination.write(encode_header([target for _, target in planned]))
    for source_entry, target in planned:
        source.seek(source_header.data_start + source_entry.begin)
        destination.write(source.read(target.end - target.begin))
