"""modeling: the frozen VL backbone, every PEFT method, serve forms and the stacked bank."""

from modeling.backbone import VLBackbone, VLBatch
from modeling.bank import StackedWeights, stack_weights
from modeling.config import PRESETS, BackboneConfig, preset
from modeling.kernels import RowIndex
from modeling.recipe import AdapterModel, MethodEntry
from modeling.serve_forms import ServeWeights

__all__ = ["AdapterModel", "BackboneConfig", "MethodEntry", "PRESETS", "RowIndex",
           "ServeWeights", "StackedWeights", "VLBackbone", "VLBatch", "preset", "stack_weights"]
