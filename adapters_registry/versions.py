"""What one published version is: its record, its aliases, and the fingerprint check."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Any

from adapters_registry.artifact import (
    MANIFEST,
    SHA256_PATTERN,
    FileRecord,
    Limits,
    fingerprint_of,
    validate_manifest,
)
from adapters_registry.errors import FingerprintMismatch, IntegrityError, InvalidArtifact
from adapters_registry.names import LATEST
from adapters_registry.strict_json import load_object

SCHEMA_ONLY = Limits(sys.maxsize, sys.maxsize)


@dataclass(frozen=True)
class VersionInfo:
    """One published version. ``aliases`` includes ``latest`` when it resolves here.

    ``problem`` is empty for a whole record; a listing returns a version whose record cannot
    be read with ``problem`` saying why, an empty manifest, and nothing else known about it.
    """

    name: str
    version: int
    manifest: dict[str, Any]
    yanked: bool
    created: str
    manifest_sha256: str
    manifest_size: int
    aliases: tuple[str, ...] = ()
    problem: str = ""

    @classmethod
    def unreadable(cls, name: str, version: int, state: NameState, problem: str) -> VersionInfo:
        """A version whose record is corrupt, as a listing shows it."""
        return cls(name, version, {}, version in state.yanked, "", "", 0,
                   state.aliases_of(version), problem)

    @property
    def ref(self) -> str:
        """``NAME:VERSION``."""
        return f"{self.name}:{self.version}"

    @property
    def fingerprint(self) -> str:
        """Fingerprint of the base model the adapter was trained on."""
        return fingerprint_of(self.manifest)

    def files(self) -> tuple[FileRecord, ...]:
        """Every file of the artifact, ``manifest.json`` first."""
        listed = validate_manifest(self.manifest, SCHEMA_ONLY, sizes=None)
        return (FileRecord(MANIFEST, self.manifest_sha256, self.manifest_size), *listed)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (what ``adapter-registry show`` prints)."""
        return {
            "name": self.name,
            "version": self.version,
            "yanked": self.yanked,
            "created": self.created,
            "aliases": list(self.aliases),
            "manifest": self.manifest,
        }


@dataclass(frozen=True)
class VerifiedFiles:
    """Every file of a version (path -> bytes), read into memory and checked by sha256."""

    info: VersionInfo
    files: dict[str, bytes] = field(repr=False)


@dataclass(frozen=True)
class NameState:
    """The mutable part of one name: which versions exist, are yanked, and the aliases.

    ``broken_aliases`` maps an alias whose file cannot be read to the problem; it resolves
    to nothing, and hides no version.
    """

    versions: tuple[int, ...]
    yanked: frozenset[int]
    aliases: dict[str, int]
    broken_aliases: dict[str, str] = field(default_factory=dict)

    @property
    def latest(self) -> int | None:
        """Highest version that is not yanked."""
        return max((v for v in self.versions if v not in self.yanked), default=None)

    def aliases_of(self, version: int) -> tuple[str, ...]:
        """Aliases resolving to ``version``, ``latest`` first when it does."""
        names = sorted(alias for alias, target in self.aliases.items() if target == version)
        return (LATEST, *names) if version == self.latest else tuple(names)


def parse_record(data: bytes, name: str, version: int, state: NameState, label: str) -> VersionInfo:
    """Parse a version record; raise :class:`IntegrityError` naming ``label`` if corrupt."""
    try:
        record = load_object(data, "content")
        if (record["name"], record["version"]) != (name, version):
            raise ValueError("name or version differs from its path")
        if not SHA256_PATTERN.fullmatch(record["manifest_sha256"]):
            raise ValueError("bad manifest_sha256")
        info = VersionInfo(
            name=name,
            version=version,
            manifest=record["manifest"],
            yanked=version in state.yanked,
            created=record["created"],
            manifest_sha256=record["manifest_sha256"],
            manifest_size=record["manifest_size"],
            aliases=state.aliases_of(version),
        )
        info.files()
    except (ValueError, KeyError, TypeError, InvalidArtifact) as exc:
        message = f"{name}:{version}: version record {label} is corrupt ({exc})"
        raise IntegrityError(message) from None
    return info


def check_fingerprint(info: VersionInfo, expected: str | None) -> None:
    """Raise :class:`FingerprintMismatch` unless ``info`` was trained on backbone ``expected``."""
    if expected is not None and info.fingerprint != expected:
        raise FingerprintMismatch(
            f"adapter {info.ref} was trained for base model {info.fingerprint}, "
            f"but the backbone here is {expected}; refusing to load it"
        )
