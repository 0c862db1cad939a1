"""Hugging Face PEFT interoperability: LoRA and prompt-tuning adapters in PEFT's folder format.

A PEFT adapter folder holds `adapter_config.json` and `adapter_model.safetensors`:

- LORA: `base_model.model.<module path>.lora_A.weight` [r, in] and `.lora_B.weight`
  [out, r]; the module path is ours without the leading `lm.`; scale = lora_alpha / r
  (lora_alpha / sqrt(r) with `use_rslora`); `rank_pattern` / `alpha_pattern` are honoured;
  a LoRA on some layers only leaves the others without a delta.
- PROMPT_TUNING: `prompt_embeddings` [num_virtual_tokens * num_transformer_submodules, d];
  for seq2seq models PEFT prepends the first `num_virtual_tokens` rows to the encoder input,
  as our `[prompt | text | visual]` layout does, and never uses the others.

What an import accepts is decided by `modeling.peft_policy` (also for the registry's
`import-peft`). Only JSON and safetensors are read: pickled `adapter_model.bin` files are
refused.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from modeling.peft_policy import (
    CONFIG_NAME,
    PROMPT_KEY,
    WEIGHTS_NAME,
    LoraSite,
    PeftPlan,
    peft_files,
    plan_peft,
)
from modeling.serve_forms import AdapterSet, LowRankDelta


def _lm_linears(backbone: nn.Module) -> dict[str, nn.Linear]:
    """The backbone LM's Linear layers by our site name (`lm.` + module path)."""
    return {f"lm.{name}": m for name, m in backbone.lm.named_modules()
            if isinstance(m, nn.Linear)}


def _write(out: Path, config: dict[str, Any], tensors: dict[str, torch.Tensor]) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().to("cpu").contiguous() for k, v in tensors.items()},
              str(out / WEIGHTS_NAME))
    (out / CONFIG_NAME).write_text(json.dumps(config, indent=2, sort_keys=True))
    return out


def export_peft(adapter_set: AdapterSet, backbone: nn.Module, out_dir: str | Path, *,
                task_type: str = "SEQ_2_SEQ_LM") -> Path:
    """Write `adapter_set` (LoRA only, or a prompt only) as a PEFT adapter folder; returns it.

    Refuses (ValueError) forms PEFT cannot express: bottlenecks, prefixes, overrides, LoRA
    outside the LM, LoRA ranks or scales that differ across sites, LoRA plus a prompt.
    """
    for form in ("bottleneck", "prefix", "overrides"):
        if getattr(adapter_set, form):
            raise ValueError(f"cannot export {form} sites {sorted(getattr(adapter_set, form))[:3]} "
                             "to PEFT: only LoRA on LM Linear layers and prompts are supported")
    if adapter_set.lora and adapter_set.prompt is not None:
        raise ValueError("the adapter set holds both LoRA and a prompt; PEFT stores one method per "
                         "folder: export them separately")
    out = Path(out_dir)
    if adapter_set.prompt is not None:
        length, dim = adapter_set.prompt.shape
        if dim != backbone.config.d_model:
            raise ValueError(f"prompt width {dim} != backbone d_model {backbone.config.d_model}")
        config = {"peft_type": "PROMPT_TUNING", "task_type": task_type,
                  "num_virtual_tokens": length, "token_dim": dim,
                  "num_transformer_submodules": 1, "prompt_tuning_init": "RANDOM",
                  "base_model_name_or_path": None, "inference_mode": True}
        return _write(out, config, {"prompt_embeddings": adapter_set.prompt})
    if not adapter_set.lora:
        raise ValueError("the adapter set holds no LoRA and no prompt: nothing to export")
    linears = _lm_linears(backbone)
    peft = {site: LoraSite(site.removeprefix("lm."), d.lora_a.shape[0], d.scale)
            for site, d in sorted(adapter_set.lora.items())}
    ranks = {site: p.rank for site, p in peft.items()}
    alphas = {site: p.alpha for site, p in peft.items()}
    for site in adapter_set.lora:
        if site not in linears:
            raise ValueError(f"LoRA site {site!r} is not a Linear layer of the LM (lm.*); "
                             "PEFT can only express LoRA on the language model")
    if len(set(ranks.values())) > 1:
        raise ValueError(f"LoRA ranks differ across sites ({sorted(set(ranks.values()))}); "
                         "PEFT export expects one rank r for every site")
    if max(alphas.values()) - min(alphas.values()) > 1e-6 * max(1.0, max(alphas.values())):
        raise ValueError("LoRA scales differ across sites; PEFT export expects one lora_alpha")
    leaves = sorted({site.rsplit(".", 1)[-1] for site in adapter_set.lora})
    covers_all = {s for s in linears if s.rsplit(".", 1)[-1] in leaves} == set(adapter_set.lora)
    # Leaf names when they select exactly our sites; otherwise the exact module paths.
    targets = leaves if covers_all else sorted(s.removeprefix("lm.") for s in adapter_set.lora)
    rank = next(iter(ranks.values()))
    config = {"peft_type": "LORA", "task_type": task_type, "r": rank,
              "lora_alpha": next(iter(alphas.values())), "target_modules": targets,
              "lora_dropout": 0.0, "bias": "none", "fan_in_fan_out": False,
              "use_rslora": False, "use_dora": False, "inference_mode": True,
              "base_model_name_or_path": None, "rank_pattern": {}, "alpha_pattern": {}}
    tensors: dict[str, torch.Tensor] = {}
    for site, delta in adapter_set.lora.items():
        tensors[peft[site].key("A")], tensors[peft[site].key("B")] = delta.lora_a, delta.lora_b
    return _write(out, config, tensors)


