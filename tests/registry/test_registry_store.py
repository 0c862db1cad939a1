"""Registry behaviour: versions, aliases, yank, pull with verification, gc, fsspec roots."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from adapters_registry import (
    FingerprintMismatch,
    IntegrityError,
    NotFound,
    Registry,
    RegistryError,
)
from adapters_registry.artifact import MANIFEST
from adapters_registry.store import ROOT_ENV


def blob_path(registry: Registry, ref: str, path: str) -> Path:
    info = registry.resolve(ref)
    sha = {record.path: record.sha256 for record in info.files()}[path]
    return Path(registry.storage.path(f"blobs/sha256/{sha}"))


def tree(directory: Path) -> dict[str, bytes]:
    return {
        p.relative_to(directory).as_posix(): p.read_bytes()
        for p in directory.rglob("*")
        if p.is_file()
    }


def test_publish_gives_monotonic_versions(registry: Registry, make_artifact: Callable) -> None:
    versions = [registry.publish(make_artifact(f"a{i}", seed=i), "cap") for i in range(3)]
    assert versions == [1, 2, 3]
    assert [info.ref for info in registry.index()] == ["cap:1", "cap:2", "cap:3"]


def test_pull_writes_the_published_bytes(
    registry: Registry, artifact: Path, tmp_path: Path
) -> None:
    registry.publish(artifact, "cap")
    info = registry.pull("cap:1", tmp_path / "out")
    assert info.ref == "cap:1"
    assert tree(tmp_path / "out") == tree(artifact)


def test_identical_files_are_stored_once(registry: Registry, artifact: Path) -> None:
    registry.publish(artifact, "one")
    registry.publish(artifact, "two")
    assert len(registry.storage.list_names("blobs/sha256")) == 4


def test_latest_and_aliases_resolve(registry: Registry, make_artifact: Callable) -> None:
    registry.publish(make_artifact("a", seed=1), "cap", alias="prod")
    registry.publish(make_artifact("b", seed=2), "cap")
    assert registry.resolve("cap").version == 2
    assert registry.resolve("cap@latest").version == 2
    assert registry.resolve("cap@prod").version == 1
    registry.set_alias("cap", "prod", 2)
    assert registry.resolve("cap@prod").version == 2
    assert registry.resolve("cap:2").aliases == ("latest", "prod")


def test_yanked_version_is_hidden_but_kept(registry: Registry, make_artifact: Callable) -> None:
    registry.publish(make_artifact("a", seed=1), "cap")
    registry.publish(make_artifact("b", seed=2), "cap", alias="prod")
    registry.yank("cap", 2, reason="bad metrics")
    assert registry.resolve("cap").version == 1
    with pytest.raises(NotFound, match="cap:2 is yanked"):
        registry.resolve("cap:2")
    with pytest.raises(NotFound, match="cap@prod points to cap:2, which is yanked"):
        registry.resolve("cap@prod")
    with pytest.raises(NotFound, match="yanked"):
        registry.set_alias("cap", "canary", 2)
    audit = registry.resolve("cap:2", include_yanked=True)
    assert audit.yanked and audit.manifest["tasks"]
    assert [info.yanked for info in registry.index()] == [False, True]
    assert registry.verify() == []


def test_unknown_references_are_not_found(registry: Registry, artifact: Path) -> None:
    with pytest.raises(NotFound, match="no adapter named 'cap'"):
        registry.resolve("cap")
    registry.publish(artifact, "cap")
    with pytest.raises(NotFound, match="cap:7 does not exist"):
        registry.resolve("cap:7")
    with pytest.raises(NotFound, match="cap@prod does not exist"):
        registry.resolve("cap@prod")
    with pytest.raises(NotFound):
        registry.yank("cap", 9)


def test_pull_refuses_other_backbone_naming_both_fingerprints(
    registry: Registry, artifact: Path, tmp_path: Path, fingerprints: tuple[str, str]
) -> None:
    ours, other = fingerprints
    registry.publish(artifact, "cap")
    with pytest.raises(FingerprintMismatch) as caught:
        registry.pull("cap", tmp_path / "out", expected_fingerprint=other)
    assert ours in str(caught.value) and other in str(caught.value)
    assert not (tmp_path / "out").exists()
    registry.pull("cap", tmp_path / "out", expected_fingerprint=ours)


def test_pull_refuses_flipped_byte_naming_the_file(
    registry: Registry, artifact: Path, tmp_path: Path
) -> None:
    registry.publish(artifact, "cap")
    blob = blob_path(registry, "cap:1", "tasks/vqa.safetensors")
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0x01
    blob.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match=r"cap:1: file tasks/vqa\.safetensors: sha256"):
        registry.pull("cap:1", tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert list(tmp_path.glob(".out*")) == []
    [problem] = registry.verify()
    assert "tasks/vqa.safetensors" in problem and "sha256 mismatch" in problem


def test_pull_refuses_truncated_blob_naming_the_file(
    registry: Registry, artifact: Path, tmp_path: Path
) -> None:
    registry.publish(artifact, "cap")
    blob = blob_path(registry, "cap:1", "shared.safetensors")
    blob.write_bytes(blob.read_bytes()[:-10])
    with pytest.raises(IntegrityError, match=r"shared\.safetensors: .*truncated"):
        registry.pull("cap:1", tmp_path / "out")
    with pytest.raises(IntegrityError, match=r"shared\.safetensors"):
        registry.read_files("cap:1")
    assert any("shared.safetensors" in problem for problem in registry.verify("cap"))


def test_pull_refuses_missing_blob_naming_the_file(
    registry: Registry, artifact: Path, tmp_path: Path
) -> None:
    registry.publish(artifact, "cap")
    blob_path(registry, "cap:1", MANIFEST).unlink()
    with pytest.raises(IntegrityError, match=r"file manifest\.json: blob sha256/\w+ is missing"):
        registry.pull("cap:1", tmp_path / "out")
    [problem] = registry.verify()
    assert "file manifest.json" in problem and "missing" in problem


def test_pull_keeps_existing_output_unless_forced(
    registry: Registry, make_artifact: Callable, tmp_path: Path
) -> None:
    registry.publish(make_artifact("a", seed=1), "cap")
    second = make_artifact("b", seed=2)
    registry.publish(second, "cap")
    out = tmp_path / "out"
    registry.pull("cap:1", out)
    with pytest.raises(RegistryError, match="not empty"):
        registry.pull("cap:2", out)
    registry.pull("cap:2", out, overwrite=True)
    assert tree(out) == tree(second)


def test_read_files_returns_verified_bytes_per_file(registry: Registry, artifact: Path) -> None:
    registry.publish(artifact, "cap")
    loaded = registry.read_files("cap@latest")
    assert loaded.info.ref == "cap:1"
    assert loaded.files == tree(artifact)


def test_corrupt_version_record_is_reported_not_crashed_on(
    registry: Registry, artifact: Path
) -> None:
    registry.publish(artifact, "cap")
    record = Path(registry.storage.path("adapters/cap/versions/1.json"))
    record.write_text(record.read_text().replace('"version": 1', '"version": 5'))
    with pytest.raises(IntegrityError, match="version record .* is corrupt"):
        registry.resolve("cap:1")
    assert "corrupt" in registry.verify()[0]


def test_index_lists_every_readable_version_and_marks_a_corrupt_record(
    registry: Registry, make_artifact: Callable
) -> None:
    for i in range(3):
        registry.publish(make_artifact(f"a{i}", seed=i), "cap")
    registry.publish(make_artifact("other"), "other")
    Path(registry.storage.path("adapters/cap/versions/2.json")).write_text("{not json")
    infos = registry.index()
    assert [(info.ref, bool(info.problem)) for info in infos] == [
        ("cap:1", False), ("cap:2", True), ("cap:3", False), ("other:1", False)
    ]
    assert all(info.manifest["tasks"] for info in infos if not info.problem)
    broken = infos[1]
    assert "cap:2" in broken.problem and "corrupt" in broken.problem and broken.manifest == {}
    assert registry.verify() == [broken.problem]
    assert registry.resolve("cap").version == 3
    with pytest.raises(IntegrityError, match="cap:2"):
        registry.resolve("cap:2")


def test_corrupt_alias_file_hides_no_version(registry: Registry, make_artifact: Callable) -> None:
    registry.publish(make_artifact("a"), "cap", alias="prod")
    registry.publish(make_artifact("b", seed=1), "cap", alias="stable")
    Path(registry.storage.path("adapters/cap/aliases/prod")).write_text("{not json")
    assert [(info.ref, info.aliases) for info in registry.index()] == [
        ("cap:1", ()), ("cap:2", ("latest", "stable"))
    ]
    assert registry.resolve("cap@stable").version == 2
    with pytest.raises(IntegrityError, match="alias file .*prod is corrupt"):
        registry.resolve("cap@prod")
    [problem] = registry.verify()
    assert "prod" in problem
    registry.set_alias("cap", "prod", 1)  # writing the alias again repairs it
    assert registry.resolve("cap@prod").version == 1 and registry.verify() == []


def test_gc_removes_only_unreferenced_blobs(registry: Registry, artifact: Path) -> None:
    registry.publish(artifact, "cap")
    orphan = Path(registry.storage.path("blobs/sha256/" + "0" * 64))
    orphan.write_bytes(b"left by a killed publish")
    leftover_temp = orphan.parent / ".abc.tmp-123"
    leftover_temp.write_bytes(b"partial")
    assert registry.gc(min_age_s=3600) == []
    assert registry.gc(min_age_s=0) == ["0" * 64]
    assert not orphan.exists() and not leftover_temp.exists()
    assert registry.verify() == []


def test_yanked_versions_keep_their_blobs_through_gc(registry: Registry, artifact: Path) -> None:
    registry.publish(artifact, "cap")
    registry.yank("cap", 1)
    assert registry.gc(min_age_s=0) == []
    assert registry.verify() == []


def test_root_defaults_to_environment_variable(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, artifact: Path
) -> None:
    monkeypatch.setenv(ROOT_ENV, str(tmp_path / "from-env"))
    Registry().publish(artifact, "cap")
    assert (tmp_path / "from-env" / "adapters" / "cap" / "versions" / "1.json").is_file()


def test_registry_works_on_a_non_local_fsspec_filesystem(
    artifact: Path, tmp_path: Path, fingerprints: tuple[str, str]
) -> None:
    registry = Registry(f"memory://registry-{uuid.uuid4().hex}")
    assert registry.publish(artifact, "cap", alias="prod") == 1
    assert registry.publish(artifact, "cap") == 2
    registry.yank("cap", 2)
    assert registry.resolve("cap").version == 1
    registry.pull("cap@prod", tmp_path / "out", expected_fingerprint=fingerprints[0])
    assert tree(tmp_path / "out") == tree(artifact)
    assert registry.verify() == []
    assert registry.gc(min_age_s=0) == []
    assert not registry.storage.create_exclusive("adapters/cap/versions/1.json", b"{}")


def test_publishing_again_repairs_a_damaged_blob(registry: Registry, artifact: Path) -> None:
    registry.publish(artifact, "cap")
    blob = blob_path(registry, "cap:1", "shared.safetensors")
    data = bytearray(blob.read_bytes())
    data[-1] ^= 0x10
    blob.write_bytes(bytes(data))
    assert len(registry.verify()) == 1
    registry.publish(artifact, "cap")
    assert registry.verify() == []
