"""Full fine-tuning, the baseline: a trainable copy of the whole LM and visual projection
(`VLBackbone.finetuned_parts`; BLIP: its text encoder and decoder).

The frozen backbone is copied, never written; the vision tower stays frozen, as in
VL-Adapter. A fully fine-tuned model has no small serve form: serve it as a backbone.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

from modeling.methods.base import PeftMethod
from modeling.methods.registry import register_method
from modeling.serve_forms import AdapterSet


@dataclass(frozen=True)
class FullFinetuningConfig:
    pass


class FullFinetuning(PeftMethod):
    groups = ()
    serveable = False

    def __init__(self, config: FullFinetuningConfig, facts, tasks, sharing, backbone=None):
        if sharing != "single":
            raise ValueError("full fine-tuning trains one model for all tasks: sharing 'single'")
        super().__init__(config, facts, tasks, sharing)
        self.model = None
        if backbone is not None:
            self.model = copy.deepcopy(backbone)
            for part in self.model.finetuned_parts():
                part.requires_grad_(True)

    def materialize(self, task: str) -> AdapterSet:
        raise ValueError("full fine-tuning produces a whole model, not an adapter: "
                         "save it with save_pretrained and serve it as the backbone")


register_method("full_finetuning", FullFinetuningConfig, FullFinetuning)
