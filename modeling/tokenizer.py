"""Word-level tokenizers for the bundled presets (real backbones ship their own).

Built with Hugging Face `tokenizers` (WordLevel + whitespace/punctuation splitting) and
wrapped as a `PreTrainedTokenizerFast`, so code paths are the same as for a T5 / BART
tokenizer loaded from a backbone folder. Special tokens sit where each family expects
them (T5: pad 0, eos 1, unk 2; BART: bos 0, pad 1, eos 2, unk 3).
"""

from __future__ import annotations

from collections.abc import Iterable

from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

SPECIALS = {
    "t5": ["<pad>", "</s>", "<unk>"],
    "bart": ["<s>", "<pad>", "</s>", "<unk>"],
}


PRE_TOKENIZER = pre_tokenizers.Sequence([pre_tokenizers.Whitespace(),
                                         pre_tokenizers.Punctuation()])


def words_of(texts: Iterable[str]) -> set[str]:
    """The lower-case words the tokenizer would split `texts` into."""
    return {word.lower() for text in texts
            for word, _ in PRE_TOKENIZER.pre_tokenize_str(text)}


def build_word_tokenizer(words: Iterable[str], lm_type: str,
                         vocab_size: int | None = None) -> PreTrainedTokenizerFast:
    """A lower-case word tokenizer over `words` that appends eos to every text.

    vocab_size: the LM's embedding rows; a vocabulary that does not fit is refused.
    """
    specials = SPECIALS[lm_type]
    vocab = {token: i for i, token in enumerate(specials)}
    for word in sorted({w.lower() for w in words}):
        vocab.setdefault(word, len(vocab))
    if vocab_size is not None and len(vocab) > vocab_size:
        raise ValueError(f"{len(vocab)} words do not fit the LM's vocabulary of {vocab_size}")
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.normalizer = normalizers.Lowercase()
    core.pre_tokenizer = PRE_TOKENIZER
    core.post_processor = processors.TemplateProcessing(
        single="$A </s>", special_tokens=[("</s>", vocab["</s>"])])
    extra = {"bos_token": "<s>"} if lm_type == "bart" else {}
    return PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", eos_token="</s>",
                                   unk_token="<unk>", **extra)
