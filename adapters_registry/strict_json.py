"""The one reader of the registry's JSON: manifests, safetensors headers, version records,
alias files and PEFT configs.

Strict: UTF-8, no duplicate keys (two parsers may keep different copies of a repeated key,
so a file could mean one thing when verified and another when loaded) and no NaN or
Infinity (not JSON). A file that must hold an object and does not is refused the same way
wherever it is read.
"""

from __future__ import annotations

import json
from typing import Any

from adapters_registry.errors import InvalidArtifact


def _strict_object(pairs: list[tuple[str, object]]) -> dict[str, object]:
    keys = [key for key, _ in pairs]
    if len(set(keys)) != len(keys):
        raise ValueError("duplicate key")
    return dict(pairs)


def _refuse_constant(token: str) -> None:
    raise ValueError(f"non-standard JSON constant {token}")


def loads_strict(data: bytes) -> object:
    """Parse JSON bytes, refusing duplicate keys and NaN/Infinity (ValueError)."""
    return json.loads(
        data.decode("utf-8"), object_pairs_hook=_strict_object, parse_constant=_refuse_constant
    )


def load_object(data: bytes, label: str) -> dict[str, Any]:
    """``data`` as a strict JSON object; :class:`InvalidArtifact` naming ``label`` otherwise."""
    try:
        value = loads_strict(data)
    except ValueError as exc:  # UnicodeDecodeError included
        raise InvalidArtifact(f"{label}: not valid JSON ({exc})") from None
    if not isinstance(value, dict):
        raise InvalidArtifact(f"{label}: not a JSON object")
    return value
