"""Hyperformer (Mahabadi et al., 2021): a hypernetwork generates every adapter's weights.

Layout "vl-adapter", as VL-Adapter's code builds it (Sung et al., Sec. 3.2; its
`AdapterLayersHyperNetController` with one hypernetwork per stack), per stack (encoder,
decoder):

    z(task, layer) = LayerNorm(MLP([task_emb (512) ; layer_emb[layer] (512)]))      [8]
        MLP = Linear 1024→128 ─► ReLU ─► Linear 128→8
    for each block kind of the stack (encoder: self_attn, ffn; decoder: + cross_attn):
        Down [w, d] = G_down(z),  b_down [w] = g_down(z),  Up [d, w] = G_up(z),  b_up [d] = g_up(z)
        (each G / g one Linear from z)

One layer-id embedding per layer of the stack, shared by the block kinds of that layer; the
kinds differ by their generators. The task embeddings are shared by both stacks; they are
per task ("multiple") or one for all ("single"); everything else is shared by all tasks.
Materialises into the serial-bottleneck serve form.

`layout` names this parameterisation in configs and manifests. Artifacts written before it
(one generator set per stack, one embedding per block position) state no layout; they are
refused with one line, as their tensors do not fit this layout.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from modeling.methods.adapter import VL_ADAPTER_PLACEMENTS, adapter_width, selected_positions
from modeling.methods.base import PeftMethod
from modeling.methods.registry import register_method
from modeling.serve_forms import AdapterSet, Bottleneck

LAYOUT = "vl-adapter"


@dataclass(frozen=True)
class HyperformerConfig:
    """Sizes as in VL-Adapter's Hyperformer run: task and layer embeddings 512, MLP hidden
    128, projected embedding 8 (its `--projected_task_embedding_dim 8`), reduction 8."""

    reduction_factor: int = 8
    width: int | None = None
    task_embedding_dim: int = 512
    layer_embedding_dim: int = 512
    hidden_dim: int = 128
    projected_dim: int = 8
    placements: tuple[str, ...] = VL_ADAPTER_PLACEMENTS
    layout: str = LAYOUT

    # What a manifest written before `layout` existed holds (see `base.manifest_config`).
    FIELDS_ADDED_LATER: ClassVar[dict[str, Any]] = {"layout": "per-position"}


class BottleneckGenerator(nn.Module):
    """z [p] -> the four tensors of one bottleneck adapter (one block kind of a stack)."""

    def __init__(self, projected_dim: int, d_model: int, width: int):
        super().__init__()
        self.d_model, self.width = d_model, width
        self.down_weight = nn.Linear(projected_dim, width * d_model)
        self.down_bias = nn.Linear(projected_dim, width)
        self.up_weight = nn.Linear(projected_dim, d_model * width)
        self.up_bias = nn.Linear(projected_dim, d_model)
        nn.init.normal_(self.down_weight.weight, std=1e-2)
        for gen in (self.up_weight, self.up_bias):  # start from the frozen model
            nn.init.zeros_(gen.weight)
            nn.init.zeros_(gen.bias)

    def forward(self, z: torch.Tensor) -> Bottleneck:
        return Bottleneck(
            self.down_weight(z).view(self.width, self.d_model), self.down_bias(z),
            self.up_weight(z).view(self.d_model, self.width), self.up_bias(z))


class StackHyperNetwork(nn.Module):
    """One stack's hypernetwork: layer-id embeddings [layers, e], the task MLP and one
    generator per block kind (`kinds`)."""

    def __init__(self, config: HyperformerConfig, d_model: int, width: int, layers: int,
                 kinds: list[str]):
        super().__init__()
        self.layer_embedding = nn.Embedding(layers, config.layer_embedding_dim)
        self.task_mlp = nn.Sequential(
            nn.Linear(config.task_embedding_dim + config.layer_embedding_dim, config.hidden_dim),
            nn.ReLU(), nn.Linear(config.hidden_dim, config.projected_dim),
            nn.LayerNorm(config.projected_dim))
        self.generators = nn.ModuleDict({
            kind: BottleneckGenerator(config.projected_dim, d_model, width) for kind in kinds})

    def embed(self, task_emb: torch.Tensor, layer: int) -> torch.Tensor:
        """task_emb [t], layer index -> z [projected_dim]."""
        return self.task_mlp(torch.cat([task_emb, self.layer_embedding.weight[layer]]))


def _stack_layout(facts, positions: list[str]) -> dict[str, tuple[int, list[str]]]:
    """stack -> (its number of layers, the block kinds adapted in it, in first-seen order)."""
    layers: dict[str, int] = {}
    for name in facts.positions:
        stack, index = name.split(".")[:2]
        layers[stack] = max(layers.get(stack, 0), int(index) + 1)
    kinds: dict[str, list[str]] = {}
    for pos in positions:
        stack, kind = pos.split(".")[0], facts.positions[pos]
        if kind not in kinds.setdefault(stack, []):
            kinds[stack].append(kind)
    return {stack: (layers[stack], kinds[stack]) for stack in sorted(kinds)}


class Hyperformer(PeftMethod):
    groups = ("task_embedding",)

    def __init__(self, config: HyperformerConfig, facts, tasks, sharing):
        if config.layout != LAYOUT:
            raise ValueError(f"hyperformer layout {config.layout!r} is not built by this "
                             f"version (it builds {LAYOUT!r}, VL-Adapter's): retrain the "
                             "adapter in that layout")
        self.width = adapter_width(config, facts.d_model)
        self.positions = selected_positions(facts, config.placements)
        super().__init__(config, facts, tasks, sharing)
        self.hypernets = nn.ModuleDict({
            stack: StackHyperNetwork(config, facts.d_model, self.width, layers, kinds)
            for stack, (layers, kinds) in _stack_layout(facts, self.positions).items()})

    def build_group(self, group: str) -> nn.Module:
        return nn.ParameterDict({"vector": nn.Parameter(
            torch.randn(self.config.task_embedding_dim) * 1e-2)})

    def materialize(self, task: str) -> AdapterSet:
        task_emb = self.group("task_embedding", task)["vector"]
        z: dict[tuple[str, int], torch.Tensor] = {}  # one embedding per layer, for its kinds
        out = {}
        for pos in self.positions:
            stack, layer = pos.split(".")[0], int(pos.split(".")[1])
            hypernet = self.hypernets[stack]
            if (stack, layer) not in z:
                z[stack, layer] = hypernet.embed(task_emb, layer)
            out[pos] = hypernet.generators[self.facts.positions[pos]](z[stack, layer])
        return AdapterSet(bottleneck=out)


register_method("hyperformer", HyperformerConfig, Hyperformer)
