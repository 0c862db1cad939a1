"""Malformed files fail with DataFormatError naming file, line or record, field and
expectation, and the format the file was read as (and the one detected)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from data_layouts import OFFICIAL

from training.config import parse_config, read_task_split
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
    "vqa neither list nor questions": (
        "vqa", json.dumps({"a": 1}), {},
        ["top level", "one of the vqa formats", "'vl-t5' = VL-T5 JSON list", "'vqav2' = ",
         "got a JSON object with keys [a]", "[detected: none of them]"],
    ),
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
        ["images[0] (cocoid=1)", "'split'", "one of 'train', 'restval', 'val', 'test'"],
    ),
    "coco sentence without raw": (
        "caption",
        json.dumps({"images": [_with(GOOD_IMAGE, sentences=[{"raw": "A."}, {"tokens": []}])]}),
        {"split": "train"},
        ["images[0] (cocoid=1), sentences[1]", "'raw'"],
    ),
    "coco no images key": (
        "caption", json.dumps({"imgs": []}), {"split": "val"},
        ["top level", "one of the caption formats: 'karpathy' = ", "{images: [", "keys [imgs]"],
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
    "tvqa line is a list": (
        "tvqa", _lines(GOOD_TVQA, [1, 2]), {}, ["line 2", "'<record>'", "JSON object"],
    ),
    "tvqa file is a list": (
        "tvqa", json.dumps([GOOD_TVQA]), {}, ["top level", "'tvqa' = ", "got a JSON list"],
    ),
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


FOLDER = (_folder, ["'<file>'", "expected a file, got a folder"])
NOT_UTF8 = (_not_utf8, ["'<text>'", "expected UTF-8 text, got byte 0xe9"])
# a subtitles folder is TVQA's folder of .srt files: see the test after this one
BAD_PATHS = [(site, *bad) for site in BAD_PATH_SITES for bad in (FOLDER, NOT_UTF8)
             if (site, bad) != ("tvqa subtitles", FOLDER)]


@pytest.mark.parametrize(("site", "make_bad", "fragments"), BAD_PATHS,
                         ids=[f"{case[1].__name__}-{case[0]}" for case in BAD_PATHS])
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


def test_a_subtitles_folder_without_srt_files_is_refused(tmp_path: Path) -> None:
    questions = tmp_path / "tvqa_val.jsonl"
    questions.write_text(_lines(GOOD_TVQA))
    folder = _folder(tmp_path)
    with pytest.raises(DataFormatError) as error:
        load_split("tvqa", questions, subtitles_path=folder)
    assert str(error.value).startswith(f"{folder}: top level: field '<folder>': expected a "
                                       "folder of <vid_name>.srt files, got no .srt file")


def _edit_json(path: str | Path, edit) -> None:
    """Rewrite the JSON file ``path`` with ``edit(document)`` applied in place."""
    document = json.loads(Path(path).read_text())
    edit(document)
    Path(path).write_text(json.dumps(document))


def _edit_line(path: str | Path, index: int, **changes: object) -> None:
    """Rewrite line ``index`` of the JSON-lines file ``path`` with fields changed."""
    rows = [json.loads(line) for line in Path(path).read_text().splitlines()]
    rows[index] = _with(rows[index], **changes)
    Path(path).write_text(_lines(*rows))


def _vqa_annotations(entry: dict) -> str:
    return entry["annotations"].replace("{split}", "train")


def _break_srt(entry: dict) -> Path:
    """The clip's .srt with an arrow that is not SRT's ``-->``."""
    path = next(Path(entry["subtitles"]).glob("*.srt"))
    path.write_text("1\n00:00:00,115 -> 00:00:02,655\nHi.\n")
    return path


# case -> (task, break the written layout (entry -> the broken file), fragments)
OFFICIAL_CASES = {
    "vqav2 question without text": ("vqa", lambda e: _edit_json(
        e["train"], lambda d: d["questions"][1].pop("question")) or e["train"],
        ["questions[1] (question_id=42001)", "field 'question'", "field missing",
         "[read as vqa format 'vqav2': official VQAv2 questions", "detected from the file"]),
    "vqav2 without data_subtype": ("vqa", lambda e: _edit_json(
        e["train"], lambda d: d.pop("data_subtype")) or e["train"],
        ["top level", "field 'data_subtype'", "format 'vqav2'"]),
    "vqav2 question without annotation": ("vqa", lambda e: _edit_json(
        _vqa_annotations(e), lambda d: d["annotations"].pop()) or e["train"],
        ["questions[2] (question_id=73000)", "field 'question_id'",
         "a question with an entry in", "format 'vqav2'"]),
    "vqav2 annotations answers not a list": ("vqa", lambda e: _edit_json(
        _vqa_annotations(e), lambda d: d["annotations"][0].update(answers="2"))
        or _vqa_annotations(e),
        ["annotations[0] (question_id=42000)", "field 'answers'",
         "[read as a VQAv2 annotations file"]),
    "gqa entry without imageId": ("gqa", lambda e: _edit_json(
        e["train"], lambda d: d["20968380"].pop("imageId")) or e["train"],
        ["entry '20968380'", "field 'imageId'", "read as gqa format 'gqa'"]),
    "nlvr2 label yes": ("nlvr2", lambda e: _edit_line(e["train"], 1, label="yes") or e["train"],
        ["line 2 (identifier=train-10171-0-1)", "field 'label'", "one of 'True', 'False'",
         "got 'yes'", "read as nlvr2 format 'nlvr2': official NLVR2 JSON lines"]),
    "nlvr2 identifier without parts": ("nlvr2", lambda e: _edit_line(
        e["train"], 2, identifier="pair7") or e["train"],
        ["line 3 (identifier=pair7)", "'<split>-<set>-<pair>-<sentence>'"]),
    "karpathy image without sentences": ("caption", lambda e: _edit_json(
        e["train"], lambda d: d["images"][1].pop("sentences")) or e["train"],
        ["images[1] (cocoid=391895)", "field 'sentences'", "caption format 'karpathy'"]),
    "tvqa bad ts": ("tvqa", lambda e: _edit_line(e["train"], 2, ts="soon") or e["train"],
        ["line 3 (qid=2)", "field 'ts'", "read as tvqa format 'tvqa'"]),
    "tvqa srt cue without timing": ("tvqa", _break_srt,
        ["line 2", "field '<cue timing>'", "an SRT timing line",
         "read as subtitles srt"]),
    "how2qa question without q": ("how2qa", lambda e: _edit_line(e["train"], 0, q=...)
        or e["train"], ["line 1 (qid=h0)", "field 'q'", "how2qa format 'value'"]),
    "how2qa subtitle line without text": ("how2qa", lambda e: _edit_line(
        e["subtitles"], 0, sub=[{"start": 0}]) or e["subtitles"],
        ["line 1 (vid_name=-0BZvlfRf1M_52_112), sub[0]", "field 'text'",
         "read as subtitles value"]),
    "tvc clip without descriptions": ("tvc", lambda e: _edit_line(e["train"], 1, descs=[])
        or e["train"], ["line 2 (clip_id=86604)", "field 'descs'", "tvc format 'value'"]),
    "youcook2 unknown subset": ("yc2c", lambda e: _edit_json(
        e["train"], lambda d: d["database"]["GLd3aX16zBg"].update(subset="train"))
        or e["train"],
        ["database['GLd3aX16zBg']", "field 'subset'",
         "one of 'training', 'validation', 'testing'", "yc2c format 'youcook2'"]),
    "youcook2 bad segment": ("yc2c", lambda e: _edit_json(
        e["train"], lambda d: d["database"]["GLd3aX16zBg"]["annotations"][1].update(
            segment=[30, 10])) or e["train"],
        ["database['GLd3aX16zBg'], annotations[1] (id=1)", "field 'segment'", "start <= end"]),
    "vl-t5 named for official vqa questions": ("vqa", lambda e: e.update(format="vl-t5")
        or e["train"],
        ["top level", "a JSON list", "read as vqa format 'vl-t5'",
         "set in the config, but the file's structure looks like format 'vqav2'"]),
}  # fmt: skip


@pytest.mark.parametrize("case", list(OFFICIAL_CASES))
def test_broken_record_of_an_official_layout_names_file_record_field_and_format(
        tmp_path: Path, case: str) -> None:
    task, breaks, fragments = OFFICIAL_CASES[case]
    entry = OFFICIAL[task](tmp_path)
    broken = breaks(entry)
    data = parse_config({"backbone": "tiny", "methods": "single_adapter",
                         "tasks": {task: entry}}).tasks[task]
    with pytest.raises(DataFormatError) as error:
        read_task_split(task, data, "train")
    message = str(error.value)
    assert message.startswith(f"{broken}: "), message
    for fragment in fragments:
        assert fragment in message, message
