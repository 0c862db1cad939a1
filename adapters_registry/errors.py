"""Errors raised by the adapter registry.

Every error a user can cause is a :class:`RegistryError`; the CLI prints its message on one
line and exits with code 2, the server maps it to a gRPC status.
"""


class RegistryError(Exception):
    """Base class of every error the registry reports to a user."""


class InvalidName(RegistryError):
    """A name, alias, version or reference does not follow the naming rule."""


class NotFound(RegistryError):
    """A name, version, alias or blob does not exist (or is yanked)."""


class IntegrityError(RegistryError):
    """Stored bytes do not match the sha256 or size recorded for them."""


class FingerprintMismatch(RegistryError):
    """An adapter was trained for a different backbone than the one asking for it."""


class LimitExceeded(RegistryError):
    """An artifact is larger or has more files than the configured limits allow."""


class InvalidArtifact(RegistryError):
    """An artifact directory, manifest or tensor file breaks the artifact format."""
