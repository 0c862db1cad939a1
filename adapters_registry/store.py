"""The registry: immutable, content-addressed adapter versions on any fsspec filesystem.

Layout under the root (a local path or an fsspec URL such as ``s3://bucket/prefix``)::

    blobs/sha256/<hex>                     file contents, named by their sha256
    adapters/<name>/versions/<n>.json      one record per version: manifest + its blob id
    adapters/<name>/aliases/<alias>        {"version": n}; moved by ``set_alias``
    adapters/<name>/yanked/<n>.json        marker: hidden from resolution, kept for audit
    adapters/<name>/.lock                  local filesystems only (see ``storage``)

A publish validates the artifact, uploads every blob, and only then claims the next version
number by creating its record exclusively; a reader therefore never sees a version whose
blobs are incomplete. ``latest`` is implicit: the highest version that is not yanked.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO

from adapters_registry.artifact import (
    CHUNK_BYTES,
    MANIFEST,
    SHA256_PATTERN,
    FileRecord,
    Limits,
    load_artifact,
    parse_manifest,
    validate_manifest,
)
from adapters_registry.errors import IntegrityError, NotFound, RegistryError
from adapters_registry.method_config import PUBLISH_SIZES, Sizes
from adapters_registry.names import (
    LATEST,
    NAME_PATTERN,
    Ref,
    check_alias,
    check_name,
    parse_ref,
    parse_version,
)
from adapters_registry.storage import TEMP_MARK, Storage, temp_name
from adapters_registry.strict_json import load_object
from adapters_registry.tensorfile import check_tensor_file
from adapters_registry.versions import (
    NameState,
    VerifiedFiles,
    VersionInfo,
    check_fingerprint,
    parse_record,
)

DEFAULT_ROOT = ".registry"
ROOT_ENV = "VLADAPTER_REGISTRY"
NUMBERED_JSON = re.compile(r"([1-9][0-9]{0,17})\.json")


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _blob(sha256: str) -> str:
    return f"blobs/sha256/{sha256}"


class Registry:
    """Publish, resolve, pull, alias, yank, verify and garbage-collect adapter versions.

    Args:
        root: local directory or fsspec URL; default ``$VLADAPTER_REGISTRY`` or ``.registry``.
        max_artifact_bytes: largest artifact (all files) accepted by publish and pull.
        max_files: most files (``manifest.json`` included) in one artifact.
        storage_options: passed to fsspec (credentials, endpoint, ...).
    """

    def __init__(
        self,
        root: str | os.PathLike[str] | None = None,
        *,
        max_artifact_bytes: int = Limits.max_artifact_bytes,
        max_files: int = Limits.max_files,
        storage_options: dict[str, Any] | None = None,
    ) -> None:
        url = os.fspath(root) if root is not None else os.environ.get(ROOT_ENV) or DEFAULT_ROOT
        self.limits = Limits(max_artifact_bytes, max_files)
        self.storage = Storage(url, storage_options)

    # -- writing ---------------------------------------------------------------------------

    def publish(
        self, directory: str | os.PathLike[str], name: str, alias: str | None = None
    ) -> int:
        """Publish the artifact in ``directory`` as the next version of ``name``; return it."""
        check_name(name)
        if alias is not None:
            check_alias(alias)
        artifact = load_artifact(directory, self.limits)
        manifest_sha = hashlib.sha256(artifact.manifest_bytes).hexdigest()
        manifest_record = FileRecord(MANIFEST, manifest_sha, len(artifact.manifest_bytes))
        for record in (*artifact.files, manifest_record):
            source = str(artifact.root / record.path)
            self.storage.put_verified(_blob(record.sha256), source, record.sha256, record.size)
        record_fields = {
            "name": name,
            "manifest_sha256": manifest_sha,
            "manifest_size": len(artifact.manifest_bytes),
            "manifest": artifact.manifest,
        }
        with self.storage.lock(f"adapters/{name}"):
            version = self._claim_version(name, record_fields)
            if alias is not None:
                self._write_alias(name, alias, version)
        return version

    def _claim_version(self, name: str, record_fields: dict[str, Any]) -> int:
        version = 0
        while True:
            version = max(max(self._state(name).versions, default=0), version) + 1
            record = {**record_fields, "version": version, "created": _now()}
            data = json.dumps(record, indent=1, sort_keys=True).encode()
            if self.storage.create_exclusive(f"adapters/{name}/versions/{version}.json", data):
                return version

    def _write_alias(self, name: str, alias: str, version: int) -> None:
        data = json.dumps({"version": version, "updated": _now()}).encode()
        self.storage.write_atomic(f"adapters/{name}/aliases/{alias}", data)

    def set_alias(self, name: str, alias: str, version: int | str) -> None:
        """Point ``name@alias`` at an existing, non-yanked version."""
        check_name(name)
        check_alias(alias)
        version = parse_version(version)
        self._existing_state(name)
        with self.storage.lock(f"adapters/{name}"):
            info = self._info(name, version, self._state(name))
            if info.yanked:
                raise NotFound(f"{info.ref} is yanked; an alias cannot point at it")
            self._write_alias(name, alias, version)

    def yank(self, name: str, version: int | str, reason: str = "") -> VersionInfo:
        """Hide a version from resolution; its record and blobs stay for audit."""
        check_name(name)
        version = parse_version(version)
        self._existing_state(name)
        with self.storage.lock(f"adapters/{name}"):
            self._info(name, version, self._state(name))
            marker = json.dumps({"yanked": _now(), "reason": reason}).encode()
            self.storage.write_atomic(f"adapters/{name}/yanked/{version}.json", marker)
            return self._info(name, version, self._state(name))

    # -- reading ---------------------------------------------------------------------------

    def names(self) -> list[str]:
        """Every adapter name with a directory in the store."""
        return [n for n in self.storage.list_names("adapters") if NAME_PATTERN.fullmatch(n)]

    def _state(self, name: str) -> NameState:
        def numbered(folder: str) -> list[int]:
            entries = self.storage.list_names(f"adapters/{name}/{folder}")
            return sorted(int(m[1]) for e in entries if (m := NUMBERED_JSON.fullmatch(e)))

        aliases, broken = {}, {}
        for alias in self.storage.list_names(f"adapters/{name}/aliases"):
            if NAME_PATTERN.fullmatch(alias):
                path = f"adapters/{name}/aliases/{alias}"
                try:
                    content = load_object(self.storage.read_bytes(path), "content")
                    aliases[alias] = parse_version(content["version"])
                except (ValueError, KeyError, TypeError, RegistryError) as exc:
                    broken[alias] = f"alias file {path} is corrupt ({exc})"
        return NameState(
            tuple(numbered("versions")), frozenset(numbered("yanked")), aliases, broken
        )

    def _existing_state(self, name: str) -> NameState:
        state = self._state(name)
        if not state.versions:
            raise NotFound(f"no adapter named {name!r}")
        return state

    def _info(self, name: str, version: int, state: NameState) -> VersionInfo:
        path = f"adapters/{name}/versions/{version}.json"
        try:
            data = self.storage.read_bytes(path)
        except FileNotFoundError:
            raise NotFound(f"{name}:{version} does not exist") from None
        return parse_record(data, name, version, state, path)

    def resolve(self, ref: str | Ref, include_yanked: bool = False) -> VersionInfo:
        """Resolve ``NAME``, ``NAME:VERSION`` or ``NAME@ALIAS`` to a version.

        A yanked version resolves only by explicit number and with ``include_yanked``.
        """
        parsed = parse_ref(ref) if isinstance(ref, str) else ref
        state = self._existing_state(parsed.name)
        if parsed.version is not None:
            info = self._info(parsed.name, parsed.version, state)
            if info.yanked and not include_yanked:
                raise NotFound(f"{info.ref} is yanked")
            return info
        if parsed.alias == LATEST:
            if state.latest is None:
                raise NotFound(f"every version of {parsed.name} is yanked")
            return self._info(parsed.name, state.latest, state)
        if parsed.alias in state.broken_aliases:
            raise IntegrityError(state.broken_aliases[parsed.alias])
        if parsed.alias not in state.aliases:
            raise NotFound(f"{parsed} does not exist")
        info = self._info(parsed.name, state.aliases[parsed.alias], state)
        if info.yanked:
            raise NotFound(f"{parsed} points to {info.ref}, which is yanked")
        return info

    def _listed(self, name: str, state: NameState) -> list[VersionInfo]:
        """Every version of ``name``; one whose record is corrupt comes back marked.

        A marked version has ``problem`` set (see :meth:`VersionInfo.unreadable`), so one bad
        record never hides the others from ``index`` or ``verify``.
        """
        infos = []
        for version in state.versions:
            try:
                infos.append(self._info(name, version, state))
            except IntegrityError as exc:
                infos.append(VersionInfo.unreadable(name, version, state, str(exc)))
        return infos

    def index(self, name: str | None = None) -> list[VersionInfo]:
        """Every version (yanked and corrupt ones included, marked), by name then version."""
        names = [check_name(name)] if name is not None else self.names()
        return [info for each in names for info in self._listed(each, self._state(each))]

    # -- fetching --------------------------------------------------------------------------

    def _check_blob(self, record: FileRecord, sink: BinaryIO | None) -> str | None:
        """Stream a blob into ``sink`` while hashing; return what is wrong with it, if anything."""
        try:
            stream = self.storage.open_read(_blob(record.sha256))
        except FileNotFoundError:
            return f"blob sha256/{record.sha256} is missing from the store"
        digest, copied = hashlib.sha256(), 0
        with stream:
            while chunk := stream.read(CHUNK_BYTES):
                copied += len(chunk)
                if copied > record.size:
                    return f"blob holds more than the {record.size} bytes recorded"
                digest.update(chunk)
                if sink is not None:
                    sink.write(chunk)
        if copied != record.size:
            return f"blob holds {copied} bytes, {record.size} recorded (truncated)"
        if digest.hexdigest() != record.sha256:
            return f"sha256 mismatch: content hashes to {digest.hexdigest()}"
        return None

    def _fetch(self, info: VersionInfo, record: FileRecord, sink: BinaryIO) -> None:
        problem = self._check_blob(record, sink)
        if problem is not None:
            raise IntegrityError(f"{info.ref}: file {record.path}: {problem}")

    def _resolve_checked(
        self, ref: str | Ref, fingerprint: str | None, sizes: Sizes = PUBLISH_SIZES
    ) -> VersionInfo:
        info = self.resolve(ref)
        check_fingerprint(info, fingerprint)
        validate_manifest(info.manifest, self.limits, info.manifest_size, sizes)
        return info

    def read_files(
        self,
        ref: str | Ref,
        expected_fingerprint: str | None = None,
        d_model: int | None = None,
    ) -> VerifiedFiles:
        """Every file of a version in memory, checked byte for byte, floats finite (server).

        ``d_model``: the model width of the backbone that will build the adapter; its method
        configs are then bounded by it (:mod:`adapters_registry.method_config`) before any
        byte is read, so a config that would build huge modules is refused up front.
        """
        sizes = PUBLISH_SIZES if d_model is None else Sizes.of_backbone(d_model)
        info = self._resolve_checked(ref, expected_fingerprint, sizes)
        files = {}
        for record in info.files():
            buffer = io.BytesIO()
            self._fetch(info, record, buffer)
            files[record.path] = buffer.getvalue()
            if record.path != MANIFEST:
                buffer.seek(0)
                check_tensor_file(buffer, record.size, f"{info.ref}: {record.path}")
        if parse_manifest(files[MANIFEST]) != info.manifest:
            raise IntegrityError(f"{info.ref}: file {MANIFEST} differs from the version record")
        return VerifiedFiles(info, files)

    def pull(
        self,
        ref: str | Ref,
        out_dir: str | os.PathLike[str],
        expected_fingerprint: str | None = None,
        overwrite: bool = False,
    ) -> VersionInfo:
        """Write a version to ``out_dir``; it appears only once every byte has been verified."""
        info = self._resolve_checked(ref, expected_fingerprint)
        out = Path(out_dir)
        if out.exists() and not overwrite and (not out.is_dir() or any(out.iterdir())):
            raise RegistryError(f"{out} already exists and is not empty (use --force)")
        out.parent.mkdir(parents=True, exist_ok=True)
        temp = out.parent / temp_name(out.name)
        try:
            for record in info.files():
                target = temp / record.path
                target.parent.mkdir(parents=True, exist_ok=True)
                with open(target, "wb") as sink:
                    self._fetch(info, record, sink)
            pulled = load_artifact(temp, self.limits)
            if pulled.manifest != info.manifest:
                raise IntegrityError(f"{info.ref}: file {MANIFEST} differs from the version record")
            _move_into_place(temp, out)
        finally:
            shutil.rmtree(temp, ignore_errors=True)
        return info

    # -- maintenance -----------------------------------------------------------------------

    def verify(self, name: str | None = None) -> list[str]:
        """Check every byte of every version (of ``name``); return one line per problem."""
        if name is not None:
            check_name(name)
            if not self.storage.list_names(f"adapters/{name}/versions"):
                raise NotFound(f"no adapter named {name!r}")
        checked: dict[tuple[str, int], str | None] = {}
        problems: list[str] = []
        for each in [name] if name is not None else self.names():
            problems += self._verify_name(each, checked)
        return problems

    def _verify_name(self, name: str, checked: dict[tuple[str, int], str | None]) -> list[str]:
        """Problems of one name; ``checked`` caches blob outcomes across names."""
        state = self._state(name)
        problems = list(state.broken_aliases.values())
        problems += [
            f"{name}@{alias}: points to missing version {version}"
            for alias, version in state.aliases.items()
            if version not in state.versions
        ]
        for info in self._listed(name, state):
            if info.problem:
                problems.append(info.problem)
                continue
            for record in info.files():
                key = (record.sha256, record.size)
                if key not in checked:
                    checked[key] = self._check_blob(record, None)
                if checked[key] is not None:
                    problems.append(f"{info.ref}: file {record.path}: {checked[key]}")
        return problems

    def gc(self, min_age_s: float = 3600.0) -> list[str]:
        """Delete blobs no version (yanked included) uses; return their sha256 ids.

        Blobs and temporary files younger than ``min_age_s`` are kept: they may belong to a
        publish in progress.
        """
        referenced = set()
        for name in self.names():
            state = self._state(name)
            for version in state.versions:
                info = self._info(name, version, state)
                referenced.update(record.sha256 for record in info.files())
        for name in self.names():
            for folder in ("versions", "aliases", "yanked"):
                self._sweep_temps(f"adapters/{name}/{folder}", min_age_s)
        removed = []
        for entry in self.storage.list_names("blobs/sha256"):
            is_blob = SHA256_PATTERN.fullmatch(entry) is not None
            if (is_blob and entry in referenced) or (not is_blob and TEMP_MARK not in entry):
                continue
            if self._old_enough(f"blobs/sha256/{entry}", min_age_s):
                self.storage.remove(f"blobs/sha256/{entry}")
                if is_blob:
                    removed.append(entry)
        return removed

    def _sweep_temps(self, folder: str, min_age_s: float) -> None:
        """Remove temporary files a killed writer left in ``folder``."""
        for entry in self.storage.list_names(folder):
            if TEMP_MARK in entry and self._old_enough(f"{folder}/{entry}", min_age_s):
                self.storage.remove(f"{folder}/{entry}")

    def _old_enough(self, relative: str, min_age_s: float) -> bool:
        if min_age_s <= 0:
            return True
        age = self.storage.age_seconds(relative)
        return age is not None and age >= min_age_s


def _move_into_place(temp: Path, out: Path) -> None:
    """Rename a complete directory onto ``out``, replacing whatever was there."""
    if not out.exists():
        os.rename(temp, out)
        return
    old = out.parent / temp_name(out.name)
    os.rename(out, old)
    os.rename(temp, out)
    if old.is_dir():
        shutil.rmtree(old)
    else:
        old.unlink()
