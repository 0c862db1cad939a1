"""The adapter-registry CLI: exit codes, one-line errors, every command end to end."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from adapters_registry.cli import main


def run(capsys: pytest.CaptureFixture[str], root: Path, *argv: str) -> tuple[int, str, str]:
    code = main(["--root", str(root), *argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_publish_list_show_pull_alias_yank_verify_gc(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, artifact: Path
) -> None:
    root = tmp_path / "registry"
    assert run(capsys, root, "publish", str(artifact), "--name", "cap", "--alias", "prod") == (
        0,
        "cap:1\n",
        "",
    )
    assert run(capsys, root, "publish", str(artifact), "--name", "cap")[1] == "cap:2\n"
    code, out, _ = run(capsys, root, "list")
    assert code == 0 and "cap" in out and "latest" in out and "prod" in out
    code, out, _ = run(capsys, root, "show", "cap@prod")
    assert code == 0 and json.loads(out)["version"] == 1
    assert run(capsys, root, "alias", "set", "cap", "prod", "2")[0] == 0
    assert run(capsys, root, "yank", "cap:1", "--reason", "broken")[1] == "yanked cap:1\n"
    assert "(yanked)" in run(capsys, root, "list", "cap")[1]
    assert run(capsys, root, "pull", "cap@prod", "--out", str(tmp_path / "out"))[0] == 0
    assert (tmp_path / "out" / "manifest.json").is_file()
    assert run(capsys, root, "verify") == (0, "ok\n", "")
    assert run(capsys, root, "gc", "--min-age", "0") == (0, "", "")


@pytest.mark.parametrize(
    "argv",
    [
        ["show", "../etc"],
        ["show", "cap:1"],
        ["pull", "cap", "--out", "x"],
        ["yank", "cap"],
        ["alias", "set", "cap", "latest", "1"],
        ["publish", "/no/such/dir", "--name", "cap"],
        ["verify", "Bad Name"],
    ],
)
def test_user_errors_exit_2_with_one_error_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, argv: list[str]
) -> None:
    code, out, err = run(capsys, tmp_path / "registry", *argv)
    assert code == 2
    assert err.startswith("error: ") and err.count("\n") == 1
    assert "Traceback" not in out + err


def test_pull_of_other_backbone_names_both_fingerprints(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    artifact: Path,
    fingerprints: tuple[str, str],
) -> None:
    root = tmp_path / "registry"
    run(capsys, root, "publish", str(artifact), "--name", "cap")
    out_dir = str(tmp_path / "out")
    code, _, err = run(
        capsys, root, "pull", "cap", "--out", out_dir, "--fingerprint", fingerprints[1]
    )
    assert code == 2 and fingerprints[0] in err and fingerprints[1] in err


def test_verify_reports_damaged_file_and_exits_1(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, artifact: Path
) -> None:
    root = tmp_path / "registry"
    run(capsys, root, "publish", str(artifact), "--name", "cap")
    for blob in (root / "blobs" / "sha256").iterdir():
        if blob.stat().st_size == (artifact / "shared.safetensors").stat().st_size:
            blob.write_bytes(blob.read_bytes()[:100])
    code, out, err = run(capsys, root, "verify", "cap")
    assert code == 1
    assert "cap:1: file shared.safetensors" in out and err == "error: 1 problem(s) found\n"


def test_usage_error_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["publish"]) == 2
    assert "required" in capsys.readouterr().err


def test_console_script_help_exits_0() -> None:
    script = Path(sys.executable).with_name("adapter-registry")
    result = subprocess.run([str(script), "--help"], capture_output=True, text=True, check=False)
    assert result.returncode == 0 and "import-peft" in result.stdout


def test_root_option_overrides_environment(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    artifact: Path,
) -> None:
    monkeypatch.setenv("VLADAPTER_REGISTRY", str(tmp_path / "env"))
    run(capsys, tmp_path / "flag", "publish", str(artifact), "--name", "cap")
    assert (tmp_path / "flag" / "adapters" / "cap").is_dir()
    assert not (tmp_path / "env").exists()


def test_list_shows_every_version_and_marks_a_corrupt_record(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, artifact: Path
) -> None:
    root = tmp_path / "registry"
    for _ in range(3):
        run(capsys, root, "publish", str(artifact), "--name", "cap")
    (root / "adapters" / "cap" / "versions" / "2.json").write_text("{not json")
    code, out, err = run(capsys, root, "list")
    rows = {line.split()[1]: line for line in out.splitlines()[1:]}
    assert code == 0 and err == ""
    assert sorted(rows) == ["1", "2", "3"]
    assert "gqa,vqa" in rows["1"] and "gqa,vqa" in rows["3"] and "latest" in rows["3"]
    assert "version record" in rows["2"] and "is corrupt" in rows["2"]
    assert "corrupt" not in rows["1"] + rows["3"]
