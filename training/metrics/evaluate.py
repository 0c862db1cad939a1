"""One entry point: a task's predictions and examples to its metrics, in percent.

- ``vqa``: official VQA accuracy when every example carries its raw annotator answers
  (``Example.answers``), otherwise VL-T5's label score ``label.get(normalised prediction, 0)``.
- ``gqa``, ``nlvr2``: exact match after VQA answer normalisation.
- ``tvqa``, ``how2qa``: multiple-choice accuracy.
- ``caption``, ``tvc``, ``yc2c``: CIDEr-D, BLEU, METEOR, ROUGE-L (``caption_scores``).

QA results also hold ``accuracy/<question_type>`` for every question type present.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping

from modeling.tasks import TaskKind, choice_label, get_task
from training.data.example import Example
from training.metrics.captioning import caption_scores
from training.metrics.vqa import normalize_answer, vqa_accuracy, vqa_label_score


def exact_match(prediction: str, example: Example) -> float:
    """1.0 when the normalised prediction equals a normalised target, else 0.0."""
    predicted = normalize_answer(prediction)
    return float(any(predicted == normalize_answer(target) for target in example.targets))


def multiple_choice_match(prediction: str, example: Example) -> float:
    """1.0 when the prediction names the right option (``"a3"``) or repeats its text."""
    if example.label is None:
        raise ValueError(f"example {example.example_id} has no answer index")
    predicted = prediction.strip().lower()
    right_text = normalize_answer(example.choices[example.label])
    return float(predicted == choice_label(example.label)
                 or normalize_answer(prediction) == right_text)


def vqa_score(prediction: str, example: Example, official: bool) -> float:
    """Official VQA accuracy from ``answers``, or the label score from targets and weights."""
    if official:
        return vqa_accuracy(prediction, example.answers)
    weights = example.target_weights or (1.0,) * len(example.targets)
    return vqa_label_score(prediction, dict(zip(example.targets, weights, strict=True)))


def answer_score(prediction: str, example: Example, official: bool | None = None) -> float:
    """One example's score in [0, 1] by its task's rule: the right option (multiple
    choice), VQA's label score (or official accuracy: `official`, None where the example
    carries its annotators' answers), else an exact match of a target (for a caption: of
    one of its references)."""
    if get_task(example.task).kind is TaskKind.MULTIPLE_CHOICE:
        return multiple_choice_match(prediction, example)
    if example.task == "vqa":
        return vqa_score(prediction, example,
                         bool(example.answers) if official is None else official)
    return exact_match(prediction, example)


def _check_matching_ids(predictions: Mapping[str, str], examples: list[Example]) -> None:
    example_ids = [example.example_id for example in examples]
    missing = [key for key in example_ids if key not in predictions]
    extra = sorted(set(predictions) - set(example_ids))
    if missing or extra:
        raise ValueError(
            f"predictions do not match examples: {len(missing)} missing (e.g. {missing[:3]}), "
            f"{len(extra)} unknown (e.g. {extra[:3]})"
        )


def _accuracy_by_type(scores: list[float], examples: list[Example]) -> dict[str, float]:
    """``accuracy`` and ``accuracy/<type>`` in percent from per-example scores in [0, 1]."""
    result = {"accuracy": 100.0 * sum(scores) / len(scores)}
    by_type: dict[str, list[float]] = defaultdict(list)
    for score, example in zip(scores, examples, strict=True):
        if example.question_type is not None:
            by_type[example.question_type].append(score)
    for question_type, type_scores in sorted(by_type.items()):
        result[f"accuracy/{question_type}"] = 100.0 * sum(type_scores) / len(type_scores)
    return result


def evaluate(
    task: str,
    predictions: Mapping[str, str],
    examples: Iterable[Example],
    *,
    use_java: bool | None = None,
) -> dict[str, float]:
    """The metrics of ``task`` in percent, e.g. ``{"accuracy": 71.3, "accuracy/count": ...}``.

    Args:
        task: task key; its headline metric is ``get_task(task).metric``.
        predictions: example id -> decoded text, exactly one per example.
        examples: the evaluated examples (with targets) of that task.
        use_java: captioning only: force the Java PTB tokenizer and METEOR on or off;
            ``None`` uses them when ``java`` is on ``PATH``.

    Raises:
        ValueError: no examples, wrong task, ids that do not match, or examples without
            targets.
    """
    spec = get_task(task)
    examples = list(examples)
    if not examples:
        raise ValueError(f"{task}: no examples to evaluate")
    for example in examples:
        if example.task != task or not example.targets:
            raise ValueError(
                f"{task}: example {example.example_id} is a {example.task!r} example"
                f"{'' if example.targets else ' without targets'}"
            )
    _check_matching_ids(predictions, examples)
    if spec.is_captioning:
        return caption_scores(
            {example.example_id: predictions[example.example_id] for example in examples},
            {example.example_id: example.targets for example in examples},
            use_java=use_java,
        )
    # Official VQA accuracy only where every example has its annotators' answers.
    official = all(example.answers for example in examples)
    scores = [answer_score(predictions[e.example_id], e, official) for e in examples]
    return _accuracy_by_type(scores, examples)
