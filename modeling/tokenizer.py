"""Word-level tokenizers for the bundled presets (real backbones ship their own), and the
digest of any tokenizer that goes into the backbone fingerprint.

Built with Hugging Face `tokenizers` (WordLevel + whitespace/punctuation splitting) and
wrapped as a `PreTrainedTokenizerFast`, so code paths are the same as for a T5 / BART
tokenizer loaded from a backbone folder. Special tokens sit where each family expects
them (T5: pad 0, eos 1, unk 2; BART: bos 0, pad 1, eos 2, unk 3; BLIP's BERT: pad 0,
[SEP] 1, unk 2, [DEC] 3).
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast

SPECIALS = {
    "t5": ["<pad>", "</s>", "<unk>"],
    "bart": ["<s>", "<pad>", "</s>", "<unk>"],
    # BLIP's BERT: pad 0, [SEP] 1 (ends a text; decoding stops there), [DEC] 3 (start).
    "bert": ["<pad>", "</s>", "<unk>", "<s>"],
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
    extra = {"bos_token": "<s>"} if "<s>" in specials else {}
    return PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", eos_token="</s>",
                                   unk_token="<unk>", **extra)


# Settings a call such as `tokenizer(texts, truncation=True, max_length=n)` leaves on the
# backend: they belong to that call, not to the text -> ids mapping.
_CALL_STATE = ("truncation", "padding")
# Keys `from_pretrained` adds to tokenizer_config.json: where and how it was loaded.
_LOAD_CONTEXT = ("is_local", "local_files_only", "name_or_path", "_commit_hash", "cache_dir",
                 "revision", "token", "trust_remote_code", "subfolder")


def _canonical(data: Any) -> bytes:
    return json.dumps(data, sort_keys=True, separators=(",", ":")).encode()


def _saved_files_state(tokenizer: PreTrainedTokenizerBase) -> bytes:
    """The files `save_pretrained` writes (vocabulary, merges, configs), JSON canonicalised."""
    out = []
    with tempfile.TemporaryDirectory() as folder:
        tokenizer.save_pretrained(folder)
        for path in sorted(p for p in Path(folder).rglob("*") if p.is_file()):
            content = path.read_bytes()
            if path.suffix == ".json":
                data = json.loads(content)
                if isinstance(data, dict):  # an unset (null) key is as good as absent
                    data = {k: v for k, v in data.items()
                            if k not in _LOAD_CONTEXT and v is not None}
                content = _canonical(data)
            out.append(path.relative_to(folder).as_posix().encode() + b"\0" + content)
    return b"\0".join(out)


def tokenizer_digest(tokenizer: PreTrainedTokenizerBase) -> str:
    """sha256 (hex) of what maps text to ids and ids to text; equal across processes.

    A `tokenizers` backend (every fast tokenizer) contributes its serialised state:
    vocabulary, merges, normalizer, pre-tokenizer, post-processor (added bos / eos),
    decoder and added tokens, without the truncation / padding a call left on it. A
    tokenizer without one contributes the files `save_pretrained` writes. Both add which
    token plays which special role (pad, eos, ...) and its id.
    """
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        state = {k: v for k, v in json.loads(backend.to_str()).items() if k not in _CALL_STATE}
        digest = hashlib.sha256(_canonical(state))
    else:
        digest = hashlib.sha256(_saved_files_state(tokenizer))
    roles = {role: [token, tokenizer.convert_tokens_to_ids(token)]
             for role, token in tokenizer.special_tokens_map.items()}
    digest.update(_canonical(roles))
    return digest.hexdigest()
