"""The four serve forms every PEFT method materialises into (DESIGN.md, "Methods").

One `AdapterSet` holds one adapter set for one task:

- `lora`: low-rank delta on a linear layer, `y += scale * (x @ A.T) @ B.T`;
- `bottleneck`: a block-position adapter, `h += scale * Up(act(Down(z)))` with `z = h`
  (serial, Houlsby) or `z =` the sublayer input (parallel, He et al.);
- `prompt`: vectors prepended to the encoder input;
- `prefix`: key/value prefixes per attention layer;

plus `overrides`: per-set copies of small backbone tensors (LayerNorms, biases, the visual
projection, the LM head) that replace the frozen ones for rows using this set.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

# The one table of bottleneck activations. Each maps 0 to 0, which the bank relies on: a slot
# without a block position holds zero weights and may borrow any slot's activation.
ACTIVATION_FUNCTIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "relu": F.relu, "gelu": F.gelu, "silu": F.silu, "tanh": torch.tanh}
ACTIVATIONS = tuple(ACTIVATION_FUNCTIONS)  # the accepted names, in table order


def check_activation(name: str, field_name: str = "activation") -> None:
    """The one check of an activation name: ValueError naming `field_name` unless it is known."""
    if name not in ACTIVATION_FUNCTIONS:
        raise ValueError(f"{field_name} {name!r} is not a known activation; expected one of "
                         f"{list(ACTIVATIONS)}")


@dataclass
class LowRankDelta:
    """lora_a [rank, in_features], lora_b [out_features, rank]; y += scale * x A^T B^T.

    dropout: probability applied to x on the LoRA path while training (0 when serving).
    """

    lora_a: torch.Tensor
    lora_b: torch.Tensor
    scale: float
    dropout: float = 0.0


@dataclass
class Bottleneck:
    """down_weight [width, d], down_bias [width], up_weight [d, width], up_bias [d].

    activation: a name of `ACTIVATION_FUNCTIONS`, checked here so that no bottleneck with an
    unknown one reaches the bank or the kernels.
    """

    down_weight: torch.Tensor
    down_bias: torch.Tensor
    up_weight: torch.Tensor
    up_bias: torch.Tensor
    parallel: bool = False
    scale: float = 1.0
    activation: str = "relu"

    def __post_init__(self) -> None:
        check_activation(self.activation, "bottleneck activation")


@dataclass
class PrefixKV:
    """key, value [heads, prefix_len, head_dim]: prepended to one attention's keys/values."""

    key: torch.Tensor
    value: torch.Tensor


def unique_nbytes(sets: list[AdapterSet]) -> int:
    """Bytes held by `sets`, counting a tensor shared by several sets (tasks) once."""
    sizes = {}
    for weights in sets:
        for tensor in weights.tensors():
            sizes[(tensor.data_ptr(), tensor.numel())] = tensor.numel() * tensor.element_size()
    return sum(sizes.values())


@dataclass
class AdapterSet:
    """One adapter set (one task of one artifact) in serve form."""

    lora: dict[str, LowRankDelta] = field(default_factory=dict)
    bottleneck: dict[str, Bottleneck] = field(default_factory=dict)
    prompt: torch.Tensor | None = None  # [prompt_len, d_model]
    prefix: dict[str, PrefixKV] = field(default_factory=dict)
    overrides: dict[str, torch.Tensor] = field(default_factory=dict)

    def merge(self, other: AdapterSet) -> AdapterSet:
        """Union of two sets (e.g. a shared adapter plus a task prompt); overlaps are refused."""
        for name in ("lora", "bottleneck", "prefix", "overrides"):
            clash = set(getattr(self, name)) & set(getattr(other, name))
            if clash:
                raise ValueError(f"two methods write the same {name} site(s): {sorted(clash)[:3]}")
        if self.prompt is not None and other.prompt is not None:
            raise ValueError("two methods both add encoder prompts; combine them into one")
        return AdapterSet(
            lora={**self.lora, **other.lora},
            bottleneck={**self.bottleneck, **other.bottleneck},
            prompt=self.prompt if self.prompt is not None else other.prompt,
            prefix={**self.prefix, **other.prefix},
            overrides={**self.overrides, **other.overrides},
        )

    def tensors(self) -> list[torch.Tensor]:
        out = [t for d in self.lora.values() for t in (d.lora_a, d.lora_b)]
        for b in self.bottleneck.values():
            out += [b.down_weight, b.down_bias, b.up_weight, b.up_bias]
        out += [t for p in self.prefix.values() for t in (p.key, p.value)]
        out += list(self.overrides.values())
        if self.prompt is not None:
            out.append(self.prompt)
        return out

    def nbytes(self) -> int:
        return unique_nbytes([self])

    def prompt_len(self) -> int:
        """The prompt-tuning vectors this set puts before the encoder input (0: none)."""
        return 0 if self.prompt is None else self.prompt.shape[0]

    def prefix_len(self) -> int:
        lengths = {p.key.shape[1] for p in self.prefix.values()}
        if len(lengths) > 1:
            raise ValueError(f"prefix lengths differ across layers: {sorted(lengths)}")
        return lengths.pop() if lengths else 0
