"""Artifact validation: only honest safetensors and JSON, every file listed and hashed."""

from __future__ import annotations

import io
import json
import os
import pickle
import struct
from collections.abc import Callable
from pathlib import Path

import pytest

from adapters_registry import (
    InvalidArtifact,
    LimitExceeded,
    Limits,
    Registry,
    load_artifact,
    write_manifest,
)
from adapters_registry.tensorfile import read_header


def safetensors_bytes(header: dict, buffer_size: int, header_len: int | None = None) -> bytes:
    raw = json.dumps(header).encode()
    length = len(raw) if header_len is None else header_len
    return struct.pack("<Q", length) + raw + bytes(buffer_size)


def test_valid_artifact_loads_with_every_file_hashed(artifact: Path) -> None:
    loaded = load_artifact(artifact)
    assert [record.path for record in loaded.files] == [
        "shared.safetensors",
        "tasks/gqa.safetensors",
        "tasks/vqa.safetensors",
    ]
    assert loaded.manifest["tasks"].keys() == {"vqa", "gqa"}


def test_pickle_file_in_artifact_is_refused_naming_it(artifact: Path) -> None:
    (artifact / "adapter_model.bin").write_bytes(pickle.dumps({"weights": [1, 2]}))
    with pytest.raises(InvalidArtifact, match=r"adapter_model\.bin: only safetensors and JSON"):
        load_artifact(artifact)


def test_pickle_disguised_as_safetensors_is_refused(artifact: Path, rehash: Callable) -> None:
    (artifact / "shared.safetensors").write_bytes(pickle.dumps({"weights": list(range(50))}))
    rehash(artifact)
    with pytest.raises(InvalidArtifact, match=r"shared\.safetensors: not a safetensors file"):
        load_artifact(artifact)


def test_unlisted_json_file_is_refused(artifact: Path) -> None:
    (artifact / "notes.json").write_text("{}")
    with pytest.raises(InvalidArtifact, match=r"notes\.json: present but not listed"):
        load_artifact(artifact)


def test_missing_listed_file_is_refused(artifact: Path) -> None:
    (artifact / "tasks" / "gqa.safetensors").unlink()
    with pytest.raises(InvalidArtifact, match=r"tasks/gqa\.safetensors: listed .* but missing"):
        load_artifact(artifact)


def test_symlink_in_artifact_is_refused(artifact: Path, tmp_path: Path) -> None:
    (tmp_path / "outside.json").write_text("{}")
    os.symlink(tmp_path / "outside.json", artifact / "link.json")
    with pytest.raises(InvalidArtifact, match=r"link\.json: not a regular file"):
        load_artifact(artifact)


