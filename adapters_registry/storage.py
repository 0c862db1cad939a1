"""The few storage operations the registry needs, on any fsspec filesystem.

Local directories get the full guarantees: files appear by ``os.replace``/``os.link`` of a
complete, fsynced temporary file, and a per-name ``fcntl`` lock serialises alias and yank
updates (the kernel drops it when a process dies, so a killed publisher never leaves a stale
lock).

Object stores (S3 via ``s3fs``, GCS via ``gcsfs``, ...) have no rename and no locks. There,
an object becomes visible only when its upload completes, so a version record written last
still never names a missing blob; version numbers are claimed with a conditional create
(``pipe_file(mode="create")``, i.e. ``If-None-Match: *`` on S3 and ``ifGenerationMatch=0``
on GCS). Limitation: a backend without conditional create falls back to check-then-write, so
two concurrent publishers of one name could claim the same version (one is lost); alias and
yank updates are last-writer-wins; and ``gc`` relies on its minimum age, not a lock, to spare
blobs of a publish in progress.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any, BinaryIO

import fsspec
from fsspec.implementations.local import LocalFileSystem

from adapters_registry.errors import IntegrityError

CHUNK_BYTES = 1024 * 1024
TEMP_MARK = ".tmp-"


def temp_name(final_name: str) -> str:
    """Name of a temporary file next to ``final_name``; never a valid registry name."""
    return f".{final_name}{TEMP_MARK}{uuid.uuid4().hex}"


class Storage:
    """Paths relative to a registry root on one fsspec filesystem (``/``-separated)."""

    def __init__(self, url: str, storage_options: dict[str, Any] | None = None) -> None:
        self.url = url
        self.fs, self.root = fsspec.core.url_to_fs(url, **(storage_options or {}))
        self.local = isinstance(self.fs, LocalFileSystem)

    def path(self, relative: str) -> str:
        """Full filesystem path of ``relative``."""
        return f"{self.root.rstrip('/')}/{relative}"

    def exists(self, relative: str) -> bool:
        """Whether a file exists at ``relative``."""
        return self.fs.exists(self.path(relative))

    def read_bytes(self, relative: str) -> bytes:
        """Whole content of a file; raises ``FileNotFoundError`` when absent."""
        return self.fs.cat_file(self.path(relative))

    def open_read(self, relative: str) -> BinaryIO:
        """Open a file for binary reading; raises ``FileNotFoundError`` when absent."""
        return self.fs.open(self.path(relative), "rb")

    def size(self, relative: str) -> int:
        """Size in bytes of a file."""
        return self.fs.size(self.path(relative))

    def list_names(self, relative: str) -> list[str]:
        """Base names of the entries of a directory, sorted; empty when it does not exist."""
        path = self.path(relative)
        self.fs.invalidate_cache(path)
        try:
            entries = self.fs.ls(path, detail=False)
        except FileNotFoundError:
            return []
        return sorted(entry.rstrip("/").rsplit("/", 1)[-1] for entry in entries)

    def remove(self, relative: str) -> None:
        """Delete a file."""
        self.fs.rm_file(self.path(relative))

    def age_seconds(self, relative: str) -> float | None:
        """Seconds since a file was last modified, or ``None`` when the backend cannot say."""
        try:
            modified = self.fs.modified(self.path(relative))
        except (NotImplementedError, OSError):
            return None
        if modified.tzinfo is None:
            modified = modified.replace(tzinfo=UTC)
        return (datetime.now(UTC) - modified).total_seconds()

    def _local_temp(self, relative: str) -> tuple[str, str]:
        final = self.path(relative)
        parent, name = final.rsplit("/", 1)
        os.makedirs(parent, exist_ok=True)
        return final, f"{parent}/{temp_name(name)}"

    @staticmethod
    def _write_synced(path: str, data: bytes) -> None:
        with open(path, "wb") as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())

    def write_atomic(self, relative: str, data: bytes) -> None:
        """Replace a file with ``data``; readers see the old or the new content, never part."""
        if not self.local:
            self.fs.pipe_file(self.path(relative), data)
            return
        final, temp = self._local_temp(relative)
        self._write_synced(temp, data)
        os.replace(temp, final)

    def create_exclusive(self, relative: str, data: bytes) -> bool:
        """Create a complete file unless one exists; return whether this call created it."""
        if not self.local:
            try:
                self.fs.pipe_file(self.path(relative), data, mode="create")
            except FileExistsError:
                return False
            return True
        final, temp = self._local_temp(relative)
        self._write_synced(temp, data)
        try:
            os.link(temp, final)
        except FileExistsError:
            return False
        finally:
            os.unlink(temp)
        return True

    def put_verified(self, relative: str, source: str, sha256: str, size: int) -> None:
        """Store the file ``source`` at ``relative`` unless an intact copy is already there.

        The bytes stored are hashed while copying; if they differ from ``sha256``/``size`` (the
        source changed after it was validated) nothing is stored and IntegrityError is raised.
        A damaged existing copy is replaced, so publishing again repairs it.
        """
        if self._holds(relative, sha256, size):
            if self.local:
                os.utime(self.path(relative))  # a fresh mtime keeps gc off a reused blob
            return
        if not self.local:
            with open(source, "rb") as stream:
                data = stream.read()
            _check_digest(source, hashlib.sha256(data).hexdigest(), len(data), sha256, size)
            self.fs.pipe_file(self.path(relative), data)
            return
        final, temp = self._local_temp(relative)
        digest, copied = hashlib.sha256(), 0
        try:
            with open(source, "rb") as reader, open(temp, "wb") as writer:
                while chunk := reader.read(CHUNK_BYTES):
                    digest.update(chunk)
                    copied += len(chunk)
                    writer.write(chunk)
                writer.flush()
                os.fsync(writer.fileno())
            _check_digest(source, digest.hexdigest(), copied, sha256, size)
            os.replace(temp, final)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temp)

    def _holds(self, relative: str, sha256: str, size: int) -> bool:
        """Whether ``relative`` exists with exactly this size and sha256."""
        try:
            if self.size(relative) != size:
                return False
            digest = hashlib.sha256()
            with self.open_read(relative) as stream:
                while chunk := stream.read(CHUNK_BYTES):
                    digest.update(chunk)
        except FileNotFoundError:
            return False
        return digest.hexdigest() == sha256

    @contextlib.contextmanager
    def lock(self, relative_dir: str) -> Iterator[None]:
        """Hold an exclusive lock on a directory (local filesystems; a no-op elsewhere)."""
        if not self.local:
            yield
            return
        lock_path = self.path(f"{relative_dir}/.lock")
        os.makedirs(lock_path.rsplit("/", 1)[0], exist_ok=True)
        descriptor = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX)
            yield
        finally:
            os.close(descriptor)


def _check_digest(label: str, actual_sha: str, actual_size: int, sha256: str, size: int) -> None:
    if actual_sha != sha256 or actual_size != size:
        raise IntegrityError(f"{label}: changed while publishing (sha256 or size differs)")
