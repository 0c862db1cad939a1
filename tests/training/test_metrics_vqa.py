"""VQA accuracy against hand-computed cases of the official evaluation script."""

from __future__ import annotations

from itertools import combinations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from training.metrics import (
    normalize_answer,
    process_punctuation,
    vqa_accuracy,
    vqa_label_score,
)


@pytest.mark.parametrize(
    "raw, normalised",
    [
        ("Two.", "2"),
        ("a dog", "dog"),
        ("The Dog!", "dog"),
        ("dont", "don't"),
        ("isnt it", "isn't it"),
        ("Im", "im"),  # lowercased before the case-sensitive contraction lookup, as upstream
        ("None", "0"),
        ("ten", "10"),
        ("yes/no", "yes no"),  # a mark touching no space becomes a space
        ("left - right", "left right"),  # a mark next to a space is deleted
        ("1,000", "1000"),  # a comma between digits deletes every mark
        ("3.5", "3.5"),  # a period before a digit stays
        ("hot dog.", "hot dog"),
        (" an apple\t", "apple"),
        ("t-shirt", "t shirt"),
    ],
)
def test_official_normalisation(raw: str, normalised: str) -> None:
    assert normalize_answer(raw) == normalised


def test_punctuation_only_step_keeps_case_and_words() -> None:
    assert process_punctuation("Two Dogs.") == "Two Dogs"


@pytest.mark.parametrize(
    "n_matching, expected",
    [(0, 0.0), (1, 0.3), (2, 0.6), (3, 0.9), (4, 1.0), (10, 1.0)],
)
def test_accuracy_by_number_of_matching_annotators(n_matching: int, expected: float) -> None:
    # 3 matches: 3 of the 10 leave-one-out subsets hold 2 matches (2/3), 7 hold 3 (1):
    # (3 * 2/3 + 7 * 1) / 10 = 0.9.
    answers = ["2"] * n_matching + ["3"] * (10 - n_matching)
    assert vqa_accuracy("two", answers) == pytest.approx(expected)


def test_annotator_answers_get_punctuation_only_when_they_disagree() -> None:
    # They disagree, so "yes!" loses its "!" and all ten match.
    assert vqa_accuracy("Yes", ["yes"] * 9 + ["yes!"]) == pytest.approx(1.0)
    # All identical: upstream leaves them raw, and "two" never equals the prediction "2".
    assert vqa_accuracy("two", ["two"] * 10) == 0.0


def _leave_one_out_reference(prediction: str, answers: list[str]) -> float:
    """The official definition written out: mean over the 9-answer subsets of
    min(1, matches / 3), after the script's normalisation."""
    predicted = normalize_answer(prediction)
    processed = [process_punctuation(a) for a in answers] if len(set(answers)) > 1 else answers
    subsets = list(combinations(range(len(answers)), len(answers) - 1))
    per_subset = [min(1.0, sum(processed[i] == predicted for i in s) / 3) for s in subsets]
    return sum(per_subset) / len(per_subset)


@settings(max_examples=60, deadline=None)
@given(
    answers=st.lists(
        st.sampled_from(["2", "two", "3", "yes", "no", "dog."]), min_size=10, max_size=10
    ),
    prediction=st.sampled_from(["2", "Two", "3", "yes", "dog", "cat"]),
)
def test_matches_ten_choose_nine_average(answers: list[str], prediction: str) -> None:
    assert vqa_accuracy(prediction, answers) == pytest.approx(
        _leave_one_out_reference(prediction, answers)
    )


def test_accuracy_needs_answers() -> None:
    with pytest.raises(ValueError, match="at least one"):
        vqa_accuracy("yes", [])


def test_label_score_uses_normalised_prediction() -> None:
    label = {"2": 0.9, "3": 0.3}
    assert vqa_label_score("Two.", label) == 0.9
    assert vqa_label_score("three", label) == 0.3
    assert vqa_label_score("four", label) == 0.0