def _lora(plan: PeftPlan, tensors: dict[str, torch.Tensor], backbone: nn.Module) -> AdapterSet:
    """The planned LoRA layers, each checked against the backbone LM's Linear."""
    linears = _lm_linears(backbone)
    lora: dict[str, LowRankDelta] = {}
    for site in plan.lora:
        if site.site not in linears:
            raise ValueError(f"tensor key {site.key('A')!r} names module {site.path!r}, which "
                             "is not a Linear layer of this backbone's LM")
        layer = linears[site.site]
        a, b = tensors[site.key("A")], tensors[site.key("B")]
        for part, tensor, want in (("A", a, (site.rank, layer.in_features)),
                                   ("B", b, (layer.out_features, site.rank))):
            if tuple(tensor.shape) != want:
                raise ValueError(f"tensor key {site.key(part)} has shape "
                                 f"{tuple(tensor.shape)}; expected {want} (r={site.rank})")
        lora[site.site] = LowRankDelta(a, b, site.scale)
    return AdapterSet(lora=lora)


def import_peft(folder: str | Path, backbone: nn.Module) -> AdapterSet:
    """Read a PEFT LORA or PROMPT_TUNING folder into serve form for `backbone`.

    What is accepted is `modeling.peft_policy.plan_peft`'s decision (the registry's
    `import-peft` asks the same); here every planned layer and width must also fit the
    backbone. Any refusal is a ValueError naming the file, field or tensor key.
    """
    config_file, weights = peft_files(Path(folder))
    tensors = load_file(str(weights))
    plan = plan_peft(json.loads(config_file.read_text()),
                     {key: tuple(t.shape) for key, t in tensors.items()})
    if plan.lora:
        return _lora(plan, tensors, backbone)
    d_model = backbone.config.d_model
    if plan.prompt_dim != d_model:
        raise ValueError(f"tensor key '{PROMPT_KEY}' is {plan.prompt_dim} wide; expected the "
                         f"backbone's d_model {d_model}")
    return AdapterSet(prompt=tensors[PROMPT_KEY][:plan.prompt_rows].clone())


__all__ = ["export_peft", "import_peft"]
