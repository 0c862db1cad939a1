"""LoRA (Hu et al., 2021): a low-rank delta on chosen Linear layers.

    x ──► W (frozen) ─────────────┐
    │                             (+) ──► y
    └──► A [r, in] ──► B [out, r] ┘ * alpha / r

VL-Adapter uses rank 128, alpha 32 on the query and value projections of every attention
(self and cross). B starts at zero, so training starts from the frozen model.
Under "half_shared", B (the up-projection) is shared and A is per task.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from modeling.methods.base import PeftMethod
from modeling.methods.registry import register_method
from modeling.serve_forms import AdapterSet, LowRankDelta
from modeling.sites import LM_HEAD, TARGET_ALIASES, is_target
from modeling.tensor_names import param_key, site_of


def lora_sites(facts, targets: tuple[str, ...]) -> list[str]:
    """Paths of the LM's Linear layers named by `targets`: a canonical or family name picks
    that layer in every block, a site name (`lm.<module path>`) picks one layer.

    A name must match a Linear this LM has: a gated FFN (FLAN-T5: `wi_0`, `wi_1`) has no
    `wi`, so `ffn_in` is refused there rather than silently adapting nothing.
    """
    aliases = TARGET_ALIASES[facts.lm_type]
    exact = {t for t in targets if t.startswith("lm.")}
    wanted = {aliases.get(t, t) for t in targets if t not in exact}
    # Linears of the blocks (the LM head only by its site name, as before).
    blocks = [name for name in facts.linear_shapes if name.startswith("lm.")
              and name != LM_HEAD[facts.lm_type]]
    present = {name.rsplit(".", 1)[-1] for name in blocks}

    def found(alias: str) -> bool:
        return any(is_target(name, alias) for name in blocks)

    unknown = {t for t in targets if (t in exact and t not in facts.linear_shapes)
               or (t not in exact and not found(aliases.get(t, t)))}
    if unknown:
        names = sorted(a for a, alias in aliases.items() if found(alias))
        raise ValueError(f"unknown LoRA target(s) {sorted(unknown)[:3]} for this "
                         f"{facts.lm_type} LM; expected some of {names} or "
                         f"{sorted(present)} or Linear layers of the LM "
                         "('lm.<module path>')")
    return [name for name in facts.linear_shapes if name.startswith("lm.") and
            (name in exact or any(is_target(name, alias) for alias in wanted))]


def check_lora_rank(rank: int, site: str, shape: tuple[int, int]) -> None:
    """The one bound on a LoRA rank, for configs and serve forms alike: 1 <= rank <=
    min(out, in) of the Linear at `site` (shape (out, in)); a larger rank adds only zeros."""
    out_f, in_f = shape
    if rank < 1:
        raise ValueError(f"lora rank must be >= 1, got {rank} (layer {site})")
    if rank > min(out_f, in_f):
        raise ValueError(f"lora rank {rank} is larger than layer {site} ({out_f}x{in_f}); "
                         f"expected rank <= {min(out_f, in_f)}")


@dataclass(frozen=True)
class LoraConfig:
    """rank: r; alpha: scale numerator (delta scaled by alpha / r); dropout on the LoRA
    input while training; targets: canonical names (q, k, v, o, ffn_in, ffn_out), or
    site names `lm.<module path>` for a LoRA on some layers only (PEFT imports)."""

    rank: int = 8
    alpha: float = 32.0
    dropout: float = 0.0
    targets: tuple[str, ...] = ("q", "v")


class Lora(PeftMethod):
    groups = ("lora_A", "lora_B")
    half_shared_groups = ("lora_B",)

    def __init__(self, config: LoraConfig, facts, tasks, sharing):
        sites = lora_sites(facts, config.targets)
        if not sites:
            raise ValueError(f"lora targets {list(config.targets)} match no Linear layer")
        for site in sites:
            check_lora_rank(config.rank, site, facts.linear_shapes[site])
        self.sites = sites
        super().__init__(config, facts, tasks, sharing)

    def build_group(self, group: str) -> nn.Module:
        params = nn.ParameterDict()
        for site in self.sites:
            out_f, in_f = self.facts.linear_shapes[site]
            if group == "lora_A":
                weight = torch.empty(self.config.rank, in_f)
                nn.init.kaiming_uniform_(weight, a=math.sqrt(5))
            else:
                weight = torch.zeros(out_f, self.config.rank)
            params[param_key(site)] = nn.Parameter(weight)
        return params

    def materialize(self, task: str) -> AdapterSet:
        a, b = self.group("lora_A", task), self.group("lora_B", task)
        scale = self.config.alpha / self.config.rank
        dropout = self.config.dropout if self.training else 0.0
        return AdapterSet(lora={site_of(k): LowRankDelta(a[k], b[k], scale, dropout)
                                  for k in a})


register_method("lora", LoraConfig, Lora)
