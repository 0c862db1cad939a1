"""Weights that are NaN or infinite are refused, naming the tensor: at publish, pull and
when the server reads a version (`read_files`), for every float dtype safetensors has."""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

import adapters_registry.artifact
from adapters_registry import InvalidArtifact, Registry
from adapters_registry.tensorfile import TensorEntry, check_tensor_file, encode_header, read_header

# dtype -> (numpy type of one element's bytes, non-finite values, finite edge values), written
# from each format's definition: IEEE half / single / double, bfloat16 (the top half of a
# float32), OCP FP8 E5M2 (has inf) and E4M3 (no inf, NaN = all ones), E8M0 (NaN = 0xFF).
FORMATS = {
    "F16": (np.float16, [np.nan, np.inf, -np.inf], [65504.0, -0.0, 6e-8]),
    "F32": (np.float32, [np.nan, np.inf, -np.inf], [3.4028235e38, -0.0, 1e-45]),
    "F64": (np.float64, [np.nan, np.inf, -np.inf], [1.7976931348623157e308, -0.0, 5e-324]),
    "C64": (np.complex64, [complex(1, np.nan), complex(np.inf, 0)], [complex(-0.0, 3e38)]),
    "BF16": (np.uint16, [0x7FC0, 0x7F80, 0xFF80], [0x7F7F, 0x8000, 0x0001]),
    "F8_E5M2": (np.uint8, [0x7E, 0x7C, 0xFC], [0x7B, 0x80, 0x01]),
    "F8_E4M3": (np.uint8, [0x7F, 0xFF], [0x7E, 0xFE, 0x78]),
    "F8_E8M0": (np.uint8, [0xFF], [0xFE, 0x00]),
}
CASES = [(dtype, value) for dtype, (_, bad, _) in FORMATS.items() for value in bad]


def tensor_file(tensors: dict[str, tuple[str, np.ndarray]]) -> bytes:
    """A safetensors file of named (dtype, values) in order."""
    entries, data, cursor = [], b"", 0
    for name, (dtype, values) in tensors.items():
        raw = values.tobytes()
        entries.append(TensorEntry(name, dtype, values.shape, cursor, cursor + len(raw)))
        data, cursor = data + raw, cursor + len(raw)
    return encode_header(entries) + data


def values(dtype: str, extra: list) -> np.ndarray:
    numpy_type, _, finite = FORMATS[dtype]
    return np.array([*finite, *extra], dtype=numpy_type)


@pytest.mark.parametrize(("dtype", "bad"), CASES, ids=[f"{d}-{v}" for d, v in CASES])
def test_nan_or_infinity_in_any_float_dtype_is_refused_naming_the_tensor(dtype, bad) -> None:
    data = tensor_file({"fine": (dtype, values(dtype, [])),
                        "adapter.up.weight": (dtype, values(dtype, [bad]))})
    with pytest.raises(InvalidArtifact, match=r"x\.safetensors: tensor 'adapter\.up\.weight'"):
        check_tensor_file(io.BytesIO(data), len(data), "x.safetensors")


@pytest.mark.parametrize("dtype", sorted(FORMATS))
def test_finite_extremes_and_integers_with_all_bits_set_pass(dtype: str) -> None:
    integers = np.array([-1, 0x7FFFFFFF], dtype=np.int32)  # bit patterns of F32 NaN / near
    data = tensor_file({"w": (dtype, values(dtype, [])), "ids": ("I32", integers)})
    header = check_tensor_file(io.BytesIO(data), len(data), "x.safetensors")
    assert [entry.name for entry in header.tensors] == ["w", "ids"]


def test_nan_past_the_first_scan_chunk_is_found() -> None:
    weights = np.zeros(400_000, dtype=np.float32)  # 1.6 MB: more than one chunk
    weights[-1] = np.nan
    data = tensor_file({"big": ("F32", weights)})
    with pytest.raises(InvalidArtifact, match="tensor 'big'"):
        check_tensor_file(io.BytesIO(data), len(data), "x.safetensors")


def poison_task_file(artifact: Path, rehash: Callable[[Path], None]) -> None:
    """Put an infinity into tasks/vqa.safetensors and re-hash the manifest."""
    data = tensor_file({"adapter.down.weight": ("F32", np.array([1.0, np.inf], np.float32))})
    (artifact / "tasks" / "vqa.safetensors").write_bytes(data)
    rehash(artifact)


def test_publish_refuses_infinite_weights_naming_file_and_tensor(
    registry: Registry, artifact: Path, rehash: Callable[[Path], None]
) -> None:
    poison_task_file(artifact, rehash)
    with pytest.raises(InvalidArtifact, match=r"tasks/vqa\.safetensors: tensor 'adapter\.down"):
        registry.publish(artifact, "cap")
    assert registry.index() == []


def test_reading_a_version_stored_before_the_check_refuses_its_nan_weights(
    registry: Registry,
    artifact: Path,
    rehash: Callable[[Path], None],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    poison_task_file(artifact, rehash)
    with monkeypatch.context() as older_registry:  # a publish that did not look at values
        older_registry.setattr(adapters_registry.artifact, "check_tensor_file", read_header)
        registry.publish(artifact, "cap")
    with pytest.raises(InvalidArtifact, match=r"cap:1: tasks/vqa\.safetensors: tensor 'adapter"):
        registry.read_files("cap")
    with pytest.raises(InvalidArtifact, match=r"tasks/vqa\.safetensors: tensor 'adapter"):
        registry.pull("cap", tmp_path / "out")
    assert not (tmp_path / "out").exists()
