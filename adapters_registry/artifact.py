"""Read and validate an adapter artifact directory (see ``docs/artifact-format.md``).

An artifact is ``manifest.json``, ``shared.safetensors`` and one ``tasks/<task>.safetensors``
per task. :func:`load_artifact` accepts a directory only when every file is listed in the
manifest with its true sha256 and size, every tensor file has an honest safetensors header,
nothing else (no pickle, no symlink, no stray file) is present, and the configured limits hold.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from adapters_registry.errors import InvalidArtifact, LimitExceeded
from adapters_registry.method_config import PUBLISH_SIZES, Sizes, method_config_problem
from adapters_registry.strict_json import load_object
from adapters_registry.tensorfile import check_tensor_file
from modeling.tasks import ChoiceAnswer

MANIFEST = "manifest.json"
SHARED = "shared.safetensors"
FORMAT_VERSION = 1
MAX_MANIFEST_BYTES = 16 * 1024 * 1024
CHUNK_BYTES = 1024 * 1024
TASK_PATTERN = re.compile(r"[a-z0-9][a-z0-9_]{0,31}")
FINGERPRINT_PATTERN = re.compile(r"sha256:[0-9a-f]{64}")
SHA256_PATTERN = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class Limits:
    """Size limits of one artifact; ``max_files`` counts ``manifest.json`` too."""

    max_artifact_bytes: int = 2 * 1024**3
    max_files: int = 256


@dataclass(frozen=True)
class FileRecord:
    """One file of an artifact as the manifest lists it (path relative, ``/``-separated)."""

    path: str
    sha256: str
    size: int


@dataclass(frozen=True)
class Artifact:
    """A validated artifact directory."""

    root: Path
    manifest: dict[str, Any]
    manifest_bytes: bytes
    files: tuple[FileRecord, ...]


def task_file(task: str) -> str:
    """Relative path of the tensor file of ``task``."""
    return f"tasks/{task}.safetensors"


def parse_manifest(data: bytes, label: str = MANIFEST) -> dict[str, Any]:
    """Parse manifest bytes as strict JSON (no duplicate keys, no NaN) into a dict."""
    if len(data) > MAX_MANIFEST_BYTES:
        raise LimitExceeded(f"{label}: {len(data)} bytes, the limit is {MAX_MANIFEST_BYTES}")
    return load_object(data, label)


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise InvalidArtifact(f"{MANIFEST}: {message}")


def _check_methods(methods: object, sizes: Sizes | None) -> None:
    """Structure of ``methods``; with ``sizes``, every config field's type and bound too."""
    _require(isinstance(methods, list) and len(methods) > 0, "'methods' must be a non-empty list")
    ids = []
    for index, method in enumerate(methods):
        _require(
            isinstance(method, dict)
            and isinstance(method.get("id"), str)
            and isinstance(method.get("method"), str)
            and isinstance(method.get("config"), dict),
            "each method needs a string 'id', a string 'method' and a 'config' object",
        )
        ids.append(method["id"])
        if sizes is not None:
            problem = method_config_problem(method["method"], method["config"], sizes)
            _require(problem is None, f"methods[{index}] ({method['id']!r}): {problem}")
    _require(len(set(ids)) == len(ids), f"method ids must be unique, got {ids}")


def _check_files(files: object, tasks: dict[str, Any]) -> tuple[FileRecord, ...]:
    _require(isinstance(files, dict), "'files' must be an object")
    expected = {SHARED} | {task_file(task) for task in tasks}
    missing, extra = sorted(expected - set(files)), sorted(set(files) - expected)
    _require(not missing, f"'files' does not list {', '.join(missing)}")
    _require(not extra, f"'files' lists files the format does not allow: {', '.join(extra)}")
    records = []
    for path in sorted(files):
        entry = files[path]
        _require(
            isinstance(entry, dict)
            and isinstance(entry.get("sha256"), str)
            and SHA256_PATTERN.fullmatch(entry["sha256"]) is not None
            and isinstance(entry.get("size"), int)
            and not isinstance(entry["size"], bool)
            and entry["size"] >= 0,
            f"files[{path!r}] needs a lower-case hex 'sha256' and a non-negative 'size'",
        )
        records.append(FileRecord(path, entry["sha256"], entry["size"]))
    return tuple(records)


def check_limits(count: int, total_bytes: int, limits: Limits, label: str) -> None:
    """Raise :class:`LimitExceeded` when ``count`` files of ``total_bytes`` break ``limits``."""
    if count > limits.max_files:
        raise LimitExceeded(f"{label}: more than {limits.max_files} files (limit max_files)")
    if total_bytes > limits.max_artifact_bytes:
        raise LimitExceeded(
            f"{label}: {total_bytes} bytes, more than the limit of "
            f"{limits.max_artifact_bytes} bytes (limit max_artifact_bytes)"
        )


