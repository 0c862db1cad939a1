"""Hugging Face PEFT interoperability: LoRA and prompt-tuning adapters in PEFT's folder format.

A PEFT adapter folder holds `adapter_config.json` and `adapter_model.safetensors`:

- LORA: `base_model.model.<module path>.lora_A.weight` [r, in] and `.lora_B.weight`
  [out, r]; the module path is ours without the leading `lm.`; scale = lora_alpha / r
  (lora_alpha / sqrt(r) with `use_rslora`); `rank_pattern` / `alpha_pattern` are honoured.
- PROMPT_TUNING: `prompt_embeddings` [num_virtual_tokens * num_transformer_submodules, d];
  for seq2seq models PEFT prepends the first `num_virtual_tokens` rows to the encoder input,
  as our `[prompt | text | visual]` layout does.

Only JSON and safetensors are read: pickled `adapter_model.bin` files are refused.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from modeling.serve_forms import LowRankDelta, ServeWeights

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
PICKLE_NAME = "adapter_model.bin"
PREFIX = "base_model.model."
_LORA_KEY = re.compile(r"^base_model\.model\.(?P<path>.+)\.lora_(?P<part>[AB])\.weight$")
# LoraConfig fields whose non-default values change the computation in ways we do not model.
_UNSUPPORTED_LORA = ("use_dora", "lora_bias", "fan_in_fan_out", "modules_to_save",
                     "layer_replication", "trainable_token_indices", "target_parameters",
                     "alora_invocation_tokens", "use_qalora", "use_bdlora")


def plain_lm(backbone: nn.Module) -> nn.Module:
    """A separate Hugging Face LM with the backbone LM's weights and none of our hooks: the
    model PEFT's own code wraps (interop tests and the PEFT baseline benchmark)."""
    config = backbone.lm.config.__class__.from_dict(backbone.lm.config.to_dict())
    config._attn_implementation = "sdpa"
    lm = type(backbone.lm)(config)
    lm.load_state_dict(backbone.lm.state_dict())
    return lm.eval()


def _lm_linears(backbone: nn.Module) -> dict[str, nn.Linear]:
    """The backbone LM's Linear layers by our site name (`lm.` + module path)."""
    return {f"lm.{name}": m for name, m in backbone.lm.named_modules()
            if isinstance(m, nn.Linear)}


def _number(x: float) -> int | float:
    return int(x) if float(x).is_integer() else float(x)


def _write(out: Path, config: dict[str, Any], tensors: dict[str, torch.Tensor]) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().to("cpu").contiguous() for k, v in tensors.items()},
              str(out / WEIGHTS_NAME))
    (out / CONFIG_NAME).write_text(json.dumps(config, indent=2, sort_keys=True))
    return out


