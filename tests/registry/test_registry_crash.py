"""Atomic publish under SIGKILL, and concurrent publishers of one name, in real processes."""

from __future__ import annotations

import hashlib
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from adapters_registry import NotFound, Registry

REPO = Path(__file__).resolve().parents[2]
PUBLISH = """
import sys, time
from pathlib import Path
from adapters_registry import Registry
registry = Registry(sys.argv[1])
print("ready", flush=True)
go = Path(sys.argv[3]) if len(sys.argv) > 3 else None
while go is not None and not go.exists():
    time.sleep(0.005)
print(registry.publish(sys.argv[2], "big", alias="prod"), flush=True)
"""


def start_publisher(root: Path, artifact: Path, *extra: str) -> subprocess.Popen[str]:
    process = subprocess.Popen(
        [sys.executable, "-c", PUBLISH, str(root), str(artifact), *extra],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None and process.stdout.readline() == "ready\n"
    return process


def manifest_sha(artifact: Path) -> str:
    return hashlib.sha256((artifact / "manifest.json").read_bytes()).hexdigest()


def assert_every_visible_version_is_whole(registry: Registry, published: set[str]) -> list[int]:
    versions = [info.version for info in registry.index("big")]
    assert versions == list(range(1, len(versions) + 1))
    for version in versions:
        loaded = registry.read_files(f"big:{version}")
        assert loaded.info.manifest_sha256 in published
    return versions


def test_killing_publisher_at_random_moments_leaves_no_or_whole_versions(
    tmp_path: Path, make_artifact: Callable[..., Path]
) -> None:
    rng = random.Random(1234)
    root = tmp_path / "registry"
    registry = Registry(root)
    # A few MB per artifact, each with new content so every run writes new blobs.
    artifacts = [make_artifact(f"big{i}", rank=8, width=65536, seed=i) for i in range(21)]
    published = {manifest_sha(artifact) for artifact in artifacts}

    first = start_publisher(root, artifacts[0])
    started = time.monotonic()
    first.wait(timeout=30)
    publish_seconds = time.monotonic() - started
    completed, killed = 1, 0
    for artifact in artifacts[1:]:
        process = start_publisher(root, artifact)
        deadline = time.monotonic() + rng.uniform(0, 1.2 * publish_seconds)
        while time.monotonic() < deadline:  # a reader polls while the publisher writes
            try:
                assert registry.read_files("big").info.manifest_sha256 in published
            except NotFound:
                pass
        process.send_signal(signal.SIGKILL)
        returncode = process.wait(timeout=30)
        completed += returncode == 0
        killed += returncode == -signal.SIGKILL
        versions = assert_every_visible_version_is_whole(registry, published)
        assert len(versions) >= completed
        assert registry.verify() == []
    assert killed >= 5
    registry.gc(min_age_s=0)
    assert registry.verify() == []
    assert_every_visible_version_is_whole(registry, published)


def test_concurrent_publishers_of_one_name_get_distinct_versions(
    tmp_path: Path, make_artifact: Callable[..., Path]
) -> None:
    root, go = tmp_path / "registry", tmp_path / "go"
    artifacts = [make_artifact(f"a{i}", seed=i) for i in range(6)]
    processes = [start_publisher(root, artifact, str(go)) for artifact in artifacts]
    go.touch()
    outputs = [process.communicate(timeout=60)[0] for process in processes]
    assert [process.returncode for process in processes] == [0] * len(processes)
    assert sorted(int(output) for output in outputs) == [1, 2, 3, 4, 5, 6]
    registry = Registry(root)
    by_sha = {info.manifest_sha256: info.version for info in registry.index("big")}
    assert set(by_sha) == {manifest_sha(artifact) for artifact in artifacts}
    assert registry.verify() == []
    assert registry.resolve("big@prod").version in range(1, 7)
