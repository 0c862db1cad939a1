"""Write adapter artifacts (docs/artifact-format.md) from a recipe's train forms.

The files hold only trainable tensors; `serving.adapter_store` reads them back through the
registry (which checks the backbone fingerprint) and rebuilds each method from the
manifest's configs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from safetensors.torch import save_file

from adapters_registry.artifact import FORMAT_VERSION, write_manifest
from modeling.backbone import VLBackbone
from modeling.recipe import AdapterModel
from modeling.tasks import task_prompt


def write_artifact(out_dir: str | Path, model: AdapterModel, backbone: VLBackbone,
                   parameters: dict[str, Any], metrics: dict[str, Any] | None = None) -> dict:
    """Write shared.safetensors, tasks/<task>.safetensors and manifest.json; returns it."""
    root = Path(out_dir)
    (root / "tasks").mkdir(parents=True, exist_ok=True)
    shared, per_task = model.split_state()
    save_file({k: v.contiguous() for k, v in shared.items()}, root / "shared.safetensors")
    for task, tensors in per_task.items():
        save_file({k: v.contiguous() for k, v in tensors.items()},
                  root / "tasks" / f"{task}.safetensors")
    manifest = {
        "format_version": FORMAT_VERSION,
        "base_model": {"fingerprint": backbone.fingerprint(), "lm_type": backbone.config.lm_type,
                       "preset": backbone.config.preset},
        "methods": [entry.to_dict() for entry in model.resolved],
        "tasks": {task: {"prompt": task_prompt(task, backbone.config.family)}
                  for task in model.task_names},
        "parameters": parameters,
        "metrics": metrics or {},
    }
    return write_manifest(root, manifest)
