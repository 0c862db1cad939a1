"""Names, aliases and references are validated before any storage is touched."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from adapters_registry import InvalidName, Registry
from adapters_registry.names import Ref, check_alias, check_name, parse_ref

RULE = re.compile(r"[a-z0-9][a-z0-9._-]{0,127}")


@given(st.from_regex(RULE, fullmatch=True))
def test_every_name_matching_the_rule_is_accepted(name: str) -> None:
    assert check_name(name) == name


@given(st.text(max_size=140))
def test_a_name_is_accepted_exactly_when_it_matches_the_rule(name: str) -> None:
    if RULE.fullmatch(name):
        assert check_name(name) == name
        assert "/" not in name and "\\" not in name and name not in (".", "..")
    else:
        with pytest.raises(InvalidName):
            check_name(name)


@pytest.mark.parametrize(
    "name",
    ["", "..", ".", "a/b", "a\\b", "../x", "x" * 129, "Upper", "a\nb", "a\x00b", "ok\n", "-x"],
)
def test_bad_names_are_refused(name: str) -> None:
    with pytest.raises(InvalidName, match="invalid name"):
        check_name(name)


def test_longest_valid_name_has_128_characters() -> None:
    assert check_name("a" * 128) == "a" * 128


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("foo", Ref("foo", alias="latest")),
        ("foo:3", Ref("foo", version=3)),
        ("foo@prod", Ref("foo", alias="prod")),
        ("my.adapter-v2_x@canary.1", Ref("my.adapter-v2_x", alias="canary.1")),
    ],
)
def test_references_parse_to_name_and_version_or_alias(text: str, expected: Ref) -> None:
    assert parse_ref(text) == expected


@pytest.mark.parametrize("text", ["foo:", "foo:0", "foo:-1", "foo:x", "foo@", "foo@../x", ":3"])
def test_malformed_references_are_refused(text: str) -> None:
    with pytest.raises(InvalidName):
        parse_ref(text)


def test_latest_cannot_be_set_as_an_alias() -> None:
    with pytest.raises(InvalidName, match="implicit"):
        check_alias("latest")


@pytest.mark.parametrize("name", ["../escape", "a/b", "", "x" * 200])
def test_invalid_name_is_refused_before_storage_is_touched(
    tmp_path: Path, artifact: Path, name: str
) -> None:
    root = tmp_path / "never-created"
    registry = Registry(root)
    with pytest.raises(InvalidName):
        registry.publish(artifact, name)
    with pytest.raises(InvalidName):
        registry.pull(f"{name}:1", tmp_path / "out")
    with pytest.raises(InvalidName):
        registry.set_alias("ok", name, 1)
    assert not root.exists()
    assert not (tmp_path / "out").exists()
