"""Questions, captions and statements about still scenes (VQA, GQA, COCO, NLVR2 styles).

Every answer word (colours, shapes, ``1``-``3``, ``yes``, ``no``, ``true``, ``false``) also
appears in the captions, so a small LM pretrained on the captions has seen it (pitfall 1 of
the synthetic-benchmark note).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np

from training.synthetic.world import CELL_NAMES, COLOURS, SHAPES, PlacedShape, Scene, pick

N_ANNOTATORS = 10
ANNOTATOR_ACCURACY = 0.85
RELATIONS = ("left of", "right of", "above")
COUNT_WORDS = ("1", "2", "3")


@dataclass(frozen=True)
class Question:
    """One question with its right answer and categories."""

    text: str
    answer: str
    question_type: str
    answer_type: str
    wrong_answers: tuple[str, ...]


def simulate_annotators(question: Question, rng: np.random.Generator) -> list[str]:
    """10 annotator answers: each right with probability 0.85, else a wrong answer."""
    answers = []
    for _ in range(N_ANNOTATORS):
        right = rng.random() < ANNOTATOR_ACCURACY
        wrong = pick(rng, question.wrong_answers)
        answers.append(question.answer if right else wrong)
    return answers


def _others(options: tuple[str, ...], answer: str) -> tuple[str, ...]:
    return tuple(option for option in options if option != answer)


def _named_uniquely_by(scene: Scene, attribute: str, rng: np.random.Generator
                       ) -> PlacedShape | None:
    """A random shape whose ``attribute`` (colour or shape) no other shape of the scene has,
    so a question naming it by that attribute is unambiguous; None when there is none."""
    counts = Counter(getattr(placed, attribute) for placed in scene.objects)
    unique = [placed for placed in scene.objects if counts[getattr(placed, attribute)] == 1]
    return pick(rng, unique) if unique else None


def _colour_question(scene: Scene, rng: np.random.Generator) -> Question | None:
    target = _named_uniquely_by(scene, "shape", rng)
    if target is None:
        return None
    text = f"what colour is the {target.shape} ?"
    return Question(text, target.colour, "colour", "other", _others(tuple(COLOURS), target.colour))


def _shape_question(scene: Scene, rng: np.random.Generator) -> Question | None:
    target = _named_uniquely_by(scene, "colour", rng)
    if target is None:
        return None
    text = f"what shape is the {target.colour} object ?"
    return Question(text, target.shape, "shape", "other", _others(SHAPES, target.shape))


def _count_question(scene: Scene, rng: np.random.Generator) -> Question:
    if rng.random() < 0.5:
        answer = str(len(scene.objects))
        text = "how many shapes are there ?"
    else:
        colour = pick(rng, scene.objects).colour
        answer = str(sum(placed.colour == colour for placed in scene.objects))
        text = f"how many {colour} shapes are there ?"
    return Question(text, answer, "count", "number", _others(COUNT_WORDS, answer))


def _absent_kind(scene: Scene, rng: np.random.Generator) -> tuple[str, str]:
    present = {(placed.colour, placed.shape) for placed in scene.objects}
    absent = [(c, s) for c in COLOURS for s in SHAPES if (c, s) not in present]
    return pick(rng, absent)


def _exist_question(scene: Scene, rng: np.random.Generator) -> Question:
    if rng.random() < 0.5:
        placed = pick(rng, scene.objects)
        colour, shape, answer = placed.colour, placed.shape, "yes"
    else:
        (colour, shape), answer = _absent_kind(scene, rng), "no"
    text = f"is there a {colour} {shape} ?"
    return Question(text, answer, "exist", "yes/no", _others(("yes", "no"), answer))


def vqa_questions(scene: Scene, rng: np.random.Generator, count: int) -> list[Question]:
    """Up to ``count`` questions of distinct types (colour / shape / count / exist)."""
    makers = [_colour_question, _shape_question, _count_question, _exist_question]
    questions = []
    for index in rng.permutation(len(makers)).tolist():
        question = makers[index](scene, rng)
        if question is not None:
            questions.append(question)
        if len(questions) == count:
            break
    return questions


def holds(first: PlacedShape, relation: str, second: PlacedShape) -> bool:
    """Whether ``first`` is ``relation`` (left of / right of / above) ``second`` on the grid."""
    if relation == "left of":
        return first.col < second.col
    if relation == "right of":
        return first.col > second.col
    return first.row < second.row


def _relation_statements(scene: Scene) -> list[tuple[str, bool]]:
    """Every yes/no relational question about the scene, with its truth."""
    statements = []
    for anchor in scene.objects:
        others = [other for other in scene.objects if other != anchor]
        for relation in RELATIONS:
            exists = any(holds(other, relation, anchor) for other in others)
            statements.append((f"is there a shape {relation} the {anchor.name} ?", exists))
            statements.extend(
                (
                    f"is the {other.name} {relation} the {anchor.name} ?",
                    holds(other, relation, anchor),
                )
                for other in others
            )
    return statements


def _relation_queries(scene: Scene) -> list[tuple[str, str]]:
    """``what colour is the shape <relation> the <anchor> ?`` where exactly one shape fits."""
    queries = []
    for anchor in scene.objects:
        for relation in RELATIONS:
            fits = [other for other in scene.objects if holds(other, relation, anchor)]
            if len(fits) == 1:
                queries.append(
                    (f"what colour is the shape {relation} the {anchor.name} ?", fits[0].colour)
                )
    return queries


def gqa_question(scene: Scene, rng: np.random.Generator) -> Question | None:
    """A relational question about a scene of two or more shapes (``None`` for one shape).

    A third are ``what colour is the shape left of the red circle ?`` (when one shape
    fits); the rest are yes/no (``is the red circle above the blue square ?``, ``is there a
    shape right of ...``) with the answer drawn first so yes and no are balanced.
    """
    if len(scene.objects) < 2:
        return None
    queries = _relation_queries(scene)
    if queries and rng.random() < 1 / 3:
        text, colour = pick(rng, queries)
        return Question(text, colour, "relation", "other", _others(tuple(COLOURS), colour))
    statements = _relation_statements(scene)
    wanted = bool(rng.random() < 0.5)
    pool = [statement for statement in statements if statement[1] == wanted] or statements
    text, truth = pick(rng, pool)
    answer = "yes" if truth else "no"
    return Question(text, answer, "relation", "yes/no", _others(("yes", "no"), answer))


def _listing(objects: tuple[PlacedShape, ...], with_cells: bool) -> str:
    parts = [
        f"a {p.name}" + (f" at the {CELL_NAMES[(p.row, p.col)]}" if with_cells else "")
        for p in objects
    ]
    return parts[0] if len(parts) == 1 else f"{' , '.join(parts[:-1])} and {parts[-1]}"


def _relation_caption(ordered: list[PlacedShape]) -> str:
    """A true relation between the first two shapes (distinct cells always have one)."""
    if len(ordered) == 1:
        return f"the {ordered[0].name} is alone"
    pairs = ((ordered[0], ordered[1]), (ordered[1], ordered[0]))
    subject, relation, anchor = next(
        (subject, relation, anchor)
        for subject, anchor in pairs
        for relation in RELATIONS
        if holds(subject, relation, anchor)
    )
    return f"the {subject.name} is {relation} the {anchor.name}"


def captions(scene: Scene, rng: np.random.Generator) -> list[str]:
    """Five reference captions: listing, count, positions, a relation, and a yes/no or
    true/false check."""
    n_objects = len(scene.objects)
    count_caption = "there is 1 shape" if n_objects == 1 else f"there are {n_objects} shapes"
    ordered = [scene.objects[i] for i in rng.permutation(n_objects).tolist()]
    absent = " ".join(_absent_kind(scene, rng))
    if rng.random() < 0.5:
        check = f"yes there is a {ordered[0].name} , no there is no {absent}"
    else:
        check = f"it is true that there is a {ordered[0].name} and false that there is a {absent}"
    return [
        _listing(scene.objects, with_cells=False),
        count_caption,
        _listing(scene.objects, with_cells=True),
        _relation_caption(ordered),
        check,
    ]


def nlvr2_statement(left: Scene, right: Scene, rng: np.random.Generator) -> tuple[str, int]:
    """A statement about an image pair and its truth (1 true, 0 false)."""
    colour = pick(rng, list(COLOURS))
    shape = pick(rng, SHAPES)
    template = int(rng.integers(4))
    if template == 0:
        truth = any(p.colour == colour and p.shape == shape for p in left.objects)
        return f"there is a {colour} {shape} in the left image", int(truth)
    if template == 1:
        truth = all(any(p.colour == colour for p in s.objects) for s in (left, right))
        return f"both images contain a {colour} shape", int(truth)
    if template == 2:
        truth = len(left.objects) > len(right.objects)
        return "the left image has more shapes than the right image", int(truth)
    n_shapes = int(rng.integers(1, 4))
    truth = len(right.objects) == n_shapes
    return f"there are exactly {n_shapes} shapes in the right image", int(truth)