def export_peft(serve: ServeWeights, backbone: nn.Module, out_dir: str | Path, *,
                task_type: str = "SEQ_2_SEQ_LM") -> Path:
    """Write `serve` (LoRA only, or a prompt only) as a PEFT adapter folder; returns it.

    Refuses (ValueError) forms PEFT cannot express: bottlenecks, prefixes, overrides, LoRA
    outside the LM, LoRA ranks or scales that differ across sites, LoRA plus a prompt.
    """
    for form in ("bottleneck", "prefix", "overrides"):
        if getattr(serve, form):
            raise ValueError(f"cannot export {form} sites {sorted(getattr(serve, form))[:3]} "
                             "to PEFT: only LoRA on LM Linear layers and prompts are supported")
    if serve.lora and serve.prompt is not None:
        raise ValueError("serve weights hold both LoRA and a prompt; PEFT stores one method per "
                         "folder: export them separately")
    out = Path(out_dir)
    if serve.prompt is not None:
        length, dim = serve.prompt.shape
        if dim != backbone.config.d_model:
            raise ValueError(f"prompt width {dim} != backbone d_model {backbone.config.d_model}")
        config = {"peft_type": "PROMPT_TUNING", "task_type": task_type,
                  "num_virtual_tokens": length, "token_dim": dim,
                  "num_transformer_submodules": 1, "prompt_tuning_init": "RANDOM",
                  "base_model_name_or_path": None, "inference_mode": True}
        return _write(out, config, {"prompt_embeddings": serve.prompt})
    if not serve.lora:
        raise ValueError("serve weights hold no LoRA and no prompt: nothing to export")
    linears = _lm_linears(backbone)
    ranks = {site: d.lora_a.shape[0] for site, d in serve.lora.items()}
    alphas = {site: d.scale * ranks[site] for site, d in serve.lora.items()}
    for site in serve.lora:
        if site not in linears:
            raise ValueError(f"LoRA site {site!r} is not a Linear layer of the LM (lm.*); "
                             "PEFT can only express LoRA on the language model")
    if len(set(ranks.values())) > 1:
        raise ValueError(f"LoRA ranks differ across sites ({sorted(set(ranks.values()))}); "
                         "PEFT export expects one rank r for every site")
    if max(alphas.values()) - min(alphas.values()) > 1e-6 * max(1.0, max(alphas.values())):
        raise ValueError("LoRA scales differ across sites; PEFT export expects one lora_alpha")
    leaves = sorted({site.rsplit(".", 1)[-1] for site in serve.lora})
    covers_all = {s for s in linears if s.rsplit(".", 1)[-1] in leaves} == set(serve.lora)
    # Leaf names when they select exactly our sites; otherwise the exact module paths.
    targets = leaves if covers_all else sorted(s.removeprefix("lm.") for s in serve.lora)
    rank = next(iter(ranks.values()))
    config = {"peft_type": "LORA", "task_type": task_type, "r": rank,
              "lora_alpha": _number(next(iter(alphas.values()))), "target_modules": targets,
              "lora_dropout": 0.0, "bias": "none", "fan_in_fan_out": False,
              "use_rslora": False, "use_dora": False, "inference_mode": True,
              "base_model_name_or_path": None, "rank_pattern": {}, "alpha_pattern": {}}
    tensors: dict[str, torch.Tensor] = {}
    for site, delta in sorted(serve.lora.items()):
        key = PREFIX + site.removeprefix("lm.")
        tensors[f"{key}.lora_A.weight"] = delta.lora_a
        tensors[f"{key}.lora_B.weight"] = delta.lora_b
    return _write(out, config, tensors)


