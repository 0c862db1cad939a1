"""A recipe: which methods a run trains, each with its config and sharing across tasks.

`AdapterModel` is the train form of a whole recipe over a backbone. `materialize(task)`
merges every method's serve form for that task (e.g. one shared adapter plus a task
prompt); `split_state()` gives the artifact's shared and per-task tensors.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from modeling.methods import get_method
from modeling.methods.base import (
    BackboneFacts,
    config_from_dict,
    config_to_dict,
    manifest_config,
)
from modeling.methods.full_finetuning import FullFinetuning
from modeling.serve_forms import AdapterSet


@dataclass(frozen=True)
class MethodEntry:
    """One method of a recipe; `id` prefixes its tensor names in artifacts."""

    method: str
    config: dict[str, Any] = field(default_factory=dict)
    sharing: str = "single"
    id: str | None = None

    @property
    def key(self) -> str:
        return self.id or self.method

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.key, "method": self.method, "config": self.config,
                "sharing": self.sharing}


class AdapterModel(nn.Module):
    """The trainable part of a run: one train-form module per recipe entry."""

    def __init__(self, entries: list[MethodEntry], facts: BackboneFacts, tasks: list[str],
                 backbone: nn.Module | None = None):
        super().__init__()
        if not tasks:
            raise ValueError("a recipe needs at least one task")
        keys = [e.key for e in entries]
        if len(set(keys)) != len(keys):
            raise ValueError(f"method ids must be unique, got {keys}")
        self.entries, self.task_names, self.facts = list(entries), list(tasks), facts
        self.methods = nn.ModuleDict()
        for entry in entries:
            spec = get_method(entry.method)
            config = config_from_dict(spec.config_cls, entry.config)
            if spec.method_cls is FullFinetuning:
                method = FullFinetuning(config, facts, tasks, entry.sharing, backbone=backbone)
            else:
                method = spec.method_cls(config, facts, tasks, entry.sharing)
            self.methods[entry.key] = method
        self.resolved = [MethodEntry(e.method, config_to_dict(m.config), e.sharing, e.key)
                         for e, m in zip(entries, self.methods.values(), strict=True)]

    @property
    def serveable(self) -> bool:
        return all(m.serveable for m in self.methods.values())

    def materialize(self, task: str) -> AdapterSet:
        merged = AdapterSet()
        for method in self.methods.values():
            merged = merged.merge(method.materialize(task))
        return merged

    def trainable_count(self) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    def split_state(self) -> tuple[dict[str, torch.Tensor], dict[str, dict[str, torch.Tensor]]]:
        """(shared tensors, {task: tensors}); keys are `<method id>.<parameter path>`."""
        shared: dict[str, torch.Tensor] = {}
        per_task: dict[str, dict[str, torch.Tensor]] = {t: {} for t in self.task_names}
        for key, method in self.methods.items():
            for name, param in method.named_parameters():
                if not param.requires_grad:
                    continue
                tensor = param.detach()
                parts = name.split(".")
                if parts[0] == "tasks":
                    per_task[parts[1]][f"{key}.{'.'.join(parts[2:])}"] = tensor
                else:
                    shared[f"{key}.{name}"] = tensor
        return shared, per_task

    @classmethod
    def from_artifact(cls, methods: list[dict[str, Any]], tasks: list[str], facts: BackboneFacts,
                      shared: dict[str, torch.Tensor],
                      per_task: dict[str, dict[str, torch.Tensor]]) -> AdapterModel:
        """Rebuild from an artifact's `manifest.methods` and tensors, frozen, in eval mode.

        The modules are built on the meta device and take the stored tensors (as float32)
        once their names and shapes match, so a config asking for more than the artifact
        holds is refused without allocating what it asks for. A config field the manifest
        lacks takes the value of artifacts written before it existed (`manifest_config`).
        """
        entries = [MethodEntry(m["method"],
                               manifest_config(get_method(m["method"]).config_cls,
                                               m.get("config", {})),
                               m.get("sharing", "single"), m.get("id")) for m in methods]
        with torch.device("meta"):
            model = cls(entries, facts, tasks)
        model.load_split_state(shared, per_task, assign=True)
        return model.requires_grad_(False).eval()

    def load_split_state(self, shared: dict[str, torch.Tensor],
                         per_task: dict[str, dict[str, torch.Tensor]],
                         assign: bool = False) -> None:
        """Inverse of `split_state`; missing or unexpected tensors are named in the error.

        assign: the parameters become float32 copies of the given tensors (for a model
        built on the meta device) instead of being copied into.
        """
        state = {}
        for name, tensor in shared.items():
            key, rest = name.split(".", 1)
            state[f"methods.{key}.{rest}"] = tensor
        for task, tensors in per_task.items():
            for name, tensor in tensors.items():
                key, rest = name.split(".", 1)
                state[f"methods.{key}.tasks.{task}.{rest}"] = tensor
        expected = {n: p for n, p in self.named_parameters() if p.requires_grad}
        missing, unexpected = set(expected) - set(state), set(state) - set(expected)
        if missing or unexpected:
            raise ValueError(f"adapter tensors do not fit the recipe: missing {sorted(missing)[:5]}"
                             f", unexpected {sorted(unexpected)[:5]}")
        for name, tensor in state.items():
            if tuple(tensor.shape) != tuple(expected[name].shape):
                raise ValueError(f"tensor {name} has shape {tuple(tensor.shape)}; the backbone "
                                 f"and config expect {tuple(expected[name].shape)}")
        if assign:
            state = {name: tensor.to(device="cpu", dtype=expected[name].dtype, copy=True)
                     for name, tensor in state.items()}
        self.load_state_dict(state, strict=False, assign=assign)