def test_content_differing_from_manifest_hash_is_refused_naming_the_file(artifact: Path) -> None:
    path = artifact / "tasks" / "vqa.safetensors"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(InvalidArtifact, match=r"tasks/vqa\.safetensors: sha256 is"):
        load_artifact(artifact)


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda m: m.update(format_version=2), "format_version"),
        (lambda m: m["base_model"].update(fingerprint="abc"), "fingerprint"),
        (lambda m: m.update(methods=[]), "methods"),
        (lambda m: m["tasks"].update({"Bad/Task": {"prompt": ""}}), "invalid task name"),
        (lambda m: next(iter(m["tasks"].values())).update(choice_answer="index"),
         "'choice_answer' must be one of"),
        (
            lambda m: m["files"].update(
                {"../escape.safetensors": m["files"]["shared.safetensors"]}
            ),
            "does not allow",
        ),
        (lambda m: m["files"].pop("shared.safetensors"), "does not list shared"),
    ],
)
def test_manifest_breaking_the_schema_is_refused(
    artifact: Path, mutate: Callable[[dict], None], message: str
) -> None:
    manifest = json.loads((artifact / "manifest.json").read_text())
    mutate(manifest)
    (artifact / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(InvalidArtifact, match=message):
        load_artifact(artifact)


def test_manifest_with_duplicate_keys_is_refused(artifact: Path) -> None:
    text = (artifact / "manifest.json").read_text()
    (artifact / "manifest.json").write_text(text.replace("{", '{"tasks": {}, ', 1))
    with pytest.raises(InvalidArtifact, match="duplicate key"):
        load_artifact(artifact)


LYING_HEADERS = {
    "size differs from shape": (
        {"t": {"dtype": "F32", "shape": [4], "data_offsets": [0, 12]}},
        12,
        "span 12 bytes",
    ),
    "unknown dtype": (
        {"t": {"dtype": "F128", "shape": [1], "data_offsets": [0, 16]}},
        16,
        "unknown dtype",
    ),
    "overlap": (
        {
            "a": {"dtype": "U8", "shape": [4], "data_offsets": [0, 4]},
            "b": {"dtype": "U8", "shape": [4], "data_offsets": [2, 6]},
        },
        6,
        "overlap",
    ),
    "gap": ({"a": {"dtype": "U8", "shape": [2], "data_offsets": [2, 4]}}, 4, "gap"),
    "buffer longer than tensors": (
        {"a": {"dtype": "U8", "shape": [2], "data_offsets": [0, 2]}},
        9,
        "cover 2 bytes",
    ),
    "negative dim": (
        {"a": {"dtype": "U8", "shape": [-2], "data_offsets": [0, 0]}},
        0,
        "invalid shape",
    ),
    "boolean dim": (
        {"a": {"dtype": "U8", "shape": [True], "data_offsets": [0, 1]}},
        1,
        "invalid shape",
    ),
    "extra field": (
        {"a": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1], "x": 1}},
        1,
        "exactly dtype",
    ),
}


@pytest.mark.parametrize("case", sorted(LYING_HEADERS))
def test_safetensors_header_that_lies_is_refused(case: str) -> None:
    header, buffer_size, message = LYING_HEADERS[case]
    data = safetensors_bytes(header, buffer_size)
    with pytest.raises(InvalidArtifact, match=message):
        read_header(io.BytesIO(data), len(data), "x.safetensors")


def test_header_length_beyond_the_file_is_refused() -> None:
    data = safetensors_bytes({}, 0, header_len=10_000)
    with pytest.raises(InvalidArtifact, match="header length 10000"):
        read_header(io.BytesIO(data), len(data), "x.safetensors")


def test_lying_header_is_refused_by_publish(
    artifact: Path, registry: Registry, rehash: Callable
) -> None:
    lie = {"t": {"dtype": "F32", "shape": [1000], "data_offsets": [0, 8]}}
    (artifact / "tasks" / "vqa.safetensors").write_bytes(safetensors_bytes(lie, 8))
    rehash(artifact)
    with pytest.raises(InvalidArtifact, match=r"tasks/vqa\.safetensors: tensor 't'"):
        registry.publish(artifact, "liar")
    assert registry.index() == []


def test_too_many_files_is_refused_with_the_limit_named(artifact: Path) -> None:
    with pytest.raises(LimitExceeded, match="more than 3 files .*max_files"):
        load_artifact(artifact, Limits(max_files=3))


def test_too_many_bytes_is_refused_with_the_limit_named(artifact: Path) -> None:
    with pytest.raises(LimitExceeded, match="limit of 500 bytes .*max_artifact_bytes"):
        load_artifact(artifact, Limits(max_artifact_bytes=500))


def test_registry_limits_apply_to_publish(artifact: Path, tmp_path: Path) -> None:
    registry = Registry(tmp_path / "small", max_artifact_bytes=1000)
    with pytest.raises(LimitExceeded):
        registry.publish(artifact, "big")


def test_write_manifest_lists_every_tensor_file_with_its_hash(artifact: Path) -> None:
    manifest = json.loads((artifact / "manifest.json").read_text())
    del manifest["files"]
    (artifact / "manifest.json").unlink()
    written = write_manifest(artifact, manifest)
    assert sorted(written["files"]) == [
        "shared.safetensors",
        "tasks/gqa.safetensors",
        "tasks/vqa.safetensors",
    ]
    assert load_artifact(artifact).manifest == written
