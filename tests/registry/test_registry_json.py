"""Every JSON file the registry reads goes through one strict reader: a file that is not a
JSON object, repeats a key or holds NaN is refused the same way, naming the file."""

from __future__ import annotations

import io
import struct
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from adapters_registry import Registry, RegistryError, import_peft, load_artifact
from adapters_registry.tensorfile import read_header

FINGERPRINT = "sha256:" + "ab" * 32


def _manifest(data: bytes, artifact: Path, registry: Registry, tmp_path: Path) -> None:
    (artifact / "manifest.json").write_bytes(data)
    load_artifact(artifact)


def _safetensors_header(data: bytes, artifact: Path, registry: Registry, tmp_path: Path) -> None:
    blob = struct.pack("<Q", len(data)) + data
    read_header(io.BytesIO(blob), len(blob), "shared.safetensors")


def _version_record(data: bytes, artifact: Path, registry: Registry, tmp_path: Path) -> None:
    registry.publish(artifact, "cap")
    Path(registry.storage.path("adapters/cap/versions/1.json")).write_bytes(data)
    registry.resolve("cap:1")


def _alias_file(data: bytes, artifact: Path, registry: Registry, tmp_path: Path) -> None:
    registry.publish(artifact, "cap", alias="prod")
    Path(registry.storage.path("adapters/cap/aliases/prod")).write_bytes(data)
    registry.resolve("cap@prod")


def _peft_config(data: bytes, artifact: Path, registry: Registry, tmp_path: Path) -> None:
    folder = tmp_path / "peft"
    folder.mkdir()
    (folder / "adapter_config.json").write_bytes(data)
    save_file({"prompt_embeddings": np.zeros((2, 8), np.float32)},
              str(folder / "adapter_model.safetensors"))
    import_peft(folder, tmp_path / "out", FINGERPRINT)


READERS = {"manifest": _manifest, "safetensors header": _safetensors_header,
           "version record": _version_record, "alias file": _alias_file,
           "peft config": _peft_config}
BAD_JSON = {
    "a list": (b"[1, 2]", "not a JSON object"),
    "a repeated key": (b'{"a": 1, "a": 2}', "duplicate key"),
    "NaN": (b'{"a": NaN}', "non-standard JSON constant NaN"),
    "not UTF-8": (b'{"a": "\xff"}', "not valid JSON"),
}


@pytest.mark.parametrize("bad", list(BAD_JSON))
@pytest.mark.parametrize("reader", list(READERS))
def test_every_registry_json_file_is_read_by_one_strict_object_reader(
    reader: str, bad: str, artifact: Path, registry: Registry, tmp_path: Path
) -> None:
    data, message = BAD_JSON[bad]
    read: Callable[..., None] = READERS[reader]
    with pytest.raises(RegistryError, match=message):
        read(data, artifact, registry, tmp_path)
