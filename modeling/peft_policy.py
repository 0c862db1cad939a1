"""What a Hugging Face PEFT folder may hold to be imported: one policy for both importers.

`modeling.peft_format.import_peft` (folder -> serve weights for a backbone) and the
registry's `import-peft` (folder -> artifact, without torch) both ask `plan_peft`, so a
folder one accepts the other accepts, with the same layers, ranks and scales. Plain
Python: no torch and nothing else of ours, because the torch-free registry imports it.

Accepted:

- LORA on Linear layers: `r`, `lora_alpha`, rsLoRA (scale `alpha / sqrt(r)`), `rank_pattern`
  / `alpha_pattern` (PEFT's rule: the first pattern matching the end of the module path)
  and any subset of layers (`layers_to_transform`, a regex `target_modules`,
  `exclude_modules`): the tensors name the layers; layers without tensors get no delta.
- PROMPT_TUNING (task type SEQ_2_SEQ_LM or unset): the first `num_virtual_tokens` rows of
  `prompt_embeddings`, prepended to the encoder input. A seq2seq prompt stores twice as many
  rows (`num_transformer_submodules` 2), but `PeftModelForSeq2SeqLM` prepends only the first
  `num_virtual_tokens` (in `forward` and `generate`); the other rows never reach the model.

Refused, naming the field: other peft types; LoRA options that change the computation or
the base weights (DoRA, LoRA biases, fan_in_fan_out, modules_to_save, PiSSA-style inits,
...); and any field not listed here whose value is set (a newer PEFT option is refused
until someone decides what it means for us).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
PICKLE_NAME = "adapter_model.bin"
PROMPT_KEY = "prompt_embeddings"
LORA_KEY = re.compile(r"base_model\.model\.(?P<path>.+)\.lora_(?P<part>[AB])\.weight")
# Module names without "__": our parameter keys write "." as "__" (`modeling.tensor_names`).
_MODULE_PATH = re.compile(r"[A-Za-z0-9]+(_[A-Za-z0-9]+)*(\.[A-Za-z0-9]+(_[A-Za-z0-9]+)*)*")

# Fields that change nothing we compute: bookkeeping, layer selection (the tensors say
# which layers), initialisation of the trainable tensors, training-time settings.
_BOOKKEEPING = ("task_type", "peft_type", "auto_mapping", "peft_version",
                "base_model_name_or_path", "revision", "inference_mode")
_LORA_FIELDS = _BOOKKEEPING + (
    "r", "lora_alpha", "lora_dropout", "use_rslora", "rank_pattern", "alpha_pattern",
    "target_modules", "exclude_modules", "layers_to_transform", "layers_pattern",
    "init_lora_weights", "eva_config", "corda_config", "lora_ga_config", "runtime_config",
    "megatron_core", "qalora_group_size", "bias", "ensure_weight_tying")
_PROMPT_FIELDS = _BOOKKEEPING + (
    "num_virtual_tokens", "token_dim", "num_transformer_submodules", "num_attention_heads",
    "num_layers", "prompt_tuning_init", "prompt_tuning_init_text", "tokenizer_name_or_path",
    "tokenizer_kwargs")
# Initialisations that leave the base weights as they are (PiSSA, OLoRA, CorDA and LoftQ
# rewrite them, so their adapters only fit the rewritten base).
_PLAIN_INITS = (True, False, "gaussian", "eva", "orthogonal")
_SEQ2SEQ = "SEQ_2_SEQ_LM"


class PeftRefused(ValueError):
    """A PEFT folder we do not import; the message names the file, field or tensor."""


@dataclass(frozen=True)
class LoraSite:
    """One LoRA layer: `path` is PEFT's module path inside the LM; delta = scale * B A."""

    path: str
    rank: int
    scale: float

    @property
    def site(self) -> str:
        """Our site name (`modeling.sites`): the module path inside the backbone."""
        return f"lm.{self.path}"

    def key(self, part: str) -> str:
        """The PEFT tensor name of A [rank, in] or B [out, rank]."""
        return f"base_model.model.{self.path}.lora_{part}.weight"

    @property
    def alpha(self) -> int | float:
        """The plain-LoRA alpha (scale = alpha / rank) of this scale; an int when whole."""
        alpha = self.scale * self.rank
        return int(alpha) if alpha.is_integer() else alpha


