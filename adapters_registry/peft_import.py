"""Turn a Hugging Face PEFT folder (LoRA or prompt tuning) into a vladapter artifact.

A PEFT folder holds ``adapter_config.json`` and ``adapter_model.safetensors``
(``adapter_model.bin`` is a pickle and is refused). What is accepted is decided by
`modeling.peft_policy` (torch-free; `modeling.peft_format.import_peft` asks the same).
Tensors are copied byte for byte, so every dtype survives, and land in
``shared.safetensors`` (sharing ``single``)::

    base_model.model.<path>.lora_A.weight  [r, in]   ->  lora.shared.lora_A.lm__<path>
    base_model.model.<path>.lora_B.weight  [out, r]  ->  lora.shared.lora_B.lm__<path>
    prompt_embeddings   [n, dim]  ->  prompt_tuning.shared.prompt.embedding.weight

(the train-form names of `modeling.methods.lora` and `modeling.methods.prompt_tuning`,
built by `modeling.tensor_names`, so the artifact loads into `AdapterModel`). The
LoRA method names its layers exactly (`targets: ["lm.<path>", ...]`), so a LoRA on some
layers only is served with no delta elsewhere; layers whose rank or scale differ
(`rank_pattern`, `alpha_pattern`) form further methods `lora_2`, `lora_3`, ... A seq2seq
prompt keeps its first ``n`` rows: the only ones PEFT prepends (to the encoder input).
A PEFT folder has no base-model fingerprint nor backbone family; the caller supplies both
(``train-adapter backbone info`` prints them), and the manifest records the family. Each
task's prompt is the one `modeling.tasks` defines for that family (``nlvr: `` for nlvr2,
Florence-2's ``<VQA>`` for vqa), as a trained artifact records.
"""

from __future__ import annotations

import os
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
from adapters_registry.strict_json import load_object
from adapters_registry.tensorfile import (
    Header,
    TensorEntry,
    encode_header,
    read_header,
    write_tensors,
)
from modeling.peft_policy import (
    WEIGHTS_NAME,
    LoraSite,
    PeftPlan,
    PeftRefused,
    peft_files,
    plan_peft,
)
from modeling.tasks import BACKBONE_FAMILIES, DEFAULT_FAMILY, task_prompt
from modeling.tensor_names import param_key, shared_tensor_name

Plan = tuple[list[dict[str, Any]], dict[str, TensorEntry]]


def _target(name: str, dtype: str, shape: tuple[int, ...]) -> TensorEntry:
    return TensorEntry(name, dtype, shape, 0, 0)


def _lora_methods(plan: PeftPlan, header: Header) -> Plan:
    """One `lora` method per (rank, scale) group, each naming its layers exactly, so a
    LoRA on some layers (or with rank / alpha patterns) loads as it was trained."""
    entries = {entry.name: entry for entry in header.tensors}
    groups: dict[tuple[int, float], list[LoraSite]] = {}
    for site in plan.lora:
        groups.setdefault((site.rank, site.scale), []).append(site)
    methods, keep = [], {}
    for number, sites in enumerate(groups.values(), start=1):
        method_id = "lora" if number == 1 else f"lora_{number}"
        methods.append({"id": method_id, "method": "lora", "sharing": "single", "config": {
            "rank": sites[0].rank, "alpha": sites[0].alpha, "dropout": plan.dropout,
            "targets": [site.site for site in sites]}})
        for site in sites:
            for part in "AB":
                entry = entries[site.key(part)]
                name = shared_tensor_name(method_id, f"lora_{part}", param_key(site.site))
                keep[entry.name] = _target(name, entry.dtype, entry.shape)
    return methods, keep


def _prompt_method(plan: PeftPlan, header: Header) -> Plan:
    entry = header.tensors[0]
    name = shared_tensor_name("prompt_tuning", "prompt", "embedding.weight")
    keep = {entry.name: _target(name, entry.dtype, (plan.prompt_rows, plan.prompt_dim))}
    method = {"id": "prompt_tuning", "method": "prompt_tuning", "sharing": "single",
              "config": {"length": plan.prompt_rows, "reparameterize": False}}
    return [method], keep


