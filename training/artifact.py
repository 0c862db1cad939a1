"""Write and read adapter artifacts (docs/artifact-format.md) for a recipe's train forms.

The files hold only trainable tensors; a loader rebuilds each method from the manifest's
configs over a backbone whose fingerprint must match the one the artifact was trained on.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from safetensors.torch import load_file, save_file

from adapters_registry.artifact import load_artifact, write_manifest
from modeling.backbone import VLBackbone
from modeling.methods.base import BackboneFacts
from modeling.recipe import AdapterModel
from modeling.tasks import task_prompt

FORMAT_VERSION = 1


class FingerprintMismatch(ValueError):
    """The artifact was trained on another backbone."""


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


def load_adapter_model(artifact_dir: str | Path, backbone: VLBackbone,
                       fingerprint: str | None = None) -> AdapterModel:
    """Rebuild the train forms of an artifact over `backbone` and load its tensors.

    fingerprint: the backbone's fingerprint if already known (computing it reads every
    weight); an artifact trained on another backbone raises FingerprintMismatch, and a
    malformed or altered one `adapters_registry.errors.InvalidArtifact`.
    """
    root = Path(artifact_dir)
    manifest = load_artifact(root).manifest  # strict JSON, every file's size and sha256
    ours = fingerprint or backbone.fingerprint()
    theirs = manifest["base_model"]["fingerprint"]
    if theirs != ours:
        raise FingerprintMismatch(f"adapter {root} was trained on backbone {theirs}, "
                                  f"but this backbone is {ours}")
    tasks = list(manifest["tasks"])
    shared = load_file(root / "shared.safetensors")
    per_task = {task: load_file(root / "tasks" / f"{task}.safetensors") for task in tasks}
    return AdapterModel.from_artifact(manifest["methods"], tasks, BackboneFacts.of(backbone),
                                      shared, per_task)
