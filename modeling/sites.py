"""Where adapters attach inside the LM: one table per model family (T5, BART, BERT).

Names are stable strings used by serve forms and artifacts:

- linear sites: the module path inside the backbone,
  e.g. `lm.encoder.block.0.layer.0.SelfAttention.q`;
- block positions: `encoder.{i}.self_attn`, `encoder.{i}.ffn`, `decoder.{i}.self_attn`,
  `decoder.{i}.cross_attn`, `decoder.{i}.ffn` (VL-Adapter's adapter placements); BERT's
  text encoder (BLIP) also has `encoder.{i}.cross_attn` (the question attends the image);
- attention sites (prefix tuning): the `*_attn` positions.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from torch import nn
from transformers.models.t5.modeling_t5 import T5LayerNorm

# Canonical LoRA target names -> the tail of the Linear's module path in each family (a
# regular expression over whole path components: BERT names its output, FFN-in and FFN-out
# Linears all `dense`, so the parent decides).
TARGET_ALIASES = {
    "t5": {"q": "q", "k": "k", "v": "v", "o": "o", "ffn_in": "wi", "ffn_out": "wo"},
    "bart": {"q": "q_proj", "k": "k_proj", "v": "v_proj", "o": "out_proj",
             "ffn_in": "fc1", "ffn_out": "fc2"},
    "bert": {"q": "query", "k": "key", "v": "value", "o": r"(cross)?attention\.output\.dense",
             "ffn_in": r"intermediate\.dense", "ffn_out": r"\d+\.output\.dense"},
}


def is_target(path: str, alias: str) -> bool:
    """Whether module `path` ends with the components matched by `alias` (a TARGET_ALIASES
    value): `...SelfAttention.q` is a "q" target, `...attention.output.dense` BERT's "o"."""
    return re.search(rf"(^|\.)(?:{alias})$", path) is not None


# Per family: the LM config -> (attention heads, head width) of its attention layers.
ATTENTION_SHAPE: dict[str, Callable[[object], tuple[int, int]]] = {
    "t5": lambda c: (c.num_heads, c.d_kv),
    "bart": lambda c: (c.encoder_attention_heads, c.d_model // c.encoder_attention_heads),
    "bert": lambda c: (c.num_attention_heads, c.hidden_size // c.num_attention_heads),
}


# The LM head (hidden -> vocabulary logits; the study's "final classifier") per family.
LM_HEAD = {"t5": "lm.lm_head", "bart": "lm.lm_head",
           "bert": "lm.text_decoder.cls.predictions.decoder"}


@dataclass(frozen=True)
class BlockPosition:
    """A sublayer: its input is read at `input_module`, its output at `output_module`.

    The output is the sublayer's contribution before the residual add (VL-Adapter inserts
    its adapters there): the output of the sublayer's last Linear (attention's output
    projection, the FFN's second Linear), which the sublayer returns as it is. Read at the
    Linear itself, it is a tensor only our hooks have seen yet, so a bottleneck adds into
    it in place (`modeling.hooks`).
    """

    input_module: nn.Module
    output_module: nn.Linear
    kind: str  # "self_attn" | "cross_attn" | "ffn"
    stack: str  # "encoder" | "decoder"
    # The module computing softmax(q k^T) v, where prefixes join the keys and values.
    attention_module: nn.Module | None = None


def _t5_positions(lm: nn.Module) -> dict[str, BlockPosition]:
    out: dict[str, BlockPosition] = {}
    for stack_name, stack in (("encoder", lm.encoder), ("decoder", lm.decoder)):
        for i, block in enumerate(stack.block):
            attn = block.layer[0].SelfAttention
            out[f"{stack_name}.{i}.self_attn"] = BlockPosition(attn, attn.o, "self_attn",
                                                               stack_name, attn)
            if stack_name == "decoder":
                cross = block.layer[1].EncDecAttention
                out[f"decoder.{i}.cross_attn"] = BlockPosition(cross, cross.o, "cross_attn",
                                                               stack_name, cross)
            ffn = block.layer[-1].DenseReluDense
            out[f"{stack_name}.{i}.ffn"] = BlockPosition(ffn, ffn.wo, "ffn", stack_name)
    return out


def _bart_positions(lm: nn.Module) -> dict[str, BlockPosition]:
    out: dict[str, BlockPosition] = {}
    model = lm.model
    for stack_name, stack in (("encoder", model.encoder), ("decoder", model.decoder)):
        for i, layer in enumerate(stack.layers):
            out[f"{stack_name}.{i}.self_attn"] = BlockPosition(
                layer.self_attn, layer.self_attn.out_proj, "self_attn", stack_name,
                layer.self_attn)
            if stack_name == "decoder":
                out[f"decoder.{i}.cross_attn"] = BlockPosition(
                    layer.encoder_attn, layer.encoder_attn.out_proj, "cross_attn", stack_name,
                    layer.encoder_attn)
            out[f"{stack_name}.{i}.ffn"] = BlockPosition(layer.fc1, layer.fc2, "ffn",
                                                         stack_name)
    return out


def _bert_positions(lm: nn.Module) -> dict[str, BlockPosition]:
    """BERT layers (BLIP's text encoder and decoder): each sublayer's contribution is its
    output `dense` Linear, before the dropout, residual add and LayerNorm that follow it
    (where Houlsby et al. place the adapter)."""
    out: dict[str, BlockPosition] = {}
    for stack_name, stack in lm.bert_stacks().items():
        for i, layer in enumerate(stack.layer):
            for kind, attn in (("self_attn", layer.attention),
                               ("cross_attn", getattr(layer, "crossattention", None))):
                if attn is not None:
                    out[f"{stack_name}.{i}.{kind}"] = BlockPosition(
                        attn, attn.output.dense, kind, stack_name, attn.self)
            out[f"{stack_name}.{i}.ffn"] = BlockPosition(
                layer.intermediate, layer.output.dense, "ffn", stack_name)
    return out


_POSITIONS = {"t5": _t5_positions, "bart": _bart_positions, "bert": _bert_positions}


def block_positions(lm_type: str, lm: nn.Module) -> dict[str, BlockPosition]:
    """Every adapter position of the LM, in forward order per stack."""
    return _POSITIONS[lm_type](lm)


def attention_sites(lm_type: str, lm: nn.Module) -> dict[str, nn.Module]:
    """Attention modules by position name (the prefix-tuning sites)."""
    return {name: pos.attention_module
            for name, pos in block_positions(lm_type, lm).items() if pos.kind != "ffn"}


# The norm modules whose weights (and bias) a set may override: BART's and the visual
# projection's nn.LayerNorm, and T5's RMS norm (no bias, no mean subtraction).
LAYER_NORM_TYPES: tuple[type[nn.Module], ...] = (nn.LayerNorm, T5LayerNorm)


def is_layer_norm(module: nn.Module) -> bool:
    """Whether `module` is a LayerNorm the hooks can recompute per row (by type, so a
    subclass counts and an unrelated class of the same name does not)."""
    return isinstance(module, LAYER_NORM_TYPES)


def layer_norm_names(backbone: nn.Module) -> list[str]:
    """Module paths of every LayerNorm (nn.LayerNorm and T5's RMS norm), CLIP excluded."""
    return [name for name, module in backbone.named_modules()
            if not name.startswith("vision.") and is_layer_norm(module)]
