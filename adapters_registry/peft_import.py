"""Turn a Hugging Face PEFT folder (LoRA or prompt tuning) into a vladapter artifact.

A PEFT folder holds ``adapter_config.json`` and ``adapter_model.safetensors``
(``adapter_model.bin`` is a pickle and is refused). Tensors are copied byte for byte, so
every dtype survives, and land in ``shared.safetensors`` (sharing ``single``)::

    base_model.model.<path>.lora_A.weight  [r, in]   ->  lora.shared.lora_A.lm__<path>
    base_model.model.<path>.lora_B.weight  [out, r]  ->  lora.shared.lora_B.lm__<path>
    prompt_embeddings   [n, dim]  ->  prompt_tuning.shared.prompt.embedding.weight

(the train-form names of `modeling.methods.lora` and `modeling.methods.prompt_tuning`,
with `.` in module paths written as `__`, so the artifact loads into `AdapterModel`).

PEFT prompt tuning on a seq2seq model learns ``2 n`` vectors: the first ``n`` are prepended
to the encoder input, the rest to the decoder input. vladapter's prompt form is encoder-only,
so such a folder is imported only with ``encoder_prompt_only=True`` (the decoder half is
dropped). A PEFT folder has no base-model fingerprint; the caller supplies it.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from typing import Any

from adapters_registry.artifact import (
    FINGERPRINT_PATTERN,
    SHARED,
    TASK_PATTERN,
    task_file,
    write_manifest,
)
from adapters_registry.errors import InvalidArtifact, RegistryError
from adapters_registry.storage import temp_name
from adapters_registry.tensorfile import (
    Header,
    TensorEntry,
    encode_header,
    loads_strict,
    read_header,
    write_tensors,
)

PEFT_CONFIG = "adapter_config.json"
PEFT_WEIGHTS = "adapter_model.safetensors"
LORA_KEY = re.compile(r"base_model\.model\.(?P<path>.+)\.(?P<part>lora_[AB])\.weight")
UNSUPPORTED_LORA_OPTIONS = (
    "use_dora",
    "use_rslora",
    "fan_in_fan_out",
    "rank_pattern",
    "alpha_pattern",
)
BUILTIN_PROMPTS = {"nlvr2": "nlvr: "}

Plan = tuple[dict[str, Any], dict[str, TensorEntry]]


def _target(name: str, dtype: str, shape: tuple[int, ...]) -> TensorEntry:
    return TensorEntry(name, dtype, shape, 0, 0)


def _lora_plan(config: dict[str, Any], header: Header) -> Plan:
    for option in UNSUPPORTED_LORA_OPTIONS:
        if config.get(option):
            raise InvalidArtifact(f"{PEFT_CONFIG}: {option} is not supported by import-peft")
    rank = config["r"]
    keep, parts_by_module = {}, {}
    for entry in header.tensors:
        match = LORA_KEY.fullmatch(entry.name)
        if match is None:
            raise InvalidArtifact(
                f"{PEFT_WEIGHTS}: unsupported tensor {entry.name!r} "
                "(only lora_A and lora_B weights are imported)"
            )
        path, part = match["path"], match["part"]
        rank_axis = 0 if part == "lora_A" else 1
        if len(entry.shape) != 2 or entry.shape[rank_axis] != rank:
            raise InvalidArtifact(
                f"{PEFT_WEIGHTS}: {entry.name} has shape {list(entry.shape)}, expected rank {rank}"
            )
        site_key = f"lm.{path}".replace(".", "__")
        keep[entry.name] = _target(f"lora.shared.{part}.{site_key}", entry.dtype, entry.shape)
        parts_by_module.setdefault(path, set()).add(part)
    unpaired = sorted(p for p, parts in parts_by_module.items() if len(parts) != 2)
    if not keep or unpaired:
        raise InvalidArtifact(
            f"{PEFT_WEIGHTS}: needs lora_A and lora_B for every module "
            f"(unpaired: {unpaired or 'no LoRA tensors at all'})"
        )
    method_config = {
        "rank": rank,
        "alpha": config["lora_alpha"],
        "dropout": config.get("lora_dropout", 0.0),
        "targets": sorted({path.rsplit(".", 1)[-1] for path in parts_by_module}),
    }
    return {"id": "lora", "method": "lora", "config": method_config, "sharing": "single"}, keep


def _prompt_plan(config: dict[str, Any], header: Header, encoder_prompt_only: bool) -> Plan:
    length, dim = config["num_virtual_tokens"], config["token_dim"]
    submodules = config.get("num_transformer_submodules") or 1
    names = [entry.name for entry in header.tensors]
    if names != ["prompt_embeddings"]:
        raise InvalidArtifact(f"{PEFT_WEIGHTS}: expected only 'prompt_embeddings', got {names}")
    entry = header.tensors[0]
    if entry.shape != (length * submodules, dim):
        raise InvalidArtifact(
            f"{PEFT_WEIGHTS}: prompt_embeddings has shape {list(entry.shape)}, "
            f"expected {[length * submodules, dim]}"
        )
    if submodules != 1 and not encoder_prompt_only:
        raise InvalidArtifact(
            f"{PEFT_CONFIG}: this prompt also prepends {length} vectors to the decoder, which "
            "vladapter does not support; pass --encoder-prompt-only to import the encoder half"
        )
    keep = {entry.name: _target("prompt_tuning.shared.prompt.embedding.weight", entry.dtype,
                                (length, dim))}
    method = {
        "id": "prompt_tuning",
        "method": "prompt_tuning",
        "config": {"length": length, "reparameterize": False},
        "sharing": "single",
    }
    return method, keep


def _check_inputs(folder: Path, fingerprint: str, tasks: tuple[str, ...]) -> None:
    if not FINGERPRINT_PATTERN.fullmatch(fingerprint):
        raise InvalidArtifact(f"fingerprint {fingerprint!r} must be 'sha256:<64 lower-case hex>'")
    if not tasks or len(set(tasks)) != len(tasks):
        raise InvalidArtifact(f"tasks must be distinct and at least one, got {list(tasks)}")
    for task in tasks:
        if not TASK_PATTERN.fullmatch(task):
            raise InvalidArtifact(
                f"invalid task name {task!r}: must match [a-z0-9][a-z0-9_]{{0,31}}"
            )
    if not (folder / PEFT_CONFIG).is_file():
        raise InvalidArtifact(f"{folder}: no {PEFT_CONFIG}; not a PEFT adapter folder")
    if not (folder / PEFT_WEIGHTS).is_file():
        pickled = " (adapter_model.bin is a pickle and is refused)"
        hint = pickled if (folder / "adapter_model.bin").exists() else ""
        raise InvalidArtifact(f"{folder}: no {PEFT_WEIGHTS}{hint}")


def _plan(config: dict[str, Any], header: Header, encoder_prompt_only: bool) -> Plan:
    try:
        peft_type = config["peft_type"]
        if peft_type == "LORA":
            return _lora_plan(config, header)
        if peft_type == "PROMPT_TUNING":
            return _prompt_plan(config, header, encoder_prompt_only)
    except (KeyError, TypeError) as exc:
        raise InvalidArtifact(f"{PEFT_CONFIG}: missing or invalid field {exc}") from None
    raise InvalidArtifact(
        f"{PEFT_CONFIG}: peft_type {peft_type!r} is not supported (LORA and PROMPT_TUNING are)"
    )


def _manifest_fields(
    config: dict[str, Any], plan: Plan, fingerprint: str, tasks: tuple[str, ...]
) -> dict[str, Any]:
    method, keep = plan
    return {
        "format_version": 1,
        "base_model": {
            "fingerprint": fingerprint,
            "peft_base_model": config.get("base_model_name_or_path"),
        },
        "methods": [method],
        "tasks": {task: {"prompt": BUILTIN_PROMPTS.get(task, f"{task}: ")} for task in tasks},
        "parameters": {"trainable": sum(target.numel for target in keep.values())},
        "metrics": {},
        "created_by": "adapter-registry import-peft",
    }


def import_peft(
    peft_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    fingerprint: str,
    tasks: tuple[str, ...] = ("caption",),
    encoder_prompt_only: bool = False,
) -> dict[str, Any]:
    """Write the artifact of a PEFT folder to ``out_dir`` and return its manifest.

    ``out_dir`` must not exist; it appears complete or not at all. ``fingerprint`` names the
    backbone the adapter belongs to; every task gets the same (shared) tensors.
    """
    folder, out, tasks = Path(peft_dir), Path(out_dir), tuple(tasks)
    _check_inputs(folder, fingerprint, tasks)
    if out.exists():
        raise RegistryError(f"{out} already exists")
    config = loads_strict((folder / PEFT_CONFIG).read_bytes())
    if not isinstance(config, dict):
        raise InvalidArtifact(f"{PEFT_CONFIG}: must be a JSON object")
    weights = folder / PEFT_WEIGHTS
    out.parent.mkdir(parents=True, exist_ok=True)
    temp = out.parent / temp_name(out.name)
    try:
        with open(weights, "rb") as source:
            header = read_header(source, weights.stat().st_size, PEFT_WEIGHTS)
            plan = _plan(config, header, encoder_prompt_only)
            (temp / "tasks").mkdir(parents=True)
            with open(temp / SHARED, "wb") as destination:
                write_tensors(destination, source, header, plan[1])
        for task in tasks:
            (temp / task_file(task)).write_bytes(encode_header([]))
        manifest = write_manifest(temp, _manifest_fields(config, plan, fingerprint, tasks))
        os.rename(temp, out)
    finally:
        shutil.rmtree(temp, ignore_errors=True)
    return manifest
