"""modeling: the frozen VL backbone, every PEFT method, serve forms and the stacked bank.

The names below load on first use, so a torch-free submodule (`modeling.peft_policy`,
which the torch-free registry imports) does not pull in torch and transformers.
"""

from importlib import import_module

_HOMES = {
    "AdapterModel": "modeling.recipe", "MethodEntry": "modeling.recipe",
    "BackboneConfig": "modeling.config", "PRESETS": "modeling.config", "preset": "modeling.config",
    "RowIndex": "modeling.kernels", "AdapterSet": "modeling.serve_forms",
    "AdapterBank": "modeling.bank", "build_bank": "modeling.bank",
    "VLBackbone": "modeling.backbone", "VLBatch": "modeling.backbone",
    "load_backbone": "modeling.families",
}


def __getattr__(name: str):
    if name not in _HOMES:
        raise AttributeError(f"module 'modeling' has no attribute {name!r}")
    return getattr(import_module(_HOMES[name]), name)


__all__ = sorted(_HOMES)