def _check_inputs(fingerprint: str, family: str, tasks: tuple[str, ...]) -> None:
    if not FINGERPRINT_PATTERN.fullmatch(fingerprint):
        raise InvalidArtifact(f"fingerprint {fingerprint!r} must be 'sha256:<64 lower-case hex>'")
    if family not in BACKBONE_FAMILIES:
        raise InvalidArtifact(f"family {family!r} is not a backbone family; expected one of "
                              f"{', '.join(BACKBONE_FAMILIES)}")
    if not tasks or len(set(tasks)) != len(tasks):
        raise InvalidArtifact(f"tasks must be distinct and at least one, got {list(tasks)}")
    for task in tasks:
        if not TASK_PATTERN.fullmatch(task):
            raise InvalidArtifact(
                f"invalid task name {task!r}: must match [a-z0-9][a-z0-9_]{{0,31}}"
            )


def _plan(config: object, header: Header) -> Plan:
    """What `modeling.peft_policy` accepts, as artifact methods and renamed tensors."""
    try:
        plan = plan_peft(config, {entry.name: entry.shape for entry in header.tensors})
    except PeftRefused as exc:
        raise InvalidArtifact(str(exc)) from None
    return _lora_methods(plan, header) if plan.lora else _prompt_method(plan, header)


def _manifest_fields(
    config: dict[str, Any], plan: Plan, fingerprint: str, family: str, tasks: tuple[str, ...]
) -> dict[str, Any]:
    methods, keep = plan
    return {
        "format_version": 1,
        "base_model": {
            "fingerprint": fingerprint,
            "family": family,
            "peft_base_model": config.get("base_model_name_or_path"),
        },
        "methods": methods,
        "tasks": {task: {"prompt": task_prompt(task, family)} for task in tasks},
        "parameters": {"trainable": sum(target.numel for target in keep.values())},
        "metrics": {},
        "created_by": "adapter-registry import-peft",
    }


def import_peft(
    peft_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    fingerprint: str,
    tasks: tuple[str, ...] = ("caption",),
    family: str = DEFAULT_FAMILY,
) -> dict[str, Any]:
    """Write the artifact of a PEFT folder to ``out_dir`` and return its manifest.

    ``out_dir`` must not exist; it appears complete or not at all. ``fingerprint`` names the
    backbone the adapter belongs to and ``family`` that backbone's family
    (`BackboneConfig.family`), whose task prompts the manifest records; every task gets the
    same (shared) tensors. What is accepted is `modeling.peft_policy.plan_peft`'s decision;
    a refusal is InvalidArtifact.
    """
    folder, out, tasks = Path(peft_dir), Path(out_dir), tuple(tasks)
    _check_inputs(fingerprint, family, tasks)
    try:
        config_file, weights = peft_files(folder)
    except PeftRefused as exc:
        raise InvalidArtifact(str(exc)) from None
    if out.exists():
        raise RegistryError(f"{out} already exists")
    config = load_object(config_file.read_bytes(), config_file.name)
    out.parent.mkdir(parents=True, exist_ok=True)
    temp = out.parent / temp_name(out.name)
    try:
        with open(weights, "rb") as source:
            header = read_header(source, weights.stat().st_size, WEIGHTS_NAME)
            plan = _plan(config, header)
            (temp / "tasks").mkdir(parents=True)
            with open(temp / SHARED, "wb") as destination:
                write_tensors(destination, source, header, plan[1])
        for task in tasks:
            (temp / task_file(task)).write_bytes(encode_header([]))
        manifest = write_manifest(temp, _manifest_fields(config, plan, fingerprint, family, tasks))
        os.rename(temp, out)
    finally:
        shutil.rmtree(temp, ignore_errors=True)
    return manifest