@dataclass(frozen=True)
class PeftPlan:
    """What to import. lora: every layer, sorted by path; prompt_rows: the leading rows of
    `prompt_embeddings` [prompt_rows, prompt_dim] to keep (0: not a prompt)."""

    lora: tuple[LoraSite, ...] = ()
    dropout: float = 0.0
    prompt_rows: int = 0
    prompt_dim: int = 0


def peft_files(folder: Path) -> tuple[Path, Path]:
    """(adapter_config.json, adapter_model.safetensors) of a PEFT folder; never a pickle."""
    config, weights = folder / CONFIG_NAME, folder / WEIGHTS_NAME
    if not weights.is_file():
        if (folder / PICKLE_NAME).is_file():
            raise PeftRefused(f"{folder / PICKLE_NAME} is a pickle file, which we never load: "
                              f"convert it to {WEIGHTS_NAME} with a trusted tool first")
        raise PeftRefused(f"{weights} not found: not a PEFT adapter folder")
    if not config.is_file():
        raise PeftRefused(f"{config} not found: not a PEFT adapter folder")
    return config, weights


def _refuse(name: str, value: Any, expected: str) -> PeftRefused:
    return PeftRefused(f"{CONFIG_NAME} field {name!r} = {value!r} is not supported; "
                       f"expected {expected}")


def _unset(value: Any) -> bool:
    return value is None or value is False or value in ({}, [], "")


def _check_fields(config: dict[str, Any], known: tuple[str, ...]) -> None:
    for name, value in config.items():
        if name not in known and not _unset(value):
            raise _refuse(name, value, "it unset (vladapter does not model this option)")


def _positive_int(name: str, value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise _refuse(name, value, "a positive integer")
    return value


def _number(name: str, value: Any) -> float:
    if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value):
        raise _refuse(name, value, "a finite number")
    return float(value)


def _patterns(config: dict[str, Any], name: str) -> dict[str, Any]:
    patterns = config.get(name) or {}
    if not isinstance(patterns, dict):
        raise _refuse(name, patterns, "a mapping of module-path patterns to values")
    for pattern in patterns:
        try:
            re.compile(pattern)
        except re.error as exc:
            raise _refuse(name, patterns, f"regular expressions ({pattern!r}: {exc})") from None
    return patterns


def _pattern_value(config: dict[str, Any], name: str, path: str, default: Any) -> Any:
    """PEFT's `get_pattern_key`: the first pattern that matches the end of the path."""
    for pattern, value in _patterns(config, name).items():
        if re.match(rf"(.*\.)?({pattern})$", path):
            return value
    return default


def _lora_options(config: dict[str, Any]) -> tuple[int, float, float]:
    """(r, lora_alpha, lora_dropout) once every LoRA option is known to be one we model."""
    _check_fields(config, _LORA_FIELDS)
    if config.get("bias", "none") != "none":
        raise _refuse("bias", config["bias"], "'none'")
    init = config.get("init_lora_weights", True)
    if not any(init is plain if isinstance(plain, bool) else init == plain
               for plain in _PLAIN_INITS):
        raise _refuse("init_lora_weights", init, "an init that keeps the base weights "
                      f"{list(_PLAIN_INITS)}; convert the adapter with PEFT's "
                      "path_initial_model_for_weight_conversion first")
    if not isinstance(config.get("use_rslora", False), bool):
        raise _refuse("use_rslora", config["use_rslora"], "true or false")
    rank = _positive_int("r", config.get("r"))
    alpha = _number("lora_alpha", config.get("lora_alpha", 8))
    dropout = _number("lora_dropout", config.get("lora_dropout", 0.0))
    if not 0 <= dropout < 1:
        raise _refuse("lora_dropout", dropout, "a probability in [0, 1)")
    return rank, alpha, dropout


def _lora_site(config: dict[str, Any], path: str, rank: int, alpha: float) -> LoraSite:
    if not _MODULE_PATH.fullmatch(path):
        raise PeftRefused(f"{WEIGHTS_NAME}: module path {path!r} of tensor "
                          f"{LoraSite(path, 1, 0.0).key('A')!r} is not a dotted module path")
    rank = _positive_int("rank_pattern",
                         _pattern_value(config, "rank_pattern", path, rank))
    alpha = _number("alpha_pattern", _pattern_value(config, "alpha_pattern", path, alpha))
    return LoraSite(path, rank, alpha / (math.sqrt(rank) if config.get("use_rslora") else rank))


