"""Reading an artifact directory back into train forms, for tests that compare them.

The product reads artifacts only through the registry (`serving.adapter_store`), which
checks the fingerprint and every byte; tests also read a directory written by
`training.artifact.write_artifact` directly, before or without publishing it.
"""

from __future__ import annotations

from pathlib import Path

from safetensors.torch import load_file

from adapters_registry import FingerprintMismatch, load_artifact
from modeling.backbone import VLBackbone
from modeling.methods.base import BackboneFacts
from modeling.recipe import AdapterModel


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
