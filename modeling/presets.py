"""VL-Adapter's method settings as named recipes (Sung et al., CVPR 2022, Sec. 4).

Adapter reduction factor 8; LoRA rank 128, alpha 32 on q and v; Compacter n = 2 without
the low-rank factorisation; prompt length 40. LayerNorms are trained with adapters,
Compacter and Hyperformer, biases (of the Linear layers and the LayerNorms) with LoRA, and
the visual projection always.
"""

from __future__ import annotations

from modeling.recipe import MethodEntry

_NORMS_AND_PROJECTION = MethodEntry("trainable_tensors", {"layer_norms": True}, "single",
                                    "tensors")
# VL-Adapter's LoRA runs unfreeze every parameter named `bias`: Linear and LayerNorm biases.
_BIASES_AND_PROJECTION = MethodEntry("trainable_tensors",
                                     {"biases": True, "layer_norm_biases": True}, "single",
                                     "tensors")
_PROJECTION = MethodEntry("trainable_tensors", {}, "single", "tensors")
_LORA = {"rank": 128, "alpha": 32, "targets": ["q", "v"]}
_COMPACTER = {"phm_dim": 2, "low_rank": False}

METHOD_PRESETS: dict[str, list[MethodEntry]] = {
    "full_finetuning": [MethodEntry("full_finetuning")],
    "multiple_adapters": [MethodEntry("adapter", {}, "multiple"), _NORMS_AND_PROJECTION],
    "half_shared_adapters": [MethodEntry("adapter", {}, "half_shared"), _NORMS_AND_PROJECTION],
    "single_adapter": [MethodEntry("adapter", {}, "single"), _NORMS_AND_PROJECTION],
    "hyperformer": [MethodEntry("hyperformer", {}, "multiple"), _NORMS_AND_PROJECTION],
    "multiple_compacters": [MethodEntry("compacter", _COMPACTER, "multiple"),
                            _NORMS_AND_PROJECTION],
    "single_compacter": [MethodEntry("compacter", _COMPACTER, "single"), _NORMS_AND_PROJECTION],
    "multiple_lora": [MethodEntry("lora", _LORA, "multiple"), _BIASES_AND_PROJECTION],
    "single_lora": [MethodEntry("lora", _LORA, "single"), _BIASES_AND_PROJECTION],
    "multiple_prompts": [MethodEntry("prompt_tuning", {"length": 40}, "multiple"), _PROJECTION],
    "single_prompt": [MethodEntry("prompt_tuning", {"length": 40}, "single"), _PROJECTION],
    # Sec. 5.3: one shared adapter plus task-specific prompts.
    "single_adapter_task_prompts": [MethodEntry("adapter", {}, "single"),
                                    MethodEntry("prompt_tuning", {"length": 40}, "multiple"),
                                    _NORMS_AND_PROJECTION],
    # The empirical study's five methods alone (any backbone, BLIP included: no projection),
    # each at the middle of its size grid (`train-adapter sweep` runs the whole grid).
    "study_prompt": [MethodEntry("prompt_tuning", {"length": 8}, "single")],
    "study_prefix": [MethodEntry("prefix_tuning", {"length": 8}, "single")],
    "study_lora": [MethodEntry("lora", {"rank": 8}, "single")],
    "study_adapter": [MethodEntry("adapter", {"width": 64}, "single")],
    "study_parallel_adapter": [MethodEntry("parallel_adapter", {"width": 64}, "single")],
}


def method_preset(name: str) -> list[MethodEntry]:
    if name not in METHOD_PRESETS:
        raise ValueError(f"unknown method preset {name!r}; expected one of "
                         f"{sorted(METHOD_PRESETS)}")
    return list(METHOD_PRESETS[name])
