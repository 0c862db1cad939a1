"""Serial (Houlsby et al., 2019) and parallel (He et al., 2022) bottleneck adapters.

    serial:    h ◄── h + Up(act(Down(h)))          at the sublayer output
    parallel:  h ◄── h + s * Up(act(Down(x)))      x = the sublayer input

Serial is VL-Adapter's adapter (Sung et al., Sec. 3.1): width d / reduction_factor, after
self-attention and FFN in every encoder layer, and after self-attention, cross-attention
and FFN in every decoder layer. Parallel follows the empirical study's Eqs. (6)-(7)
(the "+ x" of its Eq. (8) is the block's own skip connection). Up starts at zero, so the
model starts equal to the frozen backbone.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from modeling.methods.base import PeftMethod
from modeling.methods.registry import register_method
from modeling.serve_forms import AdapterSet, Bottleneck, check_activation
from modeling.tensor_names import param_key, site_of

STACKS = {"encoder", "decoder"}
VL_ADAPTER_PLACEMENTS = ("encoder.self_attn", "encoder.ffn", "decoder.self_attn",
                         "decoder.cross_attn", "decoder.ffn")


@dataclass(frozen=True)
class AdapterConfig:
    """reduction_factor: width = d_model // reduction_factor (unless `width` is given);
    placements: `<stack>.<kind>` names of the block positions to adapt."""

    reduction_factor: int = 8
    width: int | None = None
    activation: str = "relu"
    placements: tuple[str, ...] = VL_ADAPTER_PLACEMENTS
    scale: float = 1.0


def adapter_width(config, d_model: int) -> int:
    width = config.width or d_model // config.reduction_factor
    if width < 1:
        raise ValueError(f"adapter width must be >= 1 (d_model {d_model}, reduction_factor "
                         f"{config.reduction_factor}, width {config.width})")
    return width


def selected_positions(facts, placements: tuple[str, ...]) -> list[str]:
    """Block positions matching `<stack>.<kind>` placements, in forward order.

    A placement in a stack the backbone lacks is skipped (BLIP's captioning model has no
    text encoder, so the default placements adapt its decoder only); an unknown kind, an
    unknown stack, or placements that select nothing are refused.
    """
    known = {f"{name.split('.')[0]}.{kind}" for name, kind in facts.positions.items()}
    stacks = {name.split(".")[0] for name in facts.positions}
    absent = {p for p in placements if p.split(".")[0] in STACKS - stacks}
    unknown = sorted(set(placements) - known - absent)
    selected = [name for name, kind in facts.positions.items()
                if f"{name.split('.')[0]}.{kind}" in placements]
    if unknown or not selected:
        raise ValueError(f"unknown adapter placement(s) {unknown or sorted(placements)}; "
                         f"expected some of {sorted(known)}")
    return selected


class BottleneckAdapter(PeftMethod):
    groups = ("down", "up")
    half_shared_groups = ("up",)
    parallel = False

    def __init__(self, config: AdapterConfig, facts, tasks, sharing):
        check_activation(config.activation)
        self.width = adapter_width(config, facts.d_model)
        self.positions = selected_positions(facts, config.placements)
        super().__init__(config, facts, tasks, sharing)

    def build_group(self, group: str) -> nn.Module:
        d, width = self.facts.d_model, self.width
        layers = nn.ModuleDict()
        for pos in self.positions:
            if group == "down":
                layer = nn.Linear(d, width)
                nn.init.normal_(layer.weight, std=1e-2)
                nn.init.zeros_(layer.bias)
            else:
                layer = nn.Linear(width, d)
                nn.init.zeros_(layer.weight)
                nn.init.zeros_(layer.bias)
            layers[param_key(pos)] = layer
        return layers

    def materialize(self, task: str) -> AdapterSet:
        down, up = self.group("down", task), self.group("up", task)
        return AdapterSet(bottleneck={
            site_of(k): Bottleneck(down[k].weight, down[k].bias, up[k].weight, up[k].bias,
                                   parallel=self.parallel, scale=self.config.scale,
                                   activation=self.config.activation)
            for k in down})


class ParallelAdapter(BottleneckAdapter):
    parallel = True


register_method("adapter", AdapterConfig, BottleneckAdapter)
register_method("parallel_adapter", AdapterConfig, ParallelAdapter)
