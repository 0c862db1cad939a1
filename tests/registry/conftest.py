"""Fixtures of the registry tests: tiny artifacts written with safetensors.numpy."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from safetensors.numpy import save_file

from adapters_registry import Registry

FINGERPRINT = "sha256:" + "ab" * 32
OTHER_FINGERPRINT = "sha256:" + "cd" * 32
LORA_Q = "lora.lm.encoder.block.0.layer.0.SelfAttention.q"


def _hash_files(directory: Path, paths: list[str]) -> dict[str, dict[str, Any]]:
    files = {}
    for path in paths:
        data = (directory / path).read_bytes()
        files[path] = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
    return files


def write_artifact(
    directory: Path,
    tasks: tuple[str, ...] = ("vqa", "gqa"),
    rank: int = 4,
    width: int = 16,
    seed: int = 0,
    fingerprint: str = FINGERPRINT,
) -> Path:
    """An artifact with a LoRA pair in shared.safetensors and one small tensor per task."""
    rng = np.random.default_rng(seed)
    (directory / "tasks").mkdir(parents=True)
    shared = {
        f"{LORA_Q}.lora_A": rng.standard_normal((rank, width)).astype(np.float32),
        f"{LORA_Q}.lora_B": rng.standard_normal((width, rank)).astype(np.float32),
    }
    save_file(shared, str(directory / "shared.safetensors"))
    for task in tasks:
        tensor = {f"lora.lm.{task}.norm": rng.standard_normal(width).astype(np.float32)}
        save_file(tensor, str(directory / "tasks" / f"{task}.safetensors"))
    paths = ["shared.safetensors"] + [f"tasks/{task}.safetensors" for task in tasks]
    manifest = {
        "format_version": 1,
        "base_model": {"fingerprint": fingerprint, "lm_type": "t5", "preset": "tiny"},
        "methods": [
            {"id": "lora", "method": "lora", "config": {"rank": rank}, "sharing": "single"}
        ],
        "tasks": {task: {"prompt": f"{task}: "} for task in tasks},
        "parameters": {"trainable": 2 * rank * width, "total": 10_000, "percent": 1.0},
        "metrics": {},
        "files": _hash_files(directory, paths),
        "created_by": "tests",
    }
    (directory / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return directory


def rehash_manifest(directory: Path) -> None:
    """Recompute the sha256/size of every listed file after a test edited one."""
    manifest = json.loads((directory / "manifest.json").read_text())
    manifest["files"] = _hash_files(directory, sorted(manifest["files"]))
    (directory / "manifest.json").write_text(json.dumps(manifest))


@pytest.fixture
def make_artifact(tmp_path: Path) -> Callable[..., Path]:
    """Factory: ``make_artifact("name", **write_artifact_options)`` -> artifact directory."""

    def make(label: str = "artifact", **options: Any) -> Path:
        return write_artifact(tmp_path / "artifacts" / label, **options)

    return make


@pytest.fixture
def artifact(make_artifact: Callable[..., Path]) -> Path:
    """One valid artifact directory."""
    return make_artifact()


@pytest.fixture
def registry(tmp_path: Path) -> Registry:
    """An empty registry in a temporary directory."""
    return Registry(tmp_path / "registry")


@pytest.fixture
def rehash() -> Callable[[Path], None]:
    """``rehash(directory)`` recomputes the manifest's file hashes."""
    return rehash_manifest


@pytest.fixture
def fingerprints() -> tuple[str, str]:
    """The fingerprint test artifacts carry, and a different one."""
    return FINGERPRINT, OTHER_FINGERPRINT
