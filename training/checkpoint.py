"""Checkpoints for exact resume: trainable tensors, AdamW state, scheduler, RNG, sampler.

Tensors go to safetensors and everything else to JSON, so resuming never unpickles.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

STATE_FILE = "state.json"
TENSORS_FILE = "tensors.safetensors"


def _optimizer_tensors(optimizer: torch.optim.Optimizer, names: dict[int, str]
                       ) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors, scalars = {}, {}
    for param, state in optimizer.state.items():
        name = names[id(param)]
        for key, value in state.items():
            if torch.is_tensor(value):
                tensors[f"optimizer/{name}/{key}"] = value.detach().cpu().contiguous()
            else:
                scalars[f"{name}/{key}"] = value
    return tensors, scalars


def save_checkpoint(directory: Path, model: nn.Module, optimizer: torch.optim.Optimizer,
                    scheduler: torch.optim.lr_scheduler.LRScheduler, step: int,
                    extra: dict[str, Any]) -> None:
    """Write atomically: a temp folder renamed over `directory` when complete."""
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    names = {id(p): n for n, p in params.items()}
    tensors = {f"model/{n}": p.detach().cpu().contiguous() for n, p in params.items()}
    opt_tensors, opt_scalars = _optimizer_tensors(optimizer, names)
    tensors.update(opt_tensors)
    tensors["rng/torch"] = torch.get_rng_state()
    state = {"step": step, "scheduler": scheduler.state_dict(), "optimizer_scalars": opt_scalars,
             "optimizer_groups": [{k: v for k, v in g.items() if k != "params"}
                                  for g in optimizer.param_groups], **extra}
    directory.parent.mkdir(parents=True, exist_ok=True)
    temp = Path(tempfile.mkdtemp(dir=directory.parent, prefix=f".{directory.name}-"))
    save_file(tensors, temp / TENSORS_FILE)
    (temp / STATE_FILE).write_text(json.dumps(state, indent=2))
    # A directory cannot be renamed over a non-empty one: move the old one aside first, so
    # a crash at any point leaves `directory` or its `.old` copy whole (see read_state).
    old = directory.with_name(f"{directory.name}.old")
    if old.exists():
        shutil.rmtree(old)
    if directory.exists():
        os.replace(directory, old)
    os.replace(temp, directory)
    shutil.rmtree(old, ignore_errors=True)


def recover(directory: Path) -> bool:
    """Put back `directory` from its `.old` copy when a save died between the two renames;
    returns whether `directory` exists."""
    old = directory.with_name(f"{directory.name}.old")
    if not directory.exists() and old.is_dir():
        os.replace(old, directory)
    return directory.is_dir()


def read_state(directory: Path) -> dict[str, Any]:
    """The JSON state of a checkpoint (step, scheduler, extras), without loading tensors."""
    return json.loads((directory / STATE_FILE).read_text())


def _check_same_tensors(directory: Path, expected: set[str], saved: set[str]) -> None:
    """Refuse, in one line, a checkpoint whose trainable tensors are not this model's: one
    written by a build of a method whose parameterisation has changed since (the run's
    settings alone cannot tell, e.g. the hyperformer preset before VL-Adapter's layout)."""
    missing, unexpected = sorted(expected - saved), sorted(saved - expected)
    if missing or unexpected:
        raise ValueError(f"{directory} does not hold this run's trainable tensors (missing "
                         f"{missing[:3]}, unexpected {unexpected[:3]}): it was written by "
                         "another method layout; use another output folder, or delete "
                         f"{directory.parent} to start over")


def load_checkpoint(directory: Path, model: nn.Module, optimizer: torch.optim.Optimizer,
                    scheduler: torch.optim.lr_scheduler.LRScheduler) -> dict[str, Any]:
    """Restore everything `save_checkpoint` wrote; returns the JSON state (step, extras)."""
    tensors = load_file(directory / TENSORS_FILE)
    state = json.loads((directory / STATE_FILE).read_text())
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    _check_same_tensors(directory, set(params),
                        {k.split("/", 1)[1] for k in tensors if k.startswith("model/")})
    with torch.no_grad():
        for name, param in params.items():
            param.copy_(tensors[f"model/{name}"])
    for param_name, param in params.items():
        entry = {key.split("/", 2)[2]: value.to(param.device)
                 for key, value in tensors.items()
                 if key.startswith(f"optimizer/{param_name}/")}
        for key, value in state["optimizer_scalars"].items():
            owner, _, field = key.rpartition("/")
            if owner == param_name:
                entry[field] = value
        if entry:
            optimizer.state[param] = entry
    for group, saved in zip(optimizer.param_groups, state["optimizer_groups"], strict=True):
        group.update(saved)
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(tensors["rng/torch"])
    return state
