"""Prefix tuning (Li & Liang, 2021): trainable keys/values prepended in every attention.

    f_i(x) = f_i([p_i : x])                                  (empirical study, Eq. 3)
    [k_i ; v_i] for all sites = MLP(Embedding(L, d)),  MLP = Linear(d, h) ─► Tanh ─►
                                 Linear(h, sites * 2 * inner) (the MLP reparameterisation)

Prefixes go into encoder self-attention, decoder self-attention and cross-attention.
Materialises into the prefix serve form: per site key, value [heads, L, head_dim].
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from modeling.methods.base import PeftMethod
from modeling.methods.registry import register_method
from modeling.serve_forms import AdapterSet, PrefixKV


@dataclass(frozen=True)
class PrefixConfig:
    length: int = 16
    hidden_dim: int = 512


class PrefixTuning(PeftMethod):
    groups = ("prefix",)

    def __init__(self, config: PrefixConfig, facts, tasks, sharing):
        if config.length < 1:
            raise ValueError(f"prefix length must be >= 1, got {config.length}")
        if not facts.attention:
            raise ValueError("prefix tuning needs attention layers with key/value inputs; "
                             "this backbone exposes none")
        super().__init__(config, facts, tasks, sharing)

    def build_group(self, group: str) -> nn.Module:
        d, cfg = self.facts.d_model, self.config
        inner = self.facts.n_heads * self.facts.head_dim
        module = nn.Module()
        module.embedding = nn.Embedding(cfg.length, d)
        module.mlp = nn.Sequential(nn.Linear(d, cfg.hidden_dim), nn.Tanh(),
                                   nn.Linear(cfg.hidden_dim, len(self.facts.attention) * 2 * inner))
        return module

    def materialize(self, task: str) -> AdapterSet:
        module = self.group("prefix", task)
        facts, length = self.facts, self.config.length
        kv = module.mlp(module.embedding.weight)  # [L, sites * 2 * d]
        kv = kv.view(length, len(facts.attention), 2, facts.n_heads, facts.head_dim)
        kv = kv.permute(1, 2, 3, 0, 4)  # [sites, 2, heads, L, head_dim]
        return AdapterSet(prefix={site: PrefixKV(kv[i, 0], kv[i, 1])
                                    for i, site in enumerate(facts.attention)})


register_method("prefix_tuning", PrefixConfig, PrefixTuning)
