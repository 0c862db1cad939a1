"""VQA accuracy, as the official VQAv2 evaluation script computes it, and VL-T5's label score.

Reference: ``PythonEvaluationTools/vqaEvaluation/vqaEval.py`` of GT-Vision-Lab/VQA. Its
quirks are kept on purpose so numbers match the leaderboard:

- the prediction gets punctuation and digit/article/contraction processing; annotator
  answers get punctuation processing only, and only when they are not all identical;
- the period regex ``(?!<=\\d)(\\.)(?!\\d)`` strips every period not followed by a digit
  (the intended look-behind is a typo upstream), and ``re.UNICODE`` is passed where
  ``re.sub`` expects ``count``, so at most 32 periods are stripped.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping, Sequence

CONTRACTIONS = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've",
    "couldnt": "couldn't", "couldn'tve": "couldn't've", "couldnt've": "couldn't've",
    "didnt": "didn't", "doesnt": "doesn't", "dont": "don't", "hadnt": "hadn't",
    "hadnt've": "hadn't've", "hadn'tve": "hadn't've", "hasnt": "hasn't", "havent": "haven't",
    "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've", "hes": "he's", "howd": "how'd",
    "howll": "how'll", "hows": "how's", "Id've": "I'd've", "I'dve": "I'd've", "Im": "I'm",
    "Ive": "I've", "isnt": "isn't", "itd": "it'd", "itd've": "it'd've", "it'dve": "it'd've",
    "itll": "it'll", "let's": "let's", "maam": "ma'am", "mightnt": "mightn't",
    "mightnt've": "mightn't've", "mightn'tve": "mightn't've", "mightve": "might've",
    "mustnt": "mustn't", "mustve": "must've", "neednt": "needn't", "notve": "not've",
    "oclock": "o'clock", "oughtnt": "oughtn't", "ow's'at": "'ow's'at", "'ows'at": "'ow's'at",
    "'ow'sat": "'ow's'at", "shant": "shan't", "shed've": "she'd've", "she'dve": "she'd've",
    "she's": "she's", "shouldve": "should've", "shouldnt": "shouldn't",
    "shouldnt've": "shouldn't've", "shouldn'tve": "shouldn't've", "somebody'd": "somebodyd",
    "somebodyd've": "somebody'd've", "somebody'dve": "somebody'd've",
    "somebodyll": "somebody'll", "somebodys": "somebody's", "someoned": "someone'd",
    "someoned've": "someone'd've", "someone'dve": "someone'd've", "someonell": "someone'll",
    "someones": "someone's", "somethingd": "something'd", "somethingd've": "something'd've",
    "something'dve": "something'd've", "somethingll": "something'll", "thats": "that's",
    "thered": "there'd", "thered've": "there'd've", "there'dve": "there'd've",
    "therere": "there're", "theres": "there's", "theyd": "they'd", "theyd've": "they'd've",
    "they'dve": "they'd've", "theyll": "they'll", "theyre": "they're", "theyve": "they've",
    "twas": "'twas", "wasnt": "wasn't", "wed've": "we'd've", "we'dve": "we'd've",
    "weve": "we've", "werent": "weren't", "whatll": "what'll", "whatre": "what're",
    "whats": "what's", "whatve": "what've", "whens": "when's", "whered": "where'd",
    "wheres": "where's", "whereve": "where've", "whod": "who'd", "whod've": "who'd've",
    "who'dve": "who'd've", "wholl": "who'll", "whos": "who's", "whove": "who've",
    "whyll": "why'll", "whyre": "why're", "whys": "why's", "wont": "won't",
    "wouldve": "would've", "wouldnt": "wouldn't", "wouldnt've": "wouldn't've",
    "wouldn'tve": "wouldn't've", "yall": "y'all", "yall'll": "y'all'll", "y'allll": "y'all'll",
    "yall'd've": "y'all'd've", "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've",
    "youd": "you'd", "youd've": "you'd've", "you'dve": "you'd've", "youll": "you'll",
    "youre": "you're", "youve": "you've",
}  # fmt: skip
NUMBER_WORDS = {
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
    "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10",
}  # fmt: skip
ARTICLES = frozenset({"a", "an", "the"})
PUNCTUATION = (
    ";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`",
    ",", "?", "!",
)  # fmt: skip
_PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)")
_COMMA_BETWEEN_DIGITS = re.compile(r"(\d)(,)(\d)")
_UPSTREAM_PERIOD_COUNT = int(re.UNICODE)  # upstream passes re.UNICODE (32) as re.sub's count


def process_punctuation(text: str) -> str:
    """Official punctuation step: drop or blank punctuation, strip periods not before a digit.

    A mark is deleted when it touches a space somewhere in the text (or the text has a comma
    between digits), otherwise replaced by a space: ``"yes/no"`` -> ``"yes no"``.
    """
    processed = text
    has_digit_comma = _COMMA_BETWEEN_DIGITS.search(text) is not None
    for mark in PUNCTUATION:
        if f"{mark} " in text or f" {mark}" in text or has_digit_comma:
            processed = processed.replace(mark, "")
        else:
            processed = processed.replace(mark, " ")
    return _PERIOD_STRIP.sub("", processed, count=_UPSTREAM_PERIOD_COUNT)


def process_digit_article(text: str) -> str:
    """Official word step: lowercase, number words to digits, drop articles, add apostrophes."""
    words = [NUMBER_WORDS.get(word, word) for word in text.lower().split()]
    words = [CONTRACTIONS.get(word, word) for word in words if word not in ARTICLES]
    return " ".join(words)


def normalize_answer(answer: str) -> str:
    """An answer as the official script prepares a prediction: ``"Two."`` -> ``"2"``."""
    cleaned = answer.replace("\n", " ").replace("\t", " ").strip()
    return process_digit_article(process_punctuation(cleaned))


def vqa_accuracy(prediction: str, annotator_answers: Sequence[str]) -> float:
    """Official VQA accuracy of one prediction, in [0, 1].

    For each annotator, ``min(1, matches among the other annotators / 3)``; the mean over
    annotators (the 10-choose-9 subsets for VQAv2's 10 answers).

    Raises:
        ValueError: no annotator answers.
    """
    if not annotator_answers:
        raise ValueError("VQA accuracy needs at least one annotator answer")
    predicted = normalize_answer(prediction)
    answers = [answer.replace("\n", " ").replace("\t", " ").strip() for answer in annotator_answers]
    if len(set(answers)) > 1:
        answers = [process_punctuation(answer) for answer in answers]
    matches = sum(answer == predicted for answer in answers)
    per_annotator = [min(1.0, (matches - (answer == predicted)) / 3.0) for answer in answers]
    return sum(per_annotator) / len(per_annotator)


def vqa_label_score(prediction: str, label: Mapping[str, float]) -> float:
    """VL-T5's score from a Karpathy ``label`` ``{answer: score}``: the normalised
    prediction's score, 0 when absent. In [0, 1] for VQAv2 labels."""
    return float(label.get(normalize_answer(prediction), 0.0))


# score of an answer given by 0, 1, 2, 3 or >= 4 of the annotators (LXMERT / VL-T5 labels)
_LABEL_SCORES = (0.0, 0.3, 0.6, 0.9, 1.0)


def vqa_label(answers: Sequence[str]) -> dict[str, float]:
    """The VQAv2 soft label of annotator answers: ``{normalised answer: min(1, 0.3 * count)}``
    (0.3 / 0.6 / 0.9 / 1.0 for 1 / 2 / 3 / >= 4 annotators), as VL-T5's preprocessed files
    hold it; empty answers are left out."""
    counts = Counter(normalize_answer(answer) for answer in answers)
    return {answer: _LABEL_SCORES[min(count, 4)] for answer, count in counts.items() if answer}
