"""Names, aliases and references: ``NAME``, ``NAME:VERSION`` and ``NAME@ALIAS``.

Every name and alias follows ``[a-z0-9][a-z0-9._-]{0,127}``; the check runs before any
storage is touched, so a name can never become a path outside its own directory.
``latest`` is an implicit alias: the highest version that is not yanked.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from adapters_registry.errors import InvalidName

NAME_PATTERN = re.compile(r"[a-z0-9][a-z0-9._-]{0,127}")
VERSION_PATTERN = re.compile(r"[1-9][0-9]{0,17}")
LATEST = "latest"


def check_name(name: str, what: str = "name") -> str:
    """Return ``name`` unchanged, or raise :class:`InvalidName` saying why it is refused."""
    if not isinstance(name, str) or NAME_PATTERN.fullmatch(name) is None:
        raise InvalidName(f"invalid {what} {name!r}: must match [a-z0-9][a-z0-9._-]{{0,127}}")
    return name


def check_alias(alias: str) -> str:
    """Validate an alias that may be stored (any valid name except the implicit ``latest``)."""
    check_name(alias, "alias")
    if alias == LATEST:
        raise InvalidName("alias 'latest' is implicit (the highest non-yanked version)")
    return alias


def parse_version(text: str | int) -> int:
    """Parse a version number (a positive integer) given as text or int."""
    if isinstance(text, int) and not isinstance(text, bool) and text > 0:
        return text
    if isinstance(text, str) and VERSION_PATTERN.fullmatch(text):
        return int(text)
    raise InvalidName(f"invalid version {text!r}: must be a positive integer")


@dataclass(frozen=True)
class Ref:
    """A parsed reference: exactly one of ``version`` or ``alias`` is set."""

    name: str
    version: int | None = None
    alias: str | None = None

    def __str__(self) -> str:
        if self.version is not None:
            return f"{self.name}:{self.version}"
        return f"{self.name}@{self.alias}"


def parse_ref(text: str) -> Ref:
    """Parse ``NAME``, ``NAME:VERSION`` or ``NAME@ALIAS``; a bare name means ``@latest``."""
    if not isinstance(text, str):
        raise InvalidName(f"invalid reference {text!r}")
    if ":" in text:
        name, _, version = text.partition(":")
        return Ref(check_name(name), version=parse_version(version))
    if "@" in text:
        name, _, alias = text.partition("@")
        return Ref(check_name(name), alias=check_name(alias, "alias"))
    return Ref(check_name(text), alias=LATEST)
