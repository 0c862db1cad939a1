"""Parameter report, counted as VL-Adapter counts it.

percent = trainable / all parameters of the model that is trained. The vision tower (CLIP,
SigLIP, Florence-2's DaViT + projector) is not counted: frozen, and absent when features
are precomputed (the paper's setting). Trainable copies of backbone
tensors (LayerNorms, projection) replace their frozen originals once; further per-task
copies add to the total. Built on the meta device: no memory, instant.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from modeling.backbone import VLBackbone
from modeling.config import BackboneConfig
from modeling.families import from_config
from modeling.methods.base import BackboneFacts
from modeling.methods.full_finetuning import FullFinetuning
from modeling.methods.trainable_tensors import TrainableTensors
from modeling.recipe import AdapterModel, MethodEntry


@dataclass(frozen=True)
class ParameterReport:
    trainable: int
    total: int

    @property
    def percent(self) -> float:
        return 100.0 * self.trainable / self.total

    def to_dict(self) -> dict:
        return {"trainable": self.trainable, "total": self.total,
                "percent": round(self.percent, 4)}


def backbone_count(backbone: VLBackbone) -> int:
    """Backbone parameters of the trained model (the CLIP tower excluded)."""
    return sum(p.numel() for n, p in backbone.named_parameters() if not n.startswith("vision."))


def report(config: BackboneConfig, entries: list[MethodEntry], tasks: list[str]) -> ParameterReport:
    """Count on the meta device: trainable and total parameters of `entries` on `config`."""
    # The tower is never counted: T5 / BART backbones are built without it (any family's
    # LM and visual part); a BLIP backbone is its own class.
    spec = config if config.lm_type == "bert" else config.with_features(config.feat_dim)
    backbone = from_config(spec, device="meta")
    with torch.device("meta"):
        model = AdapterModel(entries, BackboneFacts.of(backbone), tasks)
    base = backbone_count(backbone)
    if any(isinstance(m, FullFinetuning) for m in model.methods.values()):
        return ParameterReport(trainable=base, total=base)
    trainable = model.trainable_count()
    replaced = 0
    for method in model.methods.values():
        if isinstance(method, TrainableTensors):
            replaced += sum(backbone.get_parameter(n).numel() for n in method.names)
    return ParameterReport(trainable=trainable, total=base + trainable - replaced)
