"""Compacter (Mahabadi et al., 2021): bottleneck adapters with PHM (Kronecker) weights.

    W [out, in] = sum_i  A_i [n, n]  ⊗  B_i [out/n, in/n]      (B_i = s_i t_i^T if low-rank)

The rules A_i may be shared by every layer (`shared_phm_rule`). VL-Adapter uses n = 2 and
drops the low-rank factorisation "for trading performance" (Sung et al., Sec. 4).
Materialises into the serial-bottleneck serve form.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from modeling.methods.adapter import VL_ADAPTER_PLACEMENTS, adapter_width, selected_positions
from modeling.methods.base import PeftMethod
from modeling.methods.registry import register_method
from modeling.serve_forms import AdapterSet, Bottleneck, check_activation
from modeling.tensor_names import param_key, site_of


@dataclass(frozen=True)
class CompacterConfig:
    reduction_factor: int = 8
    width: int | None = None
    phm_dim: int = 2
    shared_phm_rule: bool = True
    low_rank: bool = False
    phm_rank: int = 1
    activation: str = "relu"
    placements: tuple[str, ...] = VL_ADAPTER_PLACEMENTS


def kronecker_sum(rules: torch.Tensor, factors: torch.Tensor) -> torch.Tensor:
    """rules [n, n, n], factors [n, out/n, in/n] -> sum_i kron(rules[i], factors[i]) [out, in]."""
    n, rows, cols = factors.shape
    blocks = torch.einsum("iab,icd->acbd", rules, factors)  # [n, rows, n, cols]
    return blocks.reshape(n * rows, n * cols)


class Compacter(PeftMethod):
    groups = ("rule", "down", "up")
    half_shared_groups = ("rule", "up")

    def __init__(self, config: CompacterConfig, facts, tasks, sharing):
        check_activation(config.activation)
        self.width = adapter_width(config, facts.d_model)
        n = config.phm_dim
        if n < 1 or facts.d_model % n or self.width % n:
            raise ValueError(f"phm_dim {n} must divide d_model {facts.d_model} and the adapter "
                             f"width {self.width}")
        self.positions = selected_positions(facts, config.placements)
        super().__init__(config, facts, tasks, sharing)

    def _factors(self, rows: int, cols: int) -> nn.ParameterDict:
        n, r = self.config.phm_dim, self.config.phm_rank
        if self.config.low_rank:
            return nn.ParameterDict({"s": nn.Parameter(torch.randn(n, rows, r) * 1e-2),
                                     "t": nn.Parameter(torch.randn(n, r, cols) * 1e-2)})
        return nn.ParameterDict({"b": nn.Parameter(torch.randn(n, rows, cols) * 1e-2)})

    def build_group(self, group: str) -> nn.Module:
        n, d, width = self.config.phm_dim, self.facts.d_model, self.width
        if group == "rule":
            keys = ["all"] if self.config.shared_phm_rule else \
                [param_key(p) for p in self.positions]
            return nn.ParameterDict({
                f"{k}__{side}": nn.Parameter(torch.randn(n, n, n) * 0.1 + torch.eye(n))
                for k in keys for side in ("down", "up")})
        rows, cols = (width // n, d // n) if group == "down" else (d // n, width // n)
        layers = nn.ModuleDict()
        for pos in self.positions:
            factors = self._factors(rows, cols)
            if group == "up":  # start from the frozen model: the up-projection is zero
                nn.init.zeros_(factors["t"] if self.config.low_rank else factors["b"])
            factors["bias"] = nn.Parameter(torch.zeros(width if group == "down" else d))
            layers[param_key(pos)] = factors
        return layers

    def _weight(self, factors: nn.ParameterDict, rules: torch.Tensor) -> torch.Tensor:
        b = factors["s"] @ factors["t"] if self.config.low_rank else factors["b"]
        return kronecker_sum(rules, b)

    def materialize(self, task: str) -> AdapterSet:
        rules, down, up = (self.group(g, task) for g in ("rule", "down", "up"))
        out = {}
        for key in down:
            rule_key = "all" if self.config.shared_phm_rule else key
            out[site_of(key)] = Bottleneck(
                self._weight(down[key], rules[f"{rule_key}__down"]), down[key]["bias"],
                self._weight(up[key], rules[f"{rule_key}__up"]), up[key]["bias"],
                activation=self.config.activation)
        return AdapterSet(bottleneck=out)


register_method("compacter", CompacterConfig, Compacter)
