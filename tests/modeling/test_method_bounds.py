"""The registry's bounds table (adapters_registry.method_config) declares every field of every
method config dataclass, and rebuilding an artifact allocates nothing before its tensors'
shapes have been checked against the config."""

from __future__ import annotations

import typing
from dataclasses import fields

import pytest
import torch

from adapters_registry.method_config import METHOD_FIELDS, Bound, Sizes, method_config_problem
from modeling.config import PRESETS
from modeling.methods import METHODS
from modeling.methods.base import BackboneFacts, config_to_dict
from modeling.presets import METHOD_PRESETS
from modeling.recipe import AdapterModel, MethodEntry

# annotation of a config field -> the kinds the table may declare for it
KINDS_BY_TYPE = {int: (Bound,), int | None: (Bound,), bool: ("flag",), str: ("text",),
                 float: ("number", "probability"), tuple[str, ...]: ("texts",)}


@pytest.mark.parametrize("method", sorted(METHODS))
def test_bounds_table_declares_every_field_of_the_config_dataclass(method: str) -> None:
    config_cls = METHODS[method].config_cls
    hints = typing.get_type_hints(config_cls)
    declared = METHOD_FIELDS[method]
    assert sorted(declared) == sorted(f.name for f in fields(config_cls))
    for name, spec in declared.items():
        allowed = KINDS_BY_TYPE[hints[name]]
        assert (type(spec) if isinstance(spec, Bound) else spec) in allowed, (method, name)
        if isinstance(spec, Bound):
            assert spec.optional == (hints[name] == int | None), (method, name)
    assert sorted(METHOD_FIELDS) == sorted(METHODS)


@pytest.mark.parametrize("preset_name", sorted(PRESETS))
def test_defaults_and_method_presets_pass_the_bounds_of_every_backbone_preset(preset_name):
    """Only VL-Adapter's LoRA rank 128 exceeds a tiny backbone, which Lora refuses too."""
    sizes = Sizes.of_backbone(PRESETS[preset_name].d_model)
    configs = [(m, config_to_dict(spec.config_cls())) for m, spec in METHODS.items()]
    configs += [(e.method, e.config) for entries in METHOD_PRESETS.values() for e in entries]
    for method, config in configs:
        problem = method_config_problem(method, config, sizes)
        if method == "lora" and config["rank"] > sizes.d_model:
            assert problem.startswith(f"config.rank is {config['rank']}, above the limit "
                                      f"{sizes.d_model} (d_model"), problem
        else:
            assert problem is None, (method, config)


def test_rebuilding_an_artifact_allocates_nothing_before_checking_tensor_shapes(backbone):
    """A config asking for a 10**13-wide prompt MLP with tensors of a 16-wide one: refused by
    the shape check, never allocated (which would need petabytes)."""
    facts = BackboneFacts.of(backbone)
    small = AdapterModel([MethodEntry("prompt_tuning", {"length": 2, "hidden_dim": 16})], facts,
                         ["vqa"])
    shared, per_task = small.split_state()
    huge = [{"id": "prompt_tuning", "method": "prompt_tuning",
             "config": {"length": 2, "hidden_dim": 10**13}, "sharing": "single"}]
    with pytest.raises(ValueError, match=r"prompt_tuning\.shared\.prompt\.mlp\.0\.weight"):
        AdapterModel.from_artifact(huge, ["vqa"], facts, shared, per_task)


def test_rebuilt_artifact_holds_float32_copies_of_the_stored_tensors(backbone):
    facts = BackboneFacts.of(backbone)
    entries = [MethodEntry("adapter", {"width": 8}, "half_shared"),
               MethodEntry("trainable_tensors", {"layer_norms": True}, "single", "tensors")]
    shared, per_task = AdapterModel(entries, facts, ["vqa", "gqa"]).split_state()
    half = {k: v.half() for k, v in shared.items()}
    half_per_task = {t: {k: v.half() for k, v in d.items()} for t, d in per_task.items()}
    rebuilt = AdapterModel.from_artifact([e.to_dict() for e in entries], ["vqa", "gqa"], facts,
                                         half, half_per_task)
    assert all(p.dtype == torch.float32 and p.device.type == "cpu" and not p.requires_grad
               for p in rebuilt.parameters())
    shared_again, per_task_again = rebuilt.requires_grad_(True).split_state()
    assert shared_again.keys() == half.keys()
    for name, tensor in shared_again.items():
        assert torch.equal(tensor, half[name].float()), name
    assert per_task_again.keys() == half_per_task.keys()
    for task, tensors in per_task_again.items():
        assert tensors.keys() == half_per_task[task].keys()
        for name, tensor in tensors.items():
            assert torch.equal(tensor, half_per_task[task][name].float()), name
