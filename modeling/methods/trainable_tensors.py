"""Backbone tensors trained alongside a method, as per-set copies (serve form: overrides).

VL-Adapter trains the LayerNorms with adapters, Compacter and Hyperformer, the biases with
LoRA, and always the visual projection (Sung et al., Sec. 3.1); the empirical study also
tunes the "final classifier" (the LM head). The frozen tensors are copied, never written.

VL-Adapter's code unfreezes "the biases" with LoRA by name: every parameter whose name holds
`bias`, which takes the LayerNorms' biases (not their weights) along with the Linear layers'.
`biases` selects the Linear biases and `layer_norm_biases` the LayerNorm biases, so the LoRA
presets take both, and an artifact trained before `layer_norm_biases` existed (which lacks
the field, read as False) still loads as it was trained.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from modeling.methods.base import PeftMethod
from modeling.methods.registry import register_method
from modeling.serve_forms import AdapterSet
from modeling.sites import LM_HEAD
from modeling.tensor_names import param_key, site_of


@dataclass(frozen=True)
class TrainableTensorsConfig:
    layer_norms: bool = False
    biases: bool = False
    layer_norm_biases: bool = False
    visual_projection: bool = True
    lm_head: bool = False


def selected_tensors(config: TrainableTensorsConfig, facts) -> list[str]:
    """Names of the backbone tensors this config trains (CLIP tower never included)."""
    names = set()
    norms = tuple(facts.layer_norms)
    for name in facts.frozen:
        module = name.rsplit(".", 1)[0]
        in_lm_norm = module in norms and not name.startswith("visual.")
        if in_lm_norm and (config.layer_norms or
                           (config.layer_norm_biases and name.endswith(".bias"))):
            names.add(name)
        if config.biases and name.startswith("lm.") and name.endswith(".bias") and \
                module in facts.linear_shapes:
            names.add(name)
        if config.visual_projection and name.startswith("visual."):
            names.add(name)
    if config.lm_head:
        names.add(f"{LM_HEAD[facts.lm_type]}.weight")
    return sorted(names)


def _projection_only_without_one(config: TrainableTensorsConfig, facts) -> bool:
    """Whether `config` asks for the visual projection alone on a backbone that has none
    (Florence-2's identity): the recipes' "always the visual projection" then trains
    nothing, and the recipe still builds."""
    asks_only_projection = config.visual_projection and not (
        config.layer_norms or config.biases or config.lm_head)
    return asks_only_projection and not any(n.startswith("visual.") for n in facts.frozen)


class TrainableTensors(PeftMethod):
    groups = ("tensors",)

    def __init__(self, config: TrainableTensorsConfig, facts, tasks, sharing):
        self.names = selected_tensors(config, facts)
        if not self.names and not _projection_only_without_one(config, facts):
            raise ValueError(f"{config} selects no backbone tensor")
        super().__init__(config, facts, tasks, sharing)

    def build_group(self, group: str) -> nn.Module:
        return nn.ParameterDict({
            param_key(name): nn.Parameter(self.facts.frozen[name].detach().clone())
            for name in self.names})

    def materialize(self, task: str) -> AdapterSet:
        tensors = self.group("tensors", task)
        return AdapterSet(overrides={site_of(k): v for k, v in tensors.items()})


register_method("trainable_tensors", TrainableTensorsConfig, TrainableTensors)