def _read(folder: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """adapter_config.json and adapter_model.safetensors; never unpickles anything."""
    weights = folder / WEIGHTS_NAME
    if not weights.is_file():
        if (folder / PICKLE_NAME).is_file():
            raise ValueError(f"{folder / PICKLE_NAME} is a pickle file, which we never load: "
                             f"convert it to {WEIGHTS_NAME} with a trusted tool first")
        raise ValueError(f"{weights} not found: not a PEFT adapter folder")
    config_file = folder / CONFIG_NAME
    if not config_file.is_file():
        raise ValueError(f"{config_file} not found: not a PEFT adapter folder")
    config = json.loads(config_file.read_text())
    if not isinstance(config, dict):
        raise ValueError(f"{config_file} must hold a JSON object")
    return config, load_file(str(weights))


def _pattern_value(patterns: dict[str, Any] | None, path: str, default: Any) -> Any:
    """PEFT's `get_pattern_key`: the first pattern matching the end of the module path."""
    for pattern, value in (patterns or {}).items():
        if re.match(rf"(.*\.)?({pattern})$", path):
            return value
    return default


def _import_lora(config: dict[str, Any], tensors: dict[str, torch.Tensor],
                 backbone: nn.Module) -> ServeWeights:
    for name in _UNSUPPORTED_LORA:
        if config.get(name):
            raise ValueError(f"adapter_config.json field {name!r} = {config[name]!r} is not "
                             "supported; expected it false/empty")
    if config.get("bias", "none") != "none":
        raise ValueError(f"adapter_config.json field 'bias' = {config['bias']!r}; expected 'none'")
    r, alpha = config.get("r"), config.get("lora_alpha", 8)
    if not isinstance(r, int) or isinstance(r, bool) or r < 1:
        raise ValueError(f"adapter_config.json field 'r' = {r!r}; expected a positive integer")
    if not isinstance(alpha, int | float) or isinstance(alpha, bool):
        raise ValueError(f"adapter_config.json field 'lora_alpha' = {alpha!r}; expected a number")
    linears = _lm_linears(backbone)
    parts: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in tensors.items():
        match = _LORA_KEY.match(key)
        if match is None:
            raise ValueError(f"unexpected tensor key {key!r}; expected "
                             f"'{PREFIX}<module path>.lora_A.weight' or '.lora_B.weight'")
        site = "lm." + match["path"]
        if site not in linears:
            raise ValueError(f"tensor key {key!r} names module {match['path']!r}, which is not "
                             "a Linear layer of this backbone's LM")
        parts.setdefault(site, {})[match["part"]] = tensor
    if not parts:
        raise ValueError(f"{WEIGHTS_NAME} holds no LoRA tensors")
    lora: dict[str, LowRankDelta] = {}
    for site, ab in sorted(parts.items()):
        key = PREFIX + site.removeprefix("lm.")
        for part in "AB":
            if part not in ab:
                raise ValueError(f"missing tensor key {key}.lora_{part}.weight (its pair exists)")
        path = site.removeprefix("lm.")
        rank = _pattern_value(config.get("rank_pattern"), path, r)
        site_alpha = _pattern_value(config.get("alpha_pattern"), path, alpha)
        layer = linears[site]
        want_a, want_b = (rank, layer.in_features), (layer.out_features, rank)
        for part, want in (("A", want_a), ("B", want_b)):
            if tuple(ab[part].shape) != want:
                raise ValueError(f"tensor key {key}.lora_{part}.weight has shape "
                                 f"{tuple(ab[part].shape)}; expected {want} (r={rank})")
        scale = site_alpha / (math.sqrt(rank) if config.get("use_rslora") else rank)
        lora[site] = LowRankDelta(ab["A"], ab["B"], float(scale))
    return ServeWeights(lora=lora)


def _import_prompt(config: dict[str, Any], tensors: dict[str, torch.Tensor],
                   backbone: nn.Module) -> ServeWeights:
    if set(tensors) != {"prompt_embeddings"}:
        raise ValueError(f"unexpected tensor keys {sorted(set(tensors) - {'prompt_embeddings'})}"
                         "; a PROMPT_TUNING adapter holds only 'prompt_embeddings'")
    table, d_model = tensors["prompt_embeddings"], backbone.config.d_model
    length = config.get("num_virtual_tokens")
    if not isinstance(length, int) or length < 1:
        raise ValueError(f"adapter_config.json field 'num_virtual_tokens' = {length!r}; "
                         "expected a positive integer")
    modules = config.get("num_transformer_submodules") or table.shape[0] // length
    if config.get("token_dim", d_model) != d_model:
        raise ValueError(f"adapter_config.json field 'token_dim' = {config['token_dim']!r}; "
                         f"expected the backbone's d_model {d_model}")
    want = (length * modules, d_model)
    if modules not in (1, 2) or tuple(table.shape) != want:
        raise ValueError(f"tensor key 'prompt_embeddings' has shape {tuple(table.shape)}; "
                         f"expected {want} (num_virtual_tokens x num_transformer_submodules"
                         ", token_dim)")
    # PEFT's seq2seq prompt tuning prepends only the first num_virtual_tokens rows (encoder).
    return ServeWeights(prompt=table[:length].clone())


def import_peft(folder: str | Path, backbone: nn.Module) -> ServeWeights:
    """Read a PEFT LORA or PROMPT_TUNING folder into serve form for `backbone`.

    Every tensor key must map to a Linear of the backbone's LM with fitting shapes; any
    mismatch raises ValueError naming the key or config field and the expected value.
    """
    config, tensors = _read(Path(folder))
    peft_type = config.get("peft_type")
    if peft_type == "LORA":
        return _import_lora(config, tensors, backbone)
    if peft_type == "PROMPT_TUNING":
        return _import_prompt(config, tensors, backbone)
    raise ValueError(f"adapter_config.json field 'peft_type' = {peft_type!r} is not supported; "
                     "expected 'LORA' or 'PROMPT_TUNING'")


__all__ = ["export_peft", "import_peft"]
