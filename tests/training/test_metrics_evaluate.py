"""The evaluate() entry point per task kind, and the captioning metrics."""

from __future__ import annotations

import warnings

import pytest

from training.data import Example
from training.metrics import answer_score, caption_scores, evaluate, java_available

CAPTION_REFERENCES = {
    "1": ["a red circle left of a blue square", "two shapes , a circle and a square"],
    "2": ["there are 3 shapes on the grid", "three shapes : red , green and blue"],
    "3": ["a yellow triangle at the top left", "one yellow triangle"],
}


def _vqa(example_id: str, question_type: str, **fields: object) -> Example:
    return Example("vqa", example_id, ("img",), "vqa: q", question_type=question_type, **fields)


def test_vqa_official_when_raw_answers_present() -> None:
    examples = [
        _vqa("1", "count", targets=("2",), target_weights=(0.9,), answers=("2",) * 3 + ("3",) * 7),
        _vqa("2", "colour", targets=("red",), target_weights=(1.0,), answers=("red",) * 10),
    ]
    result = evaluate("vqa", {"1": "two", "2": "blue"}, examples)
    assert result == pytest.approx(
        {"accuracy": 45.0, "accuracy/colour": 0.0, "accuracy/count": 90.0}
    )


def test_vqa_label_score_without_raw_answers() -> None:
    examples = [
        _vqa("1", "count", targets=("2", "3"), target_weights=(0.6, 0.3)),
        _vqa("2", "count", targets=("yes",), target_weights=(1.0,), answers=("yes",) * 10),
    ]
    result = evaluate("vqa", {"1": "Three", "2": "yes"}, examples)
    assert result["accuracy"] == pytest.approx(65.0)


def test_one_answer_is_scored_officially_where_its_example_has_the_annotators_answers() -> None:
    raw = _vqa("1", "count", targets=("2",), target_weights=(0.9,), answers=("2",) * 3 + ("3",) * 7)
    labelled = _vqa("2", "count", targets=("2", "3"), target_weights=(0.6, 0.3))
    assert answer_score("two", raw) == pytest.approx(0.9)  # 3 of 10 annotators: official 0.9
    assert answer_score("3", raw) == pytest.approx(1.0)  # not among the targets, but said 7 times
    assert answer_score("3", raw, official=False) == 0.0  # the label score reads the targets
    assert answer_score("three", labelled) == pytest.approx(0.3)


def test_gqa_and_nlvr2_exact_match_after_normalisation() -> None:
    gqa = [Example("gqa", "g", ("i",), "gqa: q", targets=("yes",), target_weights=(1.0,))]
    assert evaluate("gqa", {"g": "Yes."}, gqa) == {"accuracy": 100.0}
    nlvr2 = [
        Example("nlvr2", "a", ("i", "j"), "nlvr: s", targets=("true",), label=1),
        Example("nlvr2", "b", ("i", "j"), "nlvr: s", targets=("false",), label=0),
    ]
    assert evaluate("nlvr2", {"a": "True", "b": "true"}, nlvr2) == {"accuracy": 50.0}


def test_multiple_choice_accepts_option_label_or_text() -> None:
    choices = ("left", "right", "up", "down", "still")
    examples = [
        Example("tvqa", str(i), ("v",), "tvqa: q", targets=("a1",), choices=choices, label=1)
        for i in range(4)
    ]
    predictions = {"0": "a1", "1": " A1 ", "2": "right", "3": "a2"}
    assert evaluate("tvqa", predictions, examples) == {"accuracy": 75.0}


def test_evaluate_refuses_mismatched_input() -> None:
    example = Example("gqa", "g", ("i",), "gqa: q", targets=("yes",))
    with pytest.raises(ValueError, match="1 missing"):
        evaluate("gqa", {}, [example])
    with pytest.raises(ValueError, match="1 unknown"):
        evaluate("gqa", {"g": "yes", "h": "no"}, [example])
    with pytest.raises(ValueError, match="'gqa' example"):
        evaluate("vqa", {"g": "yes"}, [example])
    with pytest.raises(ValueError, match="without targets"):
        evaluate("gqa", {"g": "yes"}, [Example("gqa", "g", ("i",), "gqa: q")])
    with pytest.raises(ValueError, match="no examples"):
        evaluate("gqa", {}, [])


def test_identical_captions_score_full_marks_without_java() -> None:
    identical = {key: refs[0] for key, refs in CAPTION_REFERENCES.items()}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # Java turned off on purpose: nothing to warn about
        scores = caption_scores(identical, CAPTION_REFERENCES, use_java=False)
    # pycocoevalcap adds 1e-15 / 1e-9 to n-gram counts, so a perfect BLEU is 100 - ~1e-8.
    assert scores["BLEU-4"] == pytest.approx(100.0, abs=1e-6) and scores["BLEU-4"] < 100.0
    assert scores["ROUGE-L"] == pytest.approx(100.0)
    assert scores["METEOR_skipped_no_java"] == 1.0 and "METEOR" not in scores


def test_different_captions_score_lower_cider_and_bleu() -> None:
    identical = {key: refs[0] for key, refs in CAPTION_REFERENCES.items()}
    different = {"1": "a dog on a sofa", "2": "a cat near a window", "3": "green grass"}
    good = caption_scores(identical, CAPTION_REFERENCES, use_java=False)
    bad = caption_scores(different, CAPTION_REFERENCES, use_java=False)
    assert good["CIDEr"] > bad["CIDEr"] >= 0.0
    assert bad["BLEU-4"] < 1e-3


def test_short_corpus_bleu4_is_not_100() -> None:
    # Fewer than four tokens per caption: no 4-grams at all, BLEU-4 = (1e-15 / 1e-9) ** 0.25.
    references = {"1": ["a red circle"], "2": ["two shapes"]}
    scores = caption_scores({"1": "a red circle", "2": "two shapes"}, references,
                            use_java=False)
    assert scores["BLEU-4"] == pytest.approx(100 * (1e-6) ** 0.25)


def test_caption_task_through_evaluate() -> None:
    examples = [
        Example("tvc", key, ("v",), "tvc:", targets=tuple(refs))
        for key, refs in CAPTION_REFERENCES.items()
    ]
    predictions = {key: refs[0] for key, refs in CAPTION_REFERENCES.items()}
    result = evaluate("tvc", predictions, examples, use_java=False)
    assert {"CIDEr", "BLEU-4", "ROUGE-L"} <= set(result)


def test_missing_java_found_by_detection_is_warned_and_flagged(monkeypatch) -> None:
    monkeypatch.setattr("training.metrics.captioning.shutil.which", lambda name: None)
    identical = {key: refs[0] for key, refs in CAPTION_REFERENCES.items()}
    with pytest.warns(RuntimeWarning, match="java not found: METEOR skipped"):
        scores = caption_scores(identical, CAPTION_REFERENCES)
    assert scores["METEOR_skipped_no_java"] == 1.0
    assert scores["tokenizer_simple_no_java"] == 1.0


@pytest.mark.skipif(not java_available(), reason="java not installed")
def test_java_tools_ptb_tokenizer_and_meteor() -> None:
    identical = {key: refs[0] for key, refs in CAPTION_REFERENCES.items()}
    scores = caption_scores(identical, CAPTION_REFERENCES, use_java=True)
    assert scores["METEOR"] > 90.0 and "METEOR_skipped_no_java" not in scores
    assert scores["BLEU-4"] == pytest.approx(100.0, abs=1e-6)
