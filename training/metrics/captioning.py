"""Captioning metrics through pycocoevalcap: CIDEr-D, BLEU-1..4, METEOR, ROUGE-L.

``pycocoevalcap.cider.cider.Cider`` is the COCO server's CIDEr-D (Gaussian length penalty,
sigma 6, clipped counts, x10). METEOR and the PTB tokenizer are Java programs: with Java on
``PATH`` both run as on the COCO server; without it text is lowercased and split on
non-word characters, METEOR is skipped, and the result says so with the keys
``METEOR_skipped_no_java`` and ``tokenizer_simple_no_java`` (value 1.0) plus a warning.

SPICE is left out: it needs the Stanford CoreNLP models, a download at first use.
"""

from __future__ import annotations

import re
import shutil
import warnings
from collections.abc import Mapping, Sequence

from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.meteor.meteor import Meteor
from pycocoevalcap.rouge.rouge import Rouge
from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

_NON_WORD = re.compile(r"[^\w\s']|_")


def java_available() -> bool:
    """Whether a ``java`` executable is on ``PATH``."""
    return shutil.which("java") is not None


def simple_tokenize(text: str) -> str:
    """Lowercase, punctuation to spaces, single spaces: the no-Java stand-in for PTB."""
    return " ".join(_NON_WORD.sub(" ", text.lower()).split())


def _tokenize(texts: Mapping[str, Sequence[str]], use_java: bool) -> dict[str, list[str]]:
    """Tokenised texts per id, PTB (Java) or simple."""
    if use_java:
        as_coco = {key: [{"caption": text} for text in values] for key, values in texts.items()}
        return PTBTokenizer().tokenize(as_coco)
    return {key: [simple_tokenize(text) for text in values] for key, values in texts.items()}


def caption_scores(
    predictions: Mapping[str, str],
    references: Mapping[str, Sequence[str]],
    *,
    use_java: bool | None = None,
) -> dict[str, float]:
    """Corpus-level caption metrics in percent.

    Args:
        predictions: id -> generated caption.
        references: id -> reference captions (at least one each); same ids as predictions.
        use_java: force the Java tools on or off; ``None`` uses them when Java is found.

    Returns:
        ``BLEU-1`` .. ``BLEU-4``, ``CIDEr``, ``ROUGE-L`` and ``METEOR`` (x100), or the
        no-Java flag keys described in the module docstring.

    Raises:
        ValueError: ids differ, no ids, or an id without references.
    """
    if set(predictions) != set(references) or not predictions:
        raise ValueError("predictions and references must have the same, non-empty ids")
    empty = [key for key, refs in references.items() if not refs]
    if empty:
        raise ValueError(f"ids without reference captions: {empty[:5]}")
    java = java_available() if use_java is None else use_java
    keys = sorted(predictions)
    hypotheses = _tokenize({key: [predictions[key]] for key in keys}, java)
    gold = _tokenize({key: list(references[key]) for key in keys}, java)
    bleu, _ = Bleu(4).compute_score(gold, hypotheses, verbose=0)
    cider, _ = Cider().compute_score(gold, hypotheses)
    rouge, _ = Rouge().compute_score(gold, hypotheses)
    scores = {f"BLEU-{n}": 100.0 * float(value) for n, value in enumerate(bleu, start=1)}
    scores["CIDEr"] = 100.0 * float(cider)
    scores["ROUGE-L"] = 100.0 * float(rouge)
    if java:
        meteor, _ = Meteor().compute_score(gold, hypotheses)
        scores["METEOR"] = 100.0 * float(meteor)
    else:
        if use_java is None:  # the caller asked for Java where present: say it was not
            warnings.warn(
                "java not found: METEOR skipped and captions tokenised without the PTB "
                "tokenizer", RuntimeWarning, stacklevel=2)
        scores["METEOR_skipped_no_java"] = 1.0
        scores["tokenizer_simple_no_java"] = 1.0
    return scores
