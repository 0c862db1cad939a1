"""Subtitles, multiple-choice questions and captions about moving-shape clips.

TVQA-style questions ask which way a named shape moves (5 one-word options), How2QA-style
ones how the shape of a colour moves (4 phrase options, "moves left"); both need the motion,
which no text and no single frame gives away. TVC-style captions describe the motion,
YouCook2-style ones read as instructions. Subtitles name each shape's kind, never its colour
or its motion.
"""

from __future__ import annotations

import re

import numpy as np

from training.synthetic.world import DIRECTIONS, Clip, Mover, pick

TVQA_OPTIONS = tuple(DIRECTIONS)


def direction_phrase(direction: str) -> str:
    """``"moves left"`` ... or ``"stays still"``."""
    return "stays still" if direction == "still" else f"moves {direction}"


# How2QA asks only about shapes that move: its answers, and their options' phrases.
HOW2QA_DIRECTIONS = tuple(d for d in DIRECTIONS if d != "still")
HOW2QA_OPTIONS = tuple(direction_phrase(d) for d in HOW2QA_DIRECTIONS)


def motion_phrase(mover: Mover) -> str:
    """How `mover` moves, e.g. ``"moves left"`` (`direction_phrase`)."""
    return direction_phrase(mover.direction)


# Each direction's phrase, to read descriptions back (`shape_motions`).
_DIRECTION_OF = {direction_phrase(d): d for d in DIRECTIONS}
# One clause of either `tvc_descriptions` sentence: "the red circle moves left" (per
# shape) or "a red circle moves left" (all shapes in one sentence).
_SHAPE_MOTION = re.compile(
    rf"\b(?:the|a) (\w+ \w+) ({'|'.join(map(re.escape, _DIRECTION_OF))})\b")


def subtitle_lines(clip: Clip, rng: np.random.Generator) -> list[str]:
    """One narrator line per shape naming its kind, e.g. ``"look at the circle"``: not its
    colour, by which the questions refer to shapes, so that the frames alone tell which
    shape is which."""
    openers = ("look at the", "now watch the", "here is the")
    return [f"{pick(rng, openers)} {mover.shape}" for mover in clip.movers]


def _shuffled_options(
    options: tuple[str, ...], right: str, rng: np.random.Generator
) -> tuple[list[str], int]:
    shuffled = [options[i] for i in rng.permutation(len(options)).tolist()]
    return shuffled, shuffled.index(right)


def tvqa_question(clip: Clip, rng: np.random.Generator) -> tuple[str, list[str], int]:
    """``(question, 5 options, right index)`` about a shape's direction."""
    mover = pick(rng, clip.movers)
    options, answer_index = _shuffled_options(TVQA_OPTIONS, mover.direction, rng)
    return f"which way does the {mover.name} move ?", options, answer_index


def how2qa_question(clip: Clip, rng: np.random.Generator
                    ) -> tuple[str, list[str], int] | None:
    """``(question, 4 options, right index)`` about how the shape of a colour moves, e.g.
    ``"how does the red shape move ?"`` -> ``"moves left"``; None where the clip's only
    shape stays still. Asked the other way round ("what colour is the shape that moves
    left ?"), colour alone answered every one-shape clip and half of the others, and a
    single adapter over a random vision tower scored 77 (majority 26)."""
    picked = pick(rng, clip.movers)
    # A still shape is not asked about; then the clip's other shape is (directions differ).
    mover = next((m for m in (picked, *clip.movers) if m.direction != "still"), None)
    # Drawn for every clip, so that the clips after one without a question stay the same.
    order = rng.permutation(len(HOW2QA_OPTIONS)).tolist()
    if mover is None:
        return None
    options = [HOW2QA_OPTIONS[i] for i in order]
    return f"how does the {mover.colour} shape move ?", options, options.index(motion_phrase(mover))


def phrase_direction(phrase: str) -> str:
    """The direction a `direction_phrase` names: ``"moves left"`` -> ``"left"``."""
    return _DIRECTION_OF[phrase]


def tvc_descriptions(clip: Clip) -> list[str]:
    """Two descriptions: each shape's motion, and all shapes in one sentence."""
    per_shape = [f"the {mover.name} {motion_phrase(mover)}" for mover in clip.movers]
    together = " while ".join(f"a {mover.name} {motion_phrase(mover)}" for mover in clip.movers)
    return [" and ".join(per_shape), together]


def yc2c_descriptions(clip: Clip) -> list[str]:
    """One instruction-style description, e.g. ``"move the red circle left"``."""
    steps = [
        f"keep the {mover.name} still"
        if mover.direction == "still"
        else f"move the {mover.name} {mover.direction}"
        for mover in clip.movers
    ]
    return [" then ".join(steps)]


def shape_motions(description: str) -> list[tuple[str, str]]:
    """``[(shape name, direction), ...]`` read back from a TVC description in either
    grammar, in the order it names them, e.g. ``"the red circle moves left and the blue
    square stays still"`` or ``"a red circle moves left while a blue square stays still"``
    -> ``[("red circle", "left"), ("blue square", "still")]``."""
    return [(name, _DIRECTION_OF[phrase]) for name, phrase in _SHAPE_MOTION.findall(description)]


def motion_question(name: str) -> str:
    """The open question whose answer is one direction word, e.g. ``"how does the red
    circle move ?"`` -> ``"left"`` (VL-T5's open-ended QA, about motion)."""
    return f"how does the {name} move ?"
