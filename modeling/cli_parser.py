"""The argument parser of every console script: a usage error is one line and exit 2.

argparse prints the whole usage block before its error line (thirty lines for
`adapter-serve`); users of a command-line tool get the one line that says what is wrong.
Lives in `modeling` because it is the one package every CLI may import (see the layering
rule in the README). Also the options that several commands share.
"""

from __future__ import annotations

import argparse
from typing import NoReturn

from modeling.tasks import ChoiceAnswer


class OneLineParser(argparse.ArgumentParser):
    """`argparse.ArgumentParser` whose errors are `prog: error: message (see prog --help)`
    on stderr and exit status 2. Subparsers made by `add_subparsers` are of this class too."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def positive_int(text: str) -> int:
    """An argparse `type=` for counts: a whole number >= 1, else a usage error naming it."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def add_choice_answer(parser: argparse.ArgumentParser, default: ChoiceAnswer) -> None:
    """`--choice-answer label|text|text_mean` (`ChoiceAnswer`), parsed to its value."""
    parser.add_argument("--choice-answer", choices=[answer.value for answer in ChoiceAnswer],
                        default=default.value,
                        help="multiple choice trained and scored as the option's label (a0, "
                        "VL-Adapter's form) or as the option's own text (cloze), scored by "
                        "its tokens' summed (text) or mean (text_mean) log-probability")
