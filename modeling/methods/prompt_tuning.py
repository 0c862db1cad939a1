"""Prompt tuning (Lester et al., 2021): trainable vectors prepended to the encoder input.

    p = MLP(Embedding(L, d)),  MLP = Linear(d, 800) ─► Tanh ─► Linear(800, d)
    encoder input = [ p ; text ; visual ]          (empirical study, Eq. 2)

VL-Adapter uses L = 40 with this reparameterisation (Sung et al., Sec. 3.2).
Materialises into the prompt serve form: [L, d].
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from modeling.methods.base import PeftMethod
from modeling.methods.registry import register_method
from modeling.serve_forms import AdapterSet


@dataclass(frozen=True)
class PromptConfig:
    length: int = 40
    hidden_dim: int = 800
    reparameterize: bool = True


class PromptTuning(PeftMethod):
    groups = ("prompt",)

    def __init__(self, config: PromptConfig, facts, tasks, sharing):
        if config.length < 1:
            raise ValueError(f"prompt length must be >= 1, got {config.length}")
        super().__init__(config, facts, tasks, sharing)

    def build_group(self, group: str) -> nn.Module:
        d, cfg = self.facts.d_model, self.config
        module = nn.Module()
        module.embedding = nn.Embedding(cfg.length, d)
        nn.init.normal_(module.embedding.weight, std=0.5)
        if cfg.reparameterize:
            module.mlp = nn.Sequential(nn.Linear(d, cfg.hidden_dim), nn.Tanh(),
                                       nn.Linear(cfg.hidden_dim, d))
        return module

    def materialize(self, task: str) -> AdapterSet:
        module = self.group("prompt", task)
        vectors: torch.Tensor = module.embedding.weight
        if self.config.reparameterize:
            vectors = module.mlp(vectors)
        return AdapterSet(prompt=vectors)


register_method("prompt_tuning", PromptConfig, PromptTuning)
