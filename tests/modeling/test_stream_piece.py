"""Streamed text is exact: `stream_piece` over every prefix of a decode sends no empty piece
and no unfinished character, and the pieces join to the final text, with BART's byte-level
BPE and T5's SentencePiece (Unigram) tokenizers, built here from a tiny corpus."""

from __future__ import annotations

import pytest
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from modeling.decoding import stream_piece

CORPUS = ["a man cooks in the kitchen .", "the café is open", "a naïve question",
          "we do n't stop , we go ."] * 5 + ["coffee ☕ time"]  # ☕ once: its bytes stay apart
TEXTS = ["café ☕ naïve", "we do n't stop , we go .", "a man cooks in the café"]


def bart_tokenizer() -> PreTrainedTokenizerFast:
    """Byte-level BPE as BART's: every byte is a symbol, so a character may span tokens."""
    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    core.train_from_iterator(CORPUS, trainers.BpeTrainer(
        vocab_size=300, min_frequency=2, special_tokens=["<s>", "<pad>", "</s>", "<unk>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    return PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<s>", pad_token="<pad>",
                                   eos_token="</s>", unk_token="<unk>")


def t5_tokenizer(clean_up_spaces: bool = False) -> PreTrainedTokenizerFast:
    """SentencePiece Unigram with the metaspace as T5's; optionally with Hugging Face's
    space clean-up (" n't" -> "n't", " ," -> ","), which rewrites text already decoded."""
    core = Tokenizer(models.Unigram())
    core.normalizer = normalizers.NFKC()
    core.pre_tokenizer = pre_tokenizers.Metaspace()
    core.decoder = decoders.Metaspace()
    core.train_from_iterator(CORPUS, trainers.UnigramTrainer(
        vocab_size=120, special_tokens=["<pad>", "</s>", "<unk>"], unk_token="<unk>",
        show_progress=False))
    return PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", eos_token="</s>",
                                   unk_token="<unk>",
                                   clean_up_tokenization_spaces=clean_up_spaces)


TOKENIZERS = {"bart-byte-level": bart_tokenizer, "t5-sentencepiece": t5_tokenizer,
              "t5-clean-up-spaces": lambda: t5_tokenizer(clean_up_spaces=True)}


def decodes(tokenizer, text: str) -> list[str]:
    """What the engine decodes after each generated token of `text` (eos appended)."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    return [tokenizer.decode(ids[:end], skip_special_tokens=True).strip()
            for end in range(1, len(ids) + 1)]


def streamed_pieces(partials: list[str]) -> list[str]:
    """The pieces a stream sends: one call per decoded token, the last one final."""
    pieces, streamed = [], ""
    for step, text in enumerate(partials):
        piece = stream_piece(streamed, text, final=step == len(partials) - 1)
        if piece:
            pieces.append(piece)
            streamed += piece
    return pieces


@pytest.fixture(scope="module", params=sorted(TOKENIZERS))
def tokenizer(request):
    return TOKENIZERS[request.param]()


@pytest.mark.parametrize("text", TEXTS)
def test_pieces_join_to_the_final_text_with_no_empty_or_unfinished_piece(tokenizer, text):
    partials = decodes(tokenizer, text)
    pieces = streamed_pieces(partials)
    assert "".join(pieces) == partials[-1]
    assert all(pieces)
    assert not any("\ufffd" in piece for piece in pieces)


def test_byte_level_decodes_end_in_an_unfinished_character_that_is_held_back():
    """The case the holding is for: BART decodes "café ☕" as "café �" until ☕'s third
    byte arrives; no piece sent meanwhile holds the replacement character."""
    tokenizer = bart_tokenizer()
    partials = decodes(tokenizer, "café ☕ naïve")
    assert any(p.endswith("\ufffd") for p in partials)
    assert streamed_pieces(partials) == ["café", " ☕", " naïve"]


def test_space_clean_up_rewriting_the_last_word_never_breaks_what_was_sent():
    """ "we do n'" decodes, one token later, as "we don't": the space before the last word
    changed, so text is settled only up to the last whitespace."""
    partials = decodes(t5_tokenizer(clean_up_spaces=True), "we do n't stop , we go .")
    assert "we do n'" in partials and "we don't" in partials
    pieces = streamed_pieces(partials)
    assert "".join(pieces) == "we don't stop, we go."


@pytest.mark.parametrize(("streamed", "text", "final", "piece"), [
    ("", "a man", False, "a"),
    ("a", "a man cooks", False, " man"),
    ("a man", "a man cooks", True, " cooks"),
    ("", "caf\ufffd", False, ""),
    ("café", "café \ufffd", False, ""),
    ("", "  ", False, ""),
    ("a", "a", True, ""),
])
def test_stream_piece_holds_back_the_last_word_until_final(streamed, text, final, piece):
    assert stream_piece(streamed, text, final) == piece
