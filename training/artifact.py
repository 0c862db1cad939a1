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
from modeling.tasks import TASKS, ChoiceAnswer, TaskKind, task_prompt


def write_artifact(out_dir: str | Path, model: AdapterModel, backbone: VLBackbone,
                   parameters: dict[str, Any], metrics: dict[str, Any] | None = None,
                   choice_answer: ChoiceAnswer = ChoiceAnswer.LABEL) -> dict:
    """Write shared.safetensors, tasks/<task>.safetensors and manifest.json; returns it.
    Each multiple-choice task records the `choice_answer` form it was trained with, which
    the server scores it in."""
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
        "tasks": {task: task_entry(task, backbone.config.family, choice_answer)
                  for task in model.task_names},
        "parameters": parameters,
        "metrics": metrics or {},
    }
    return write_manifest(root, manifest)


def task_entry(task: str, family: str, choice_answer: ChoiceAnswer) -> dict[str, str]:
    """A task's manifest entry: its prompt on a backbone of `family`, and for multiple
    choice the form its answers were trained in (`ChoiceAnswer`)."""
    entry = {"prompt": task_prompt(task, family)}
    if task in TASKS and TASKS[task].kind is TaskKind.MULTIPLE_CHOICE:
        entry["choice_answer"] = ChoiceAnswer(choice_answer).value
    return entry
