"""Malformed files fail with DataFormatError naming file, line or record, field and expectation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from training.data import DataFormatError, load_split

GOOD_VQA = {"img_id": "i1", "sent": "Why?", "question_id": 1, "label": {"yes": 1.0}}
GOOD_NLVR2 = {"identifier": "d-1-0-0", "img0": "a", "img1": "b", "label": 1, "sent": "Yes."}
GOOD_IMAGE = {"filename": "x.jpg", "cocoid": 1, "split": "train", "sentences": [{"raw": "A."}]}
GOOD_TVQA = {"vid_name": "v", "qid": 1, "q": "Q?", "a0": "x", "a1": "y", "answer_idx": 0}
GOOD_TVC = {"vid_name": "v", "clip_id": 1, "descs": [{"desc": "A man."}]}


def _with(record: dict, **changes: object) -> dict:
    """``record`` with fields replaced; a value of ``...`` deletes the field."""
    changed = {**record, **changes}
    return {key: value for key, value in changed.items() if value is not ...}


def _lines(*rows: object) -> str:
    return "".join((row if isinstance(row, str) else json.dumps(row)) + "\n" for row in rows)


# (task, file text, load_split keywords, strings the message must contain)
CASES = {
    "vqa missing sent": (
        "vqa", json.dumps([_with(GOOD_VQA, sent=...)]), {},
        ["record 0 (question_id=1)", "'sent'", "a non-empty string", "field missing"],
    ),
    "vqa negative score": (
        "vqa", json.dumps([_with(GOOD_VQA, label={"yes": -1})]), {},
        ["record 0 (question_id=1)", "'label'", "scores >= 0"],
    ),
    "vqa id is a list": (
        "vqa", json.dumps([GOOD_VQA, _with(GOOD_VQA, question_id=[2])]), {},
        ["record 1", "'question_id'", "integer id"],
    ),
    "vqa duplicate id": (
        "vqa", json.dumps([GOOD_VQA, GOOD_VQA]), {},
        ["record 1 (question_id=1)", "'question_id'", "not used by an earlier record"],
    ),
    "vqa not a list": ("vqa", json.dumps({"a": 1}), {}, ["top level", "a JSON list"]),
    "vqa broken json": ("vqa", '[\n{"img_id": }\n]', {}, ["line 2", "'<json>'", "valid JSON"]),
    "gqa record not an object": ("gqa", json.dumps([GOOD_VQA, 3]), {}, ["record 1", "'<record>'"]),
    "nlvr2 label 2": (
        "nlvr2", json.dumps([_with(GOOD_NLVR2, label=2)]), {},
        ["record 0 (identifier=d-1-0-0)", "'label'", "an integer in [0, 1]", "got 2"],
    ),
    "nlvr2 label bool": (
        "nlvr2", json.dumps([_with(GOOD_NLVR2, label=True)]), {}, ["'label'", "got true"],
    ),
    "nlvr2 missing img1": (
        "nlvr2", json.dumps([_with(GOOD_NLVR2, img1=...)]), {}, ["'img1'", "field missing"],
    ),
    "coco bad split": (
        "caption", json.dumps({"images": [_with(GOOD_IMAGE, split="dev")]}), {"split": "train"},
        ["images[0] (cocoid=1)", "'split'", "one of train, restval, val, test"],
    ),
    "coco sentence without raw": (
        "caption",
        json.dumps({"images": [_with(GOOD_IMAGE, sentences=[{"raw": "A."}, {"tokens": []}])]}),
        {"split": "train"},
        ["images[0] (cocoid=1), sentences[1]", "'raw'"],
    ),
    "coco no images key": (
        "caption", json.dumps({"imgs": []}), {"split": "val"}, ["top level", "'images'"],
    ),
    "tvqa answer out of range": (
        "tvqa", _lines(GOOD_TVQA, _with(GOOD_TVQA, qid=2, answer_idx=5)), {},
        ["line 2 (qid=2)", "'answer_idx'", "an integer in [0, 1]"],
    ),
    "tvqa one option": (
        "tvqa", _lines(_with(GOOD_TVQA, a1=...)), {}, ["line 1 (qid=1)", "'a1'", "two options"],
    ),
    "tvqa bad ts": ("tvqa", _lines(_with(GOOD_TVQA, ts="abc")), {}, ["'ts'", "time span"]),
    "tvqa bad json line": ("how2qa", _lines(GOOD_TVQA, "{oops"), {}, ["line 2", "'<json>'"]),
    "tvqa line is a list": ("tvqa", _lines([1, 2]), {}, ["line 1", "'<record>'", "JSON object"]),
    "tvc no clip id": ("tvc", _lines(_with(GOOD_TVC, clip_id=...)), {}, ["line 1", "'clip_id'"]),
    "yc2c duplicate id in the 'id' field": (
        "yc2c", _lines(*[_with(GOOD_TVC, clip_id=..., id=5)] * 2), {},
        ["line 2 (id=5)", "'id'", "not used by an earlier record"],
    ),
    "yc2c empty descs": (
        "yc2c", _lines(GOOD_TVC, _with(GOOD_TVC, clip_id=2, descs=[])), {},
        ["line 2 (clip_id=2)", "'descs'", "non-empty"],
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", list(CASES))
def test_malformed_file_error_names_file_place_and_field(tmp_path: Path, case: str) -> None:
    task, text, options, fragments = CASES[case]
    path = tmp_path / f"{task}.data"
    path.write_text(text)
    with pytest.raises(DataFormatError) as error:
        load_split(task, path, **options)
    message = str(error.value)
    assert message.startswith(f"{path}: ")
    for fragment in fragments:
        assert fragment in message, message


def test_malformed_side_files_name_their_own_path(tmp_path: Path) -> None:
    questions = tmp_path / "q.json"
    questions.write_text(json.dumps([GOOD_VQA]))
    annotations = tmp_path / "a.json"
    annotations.write_text(json.dumps({"annotations": [{"question_id": 1, "answers": "yes"}]}))
    with pytest.raises(DataFormatError, match=r"a\.json: annotations\[0\] \(question_id=1\)"):
        load_split("vqa", questions, vqa_annotations_path=annotations)
    tvqa = tmp_path / "tvqa.jsonl"
    tvqa.write_text(_lines(GOOD_TVQA))
    subtitles = tmp_path / "subs.jsonl"
    subtitles.write_text(_lines({"vid_name": "v", "sub": [{"start": 0}]}))
    with pytest.raises(DataFormatError, match=r"subs\.jsonl: line 1 \(vid_name=v\), sub\[0\]"):
        load_split("tvqa", tvqa, subtitles_path=subtitles)


def test_error_attributes(tmp_path: Path) -> None:
    path = tmp_path / "nlvr2.json"
    path.write_text(json.dumps([_with(GOOD_NLVR2, sent="  ")]))
    with pytest.raises(DataFormatError) as error:
        load_split("nlvr2", path)
    assert (error.value.path, error.value.field) == (path, "sent")
    assert error.value.location == "record 0 (identifier=d-1-0-0)"


def test_missing_file_is_file_not_found(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        load_split("gqa", tmp_path / "absent.json")


def _folder(tmp_path: Path) -> Path:
    folder = tmp_path / "a-folder.json"
    folder.mkdir()
    return folder


def _not_utf8(tmp_path: Path) -> Path:
    path = tmp_path / "latin1.json"
    path.write_bytes('[{"sent": "café"}]'.encode("latin-1"))
    return path


# (task, which argument of load_split gets the bad path, the others' good file text)
BAD_PATH_SITES = {
    "vqa questions": ("vqa", "path", {}),
    "vqa annotations": ("vqa", "vqa_annotations_path", {"path": json.dumps([GOOD_VQA])}),
    "tvqa questions": ("tvqa", "path", {}),
    "tvqa subtitles": ("tvqa", "subtitles_path", {"path": _lines(GOOD_TVQA)}),
}


@pytest.mark.parametrize("site", list(BAD_PATH_SITES))
@pytest.mark.parametrize(("make_bad", "fragments"), [
    (_folder, ["'<file>'", "expected a file, got a folder"]),
    (_not_utf8, ["'<text>'", "expected UTF-8 text, got byte 0xe9"]),
], ids=["folder", "not-utf8"])
def test_a_folder_or_undecodable_file_is_a_data_format_error_naming_it(
        tmp_path: Path, site: str, make_bad, fragments: list[str]) -> None:
    task, argument, good = BAD_PATH_SITES[site]
    bad = make_bad(tmp_path)
    paths = {}
    for name, text in good.items():
        paths[name] = tmp_path / f"good-{name}"
        paths[name].write_text(text)
    with pytest.raises(DataFormatError) as error:
        load_split(task, **{"path": bad, **paths, argument: bad})
    message = str(error.value)
    assert message.startswith(f"{bad}: ")
    for fragment in fragments:
        assert fragment in message, message
