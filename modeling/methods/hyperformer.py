"""Hyperformer (Mahabadi et al., 2021): a hypernetwork generates every adapter's weights.

    [task_emb (512) ; layer_emb (512)] ─► Linear 1024→128 ─► ReLU ─► Linear 128→8
        ─► LayerNorm(8) ─► linear generators ─► Down [w, d], b_down [w], Up [d, w], b_up [d]

One hypernetwork for the encoder and one for the decoder (covering cross-attention), as
in VL-Adapter (Sung et al., Sec. 3.2); one layer-id embedding per adapter position. The
hypernetworks are shared by all tasks; the task embeddings are per task ("multiple") or
one for all ("single"). Materialises into the serial-bottleneck serve form.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from modeling.methods.adapter import VL_ADAPTER_PLACEMENTS, adapter_width, selected_positions
from modeling.methods.base import PeftMethod
from modeling.methods.registry import register_method
from modeling.serve_forms import AdapterSet, Bottleneck


@dataclass(frozen=True)
class HyperformerConfig:
    reduction_factor: int = 8
    width: int | None = None
    task_embedding_dim: int = 512
    layer_embedding_dim: int = 512
    hidden_dim: int = 128
    projected_dim: int = 8
    placements: tuple[str, ...] = VL_ADAPTER_PLACEMENTS


class HyperNetwork(nn.Module):
    """(task_emb, layer_emb) -> the four tensors of one bottleneck adapter."""

    def __init__(self, config: HyperformerConfig, d_model: int, width: int):
        super().__init__()
        self.d_model, self.width = d_model, width
        self.encoder = nn.Sequential(
            nn.Linear(config.task_embedding_dim + config.layer_embedding_dim, config.hidden_dim),
            nn.ReLU(), nn.Linear(config.hidden_dim, config.projected_dim),
            nn.LayerNorm(config.projected_dim))
        p = config.projected_dim
        self.down_weight = nn.Linear(p, width * d_model)
        self.down_bias = nn.Linear(p, width)
        self.up_weight = nn.Linear(p, d_model * width)
        self.up_bias = nn.Linear(p, d_model)
        for gen in (self.up_weight, self.up_bias):  # start from the frozen model
            nn.init.zeros_(gen.weight)
            nn.init.zeros_(gen.bias)
        nn.init.normal_(self.down_weight.weight, std=1e-2)

    def forward(self, task_emb: torch.Tensor, layer_emb: torch.Tensor) -> Bottleneck:
        z = self.encoder(torch.cat([task_emb, layer_emb]))
        return Bottleneck(
            self.down_weight(z).view(self.width, self.d_model), self.down_bias(z),
            self.up_weight(z).view(self.d_model, self.width), self.up_bias(z))


class Hyperformer(PeftMethod):
    groups = ("task_embedding",)

    def __init__(self, config: HyperformerConfig, facts, tasks, sharing):
        self.width = adapter_width(config, facts.d_model)
        self.positions = selected_positions(facts, config.placements)
        super().__init__(config, facts, tasks, sharing)
        self.layer_embedding = nn.Embedding(len(self.positions), config.layer_embedding_dim)
        self.hypernets = nn.ModuleDict({
            stack: HyperNetwork(config, facts.d_model, self.width)
            for stack in sorted({p.split(".")[0] for p in self.positions})})

    def build_group(self, group: str) -> nn.Module:
        return nn.ParameterDict({"vector": nn.Parameter(
            torch.randn(self.config.task_embedding_dim) * 1e-2)})

    def materialize(self, task: str) -> AdapterSet:
        task_emb = self.group("task_embedding", task)["vector"]
        out = {}
        for i, pos in enumerate(self.positions):
            hypernet = self.hypernets[pos.split(".")[0]]
            out[pos] = hypernet(task_emb, self.layer_embedding.weight[i])
        return AdapterSet(bottleneck=out)


register_method("hyperformer", HyperformerConfig, Hyperformer)