def _lora_plan(config: dict[str, Any], shapes: dict[str, tuple[int, ...]]) -> PeftPlan:
    rank, alpha, dropout = _lora_options(config)
    parts: dict[str, set[str]] = {}
    for key in shapes:
        match = LORA_KEY.fullmatch(key)
        if match is None:
            raise PeftRefused(f"{WEIGHTS_NAME}: unexpected tensor {key!r}; a LORA adapter "
                              "holds only 'base_model.model.<module path>.lora_A.weight' "
                              "and '.lora_B.weight'")
        parts.setdefault(match["path"], set()).add(match["part"])
    if not parts:
        raise PeftRefused(f"{WEIGHTS_NAME} holds no LoRA tensors")
    sites = []
    for path in sorted(parts):
        site = _lora_site(config, path, rank, alpha)
        for axis, part in enumerate("AB"):
            if part not in parts[path]:
                raise PeftRefused(f"{WEIGHTS_NAME}: missing tensor {site.key(part)!r} "
                                  "(its pair exists)")
            shape = shapes[site.key(part)]
            if len(shape) != 2 or shape[axis] != site.rank:
                raise PeftRefused(f"{WEIGHTS_NAME}: tensor {site.key(part)!r} has shape "
                                  f"{list(shape)}; expected rank {site.rank} in dimension "
                                  f"{axis} of 2")
        sites.append(site)
    return PeftPlan(lora=tuple(sites), dropout=dropout)


def _prompt_plan(config: dict[str, Any], shapes: dict[str, tuple[int, ...]]) -> PeftPlan:
    _check_fields(config, _PROMPT_FIELDS)
    task_type = config.get("task_type")
    if task_type not in (None, _SEQ2SEQ):
        raise _refuse("task_type", task_type, f"{_SEQ2SEQ!r} (a prompt for the encoder)")
    length = _positive_int("num_virtual_tokens", config.get("num_virtual_tokens"))
    # PEFT's default: a seq2seq prompt has an encoder and a decoder half.
    submodules = config.get("num_transformer_submodules") or (2 if task_type == _SEQ2SEQ else 1)
    if submodules not in (1, 2):
        raise _refuse("num_transformer_submodules", submodules, "1 or 2")
    if set(shapes) != {PROMPT_KEY}:
        raise PeftRefused(f"{WEIGHTS_NAME}: tensors {sorted(shapes)[:3]}; a PROMPT_TUNING "
                          f"adapter holds only {PROMPT_KEY!r}")
    shape, token_dim = shapes[PROMPT_KEY], config.get("token_dim")
    width = token_dim if token_dim is not None else (shape[-1] if shape else "token_dim")
    if len(shape) != 2 or shape != (length * submodules, width):
        raise PeftRefused(f"{WEIGHTS_NAME}: tensor {PROMPT_KEY!r} has shape {list(shape)}; "
                          f"expected {[length * submodules, width]} (num_virtual_tokens x "
                          "num_transformer_submodules, token_dim)")
    return PeftPlan(prompt_rows=length, prompt_dim=shape[1])


def plan_peft(config: Any, shapes: dict[str, tuple[int, ...]]) -> PeftPlan:
    """The one decision on a PEFT folder: its parsed adapter_config.json and the shape of
    every tensor of adapter_model.safetensors -> what to import, or PeftRefused.

    Whether the layers and widths fit a backbone is checked where the backbone is known
    (`modeling.peft_format`, and the server when it loads an artifact).
    """
    if not isinstance(config, dict):
        raise PeftRefused(f"{CONFIG_NAME} must hold a JSON object")
    shapes = {key: tuple(shape) for key, shape in shapes.items()}
    peft_type = config.get("peft_type")
    if peft_type == "LORA":
        return _lora_plan(config, shapes)
    if peft_type == "PROMPT_TUNING":
        return _prompt_plan(config, shapes)
    raise _refuse("peft_type", peft_type, "'LORA' or 'PROMPT_TUNING'")