def validate_manifest(
    manifest: dict[str, Any],
    limits: Limits,
    manifest_size: int = 0,
    sizes: Sizes | None = PUBLISH_SIZES,
) -> tuple[FileRecord, ...]:
    """Check the manifest schema and limits; return the files it lists, sorted by path.

    ``sizes`` bound the method configs (:mod:`adapters_registry.method_config`): the default
    when the backbone is unknown, a backbone's own at load; None checks the schema only.
    """
    _require(manifest.get("format_version") == FORMAT_VERSION, "'format_version' must be 1")
    base = manifest.get("base_model")
    _require(
        isinstance(base, dict)
        and isinstance(base.get("fingerprint"), str)
        and FINGERPRINT_PATTERN.fullmatch(base["fingerprint"]) is not None,
        "'base_model.fingerprint' must be 'sha256:<64 lower-case hex>'",
    )
    _check_methods(manifest.get("methods"), sizes)
    tasks = manifest.get("tasks")
    _require(isinstance(tasks, dict) and len(tasks) > 0, "'tasks' must be a non-empty object")
    for task, spec in tasks.items():
        _require(TASK_PATTERN.fullmatch(task) is not None, f"invalid task name {task!r}")
        _require(
            isinstance(spec, dict) and isinstance(spec.get("prompt"), str),
            f"task {task!r} needs a string 'prompt'",
        )
        _require(
            spec.get("choice_answer", ChoiceAnswer.LABEL) in tuple(ChoiceAnswer),
            f"task {task!r}: 'choice_answer' must be one of {[a.value for a in ChoiceAnswer]}",
        )
    for key in ("parameters", "metrics"):
        _require(isinstance(manifest.get(key, {}), dict), f"'{key}' must be an object")
    records = _check_files(manifest.get("files"), tasks)
    total = manifest_size + sum(record.size for record in records)
    check_limits(len(records) + 1, total, limits, "artifact")
    return records


def fingerprint_of(manifest: dict[str, Any]) -> str:
    """The base-model fingerprint recorded in a (validated) manifest."""
    return manifest["base_model"]["fingerprint"]


def _scan(root: Path, limits: Limits) -> dict[str, int]:
    """Relative path -> size of every file under ``root``; refuses anything but plain files."""
    present: dict[str, int] = {}
    total = 0
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        for entry in sorted(dirnames + filenames):
            full = Path(dirpath, entry)
            relative = full.relative_to(root).as_posix()
            info = os.lstat(full)
            if stat.S_ISDIR(info.st_mode):
                continue
            if not stat.S_ISREG(info.st_mode):
                raise InvalidArtifact(f"{relative}: not a regular file (symlinks are refused)")
            if not entry.endswith((".safetensors", ".json")):
                raise InvalidArtifact(
                    f"{relative}: only safetensors and JSON files may be in an artifact"
                )
            present[relative] = info.st_size
            total += info.st_size
            check_limits(len(present), total, limits, f"artifact {root}")
    return present


def check_file_content(stream: BinaryIO, record: FileRecord, label: str) -> None:
    """Validate a tensor file (:func:`check_tensor_file`) and its sha256 against ``record``.

    ``stream`` is positioned at the start of the file; ``label`` names the file in errors.
    """
    check_tensor_file(stream, record.size, label)
    stream.seek(0)
    digest, size = hashlib.sha256(), 0
    while chunk := stream.read(CHUNK_BYTES):
        digest.update(chunk)
        size += len(chunk)
    if size != record.size:
        raise InvalidArtifact(f"{label}: {size} bytes, the manifest says {record.size}")
    if digest.hexdigest() != record.sha256:
        raise InvalidArtifact(
            f"{label}: sha256 is {digest.hexdigest()}, the manifest says {record.sha256}"
        )


def load_artifact(directory: str | os.PathLike[str], limits: Limits | None = None) -> Artifact:
    """Validate the artifact in ``directory`` and return it; raise on the first problem."""
    limits = limits or Limits()
    root = Path(directory)
    if not root.is_dir():
        raise InvalidArtifact(f"{root}: not a directory")
    present = _scan(root, limits)
    if MANIFEST not in present:
        raise InvalidArtifact(f"{root}: no {MANIFEST}")
    manifest_bytes = (root / MANIFEST).read_bytes()
    manifest = parse_manifest(manifest_bytes)
    records = validate_manifest(manifest, limits, len(manifest_bytes))
    unlisted = sorted(set(present) - {MANIFEST} - {record.path for record in records})
    if unlisted:
        raise InvalidArtifact(f"{unlisted[0]}: present but not listed in {MANIFEST}")
    for record in records:
        if record.path not in present:
            raise InvalidArtifact(f"{record.path}: listed in {MANIFEST} but missing")
        with open(root / record.path, "rb") as stream:
            check_file_content(stream, record, record.path)
    return Artifact(root, manifest, manifest_bytes, records)


def hash_file(path: str | os.PathLike[str]) -> FileRecord:
    """sha256 and size of a file (``path`` in the record is the name as given)."""
    digest, size = hashlib.sha256(), 0
    with open(path, "rb") as stream:
        while chunk := stream.read(CHUNK_BYTES):
            digest.update(chunk)
            size += len(chunk)
    return FileRecord(str(path), digest.hexdigest(), size)


def write_manifest(directory: str | os.PathLike[str], manifest: dict[str, Any]) -> dict[str, Any]:
    """Fill ``manifest["files"]`` from the tensor files in ``directory`` and write it.

    Lists ``shared.safetensors`` and the file of every task in ``manifest["tasks"]``;
    returns the manifest as written.
    """
    root = Path(directory)
    paths = [SHARED] + [task_file(task) for task in manifest.get("tasks", {})]
    files = {}
    for path in paths:
        record = hash_file(root / path)
        files[path] = {"sha256": record.sha256, "size": record.size}
    manifest = {**manifest, "files": files}
    (root / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return manifest
