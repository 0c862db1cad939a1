"""The one task definition (`modeling.tasks`): which tasks are scored, the text a scored
answer gives, which tasks caption, and the prompt an artifact records."""

from __future__ import annotations

import pytest

from modeling.tasks import TASKS, task_prompt


def test_scored_tasks_are_exactly_those_with_candidate_labels():
    assert {name for name, spec in TASKS.items() if spec.is_scored} == {"nlvr2", "tvqa",
                                                                        "how2qa"}
    for spec in TASKS.values():
        assert spec.is_scored == bool(spec.candidate_labels(n_choices=2))


def test_captioning_tasks_are_the_generative_tasks_without_a_question():
    assert {name for name, spec in TASKS.items() if spec.is_captioning} == {"caption", "tvc",
                                                                            "yc2c"}
    assert all(spec.metric == "CIDEr" for spec in TASKS.values() if spec.is_captioning)


def test_scored_answer_is_the_label_for_nlvr2_and_the_option_text_for_multiple_choice():
    assert TASKS["nlvr2"].answer_text(0) == "true"
    assert TASKS["nlvr2"].answer_text(1) == "false"
    choices = ("red circle", "blue", "left")
    for task in ("tvqa", "how2qa"):
        assert TASKS[task].answer_text(2, choices) == "left"


@pytest.mark.parametrize("task", ["vqa", "gqa", "caption", "tvc", "yc2c"])
def test_a_generating_task_has_no_scored_answer(task):
    with pytest.raises(ValueError, match=f"task '{task}' generates its answer"):
        TASKS[task].answer_text(0, ("a", "b"))


def test_task_prompt_is_the_spec_prompt_or_the_name_and_a_colon():
    assert task_prompt("nlvr2") == "nlvr: "
    assert {task: task_prompt(task) for task in TASKS} == {
        task: spec.prompt for task, spec in TASKS.items()}
    assert task_prompt("refcoco") == "refcoco: "
