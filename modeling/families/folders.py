"""Reading Hugging Face folders: their `config.json` model_type, their tokenizer.

Every refusal is a ValueError of one line that names the folder and what is missing, so
each CLI prints it as its one error line.
"""

from __future__ import annotations

import json
from pathlib import Path

from transformers import AutoTokenizer, PreTrainedTokenizerBase

# A folder holds a Hugging Face tokenizer when one of these is there (fast tokenizers write
# tokenizer.json; T5's slow one spiece.model; BART's vocab.json + merges.txt).
TOKENIZER_FILES = ("tokenizer.json", "spiece.model", "vocab.json", "tokenizer_config.json")


def model_type(folder: Path) -> str | None:
    """`model_type` of `folder/config.json`; None when the folder has no config.json."""
    path = Path(folder) / "config.json"
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{folder}: config.json is not readable JSON ({err})") from None
    kind = data.get("model_type") if isinstance(data, dict) else None
    if not isinstance(kind, str):
        raise ValueError(f"{folder}: config.json has no model_type")
    return kind


def load_tokenizer(folder: Path, vocab_size: int | None = None) -> PreTrainedTokenizerBase:
    """The Hugging Face tokenizer saved in `folder`.

    vocab_size: the LM's embedding rows; a tokenizer with more tokens is refused (its ids
    would index past the embedding).
    """
    folder = Path(folder)
    if not any((folder / name).is_file() for name in TOKENIZER_FILES):
        raise ValueError(f"{folder}: no tokenizer files ({', '.join(TOKENIZER_FILES)})")
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError, TypeError, KeyError) as err:
        raise ValueError(f"{folder}: tokenizer does not load: {first_line(err)}") from None
    if vocab_size is not None and len(tokenizer) > vocab_size:
        raise ValueError(f"{folder}: tokenizer has {len(tokenizer)} tokens, more than the "
                         f"LM's vocabulary of {vocab_size}")
    return tokenizer


def first_line(err: BaseException) -> str:
    """The first non-empty line of an exception's message (Hugging Face errors run long)."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return lines[0] if lines else type(err).__name__
