"""Publish, version, alias, verify and fetch adapter artifacts (see ``docs/registry.md``)."""

from adapters_registry.artifact import Limits, load_artifact, write_manifest
from adapters_registry.errors import (
    FingerprintMismatch,
    IntegrityError,
    InvalidArtifact,
    InvalidName,
    LimitExceeded,
    NotFound,
    RegistryError,
)
from adapters_registry.peft_import import import_peft
from adapters_registry.store import Registry
from adapters_registry.versions import VerifiedFiles, VersionInfo, check_fingerprint

__all__ = [
    "FingerprintMismatch",
    "IntegrityError",
    "InvalidArtifact",
    "InvalidName",
    "LimitExceeded",
    "Limits",
    "NotFound",
    "Registry",
    "RegistryError",
    "VerifiedFiles",
    "VersionInfo",
    "check_fingerprint",
    "import_peft",
    "load_artifact",
    "write_manifest",
]
