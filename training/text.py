"""The word vocabulary of a data set, for backbones built from a preset (the benchmark)."""

from __future__ import annotations

from collections.abc import Iterable

from transformers import PreTrainedTokenizerFast

from modeling.tasks import TASKS, choice_label
from modeling.tokenizer import build_word_tokenizer, words_of
from training.data.example import Example


def corpus_words(examples: Iterable[Example]) -> set[str]:
    """Every word of every input, target and choice, plus prompts and candidate labels."""
    texts = [spec.prompt for spec in TASKS.values()] + ["true", "false"]
    texts += [choice_label(i) for i in range(5)]
    for example in examples:
        texts += [example.source_text, *example.targets, *example.choices]
    return words_of(texts)


def corpus_tokenizer(examples: Iterable[Example], lm_type: str,
                     vocab_size: int) -> PreTrainedTokenizerFast:
    return build_word_tokenizer(corpus_words(examples), lm_type, vocab_size)
