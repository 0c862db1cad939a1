"""Where adapters attach inside the LM: one table per model family (T5, BART).

Names are stable strings used by serve forms and artifacts:

- linear sites: the module path inside the backbone,
  e.g. `lm.encoder.block.0.layer.0.SelfAttention.q`;
- block positions: `encoder.{i}.self_attn`, `encoder.{i}.ffn`, `decoder.{i}.self_attn`,
  `decoder.{i}.cross_attn`, `decoder.{i}.ffn` (VL-Adapter's adapter placements);
- attention sites (prefix tuning): the three `*_attn` positions.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn
from transformers.models.t5.modeling_t5 import T5LayerNorm

# Canonical LoRA target names -> the Linear's attribute name in each family.
TARGET_ALIASES = {
    "t5": {"q": "q", "k": "k", "v": "v", "o": "o", "ffn_in": "wi", "ffn_out": "wo"},
    "bart": {"q": "q_proj", "k": "k_proj", "v": "v_proj", "o": "out_proj",
             "ffn_in": "fc1", "ffn_out": "fc2"},
}


@dataclass(frozen=True)
class BlockPosition:
    """A sublayer: its input is read at `input_module`, its output at `output_module`.

    The output is the sublayer's contribution before the residual add (VL-Adapter inserts
    its adapters there); `output_is_tuple` marks attention modules returning a tuple.
    """

    input_module: nn.Module
    output_module: nn.Module
    output_is_tuple: bool
    kind: str  # "self_attn" | "cross_attn" | "ffn"
    stack: str  # "encoder" | "decoder"


def _t5_positions(lm: nn.Module) -> dict[str, BlockPosition]:
    out: dict[str, BlockPosition] = {}
    for stack_name, stack in (("encoder", lm.encoder), ("decoder", lm.decoder)):
        for i, block in enumerate(stack.block):
            attn = block.layer[0].SelfAttention
            out[f"{stack_name}.{i}.self_attn"] = BlockPosition(attn, attn, True, "self_attn",
                                                               stack_name)
            if stack_name == "decoder":
                cross = block.layer[1].EncDecAttention
                out[f"decoder.{i}.cross_attn"] = BlockPosition(cross, cross, True, "cross_attn",
                                                               stack_name)
            ffn = block.layer[-1].DenseReluDense
            out[f"{stack_name}.{i}.ffn"] = BlockPosition(ffn, ffn, False, "ffn", stack_name)
    return out


def _bart_positions(lm: nn.Module) -> dict[str, BlockPosition]:
    out: dict[str, BlockPosition] = {}
    model = lm.model
    for stack_name, stack in (("encoder", model.encoder), ("decoder", model.decoder)):
        for i, layer in enumerate(stack.layers):
            out[f"{stack_name}.{i}.self_attn"] = BlockPosition(
                layer.self_attn, layer.self_attn, True, "self_attn", stack_name)
            if stack_name == "decoder":
                out[f"decoder.{i}.cross_attn"] = BlockPosition(
                    layer.encoder_attn, layer.encoder_attn, True, "cross_attn", stack_name)
            out[f"{stack_name}.{i}.ffn"] = BlockPosition(layer.fc1, layer.fc2, False, "ffn",
                                                         stack_name)
    return out


def block_positions(lm_type: str, lm: nn.Module) -> dict[str, BlockPosition]:
    """Every adapter position of the LM, in forward order per stack."""
    return _t5_positions(lm) if lm_type == "t5" else _bart_positions(lm)


def attention_sites(lm_type: str, lm: nn.Module) -> dict[str, nn.Module]:
    """Attention modules by position name (the prefix-tuning sites)."""
    return {name: pos.output_module for name, pos in block_positions(lm_type, lm).items()
            if pos.kind != "ffn"}


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
