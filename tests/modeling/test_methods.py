"""Every method on every backbone family (T5, BART, BLIP VQA and captioning): starts at
the frozen model, trains, never writes it."""

from __future__ import annotations

import pytest
import torch
from modeling_helpers import random_batch, randomize

from modeling.bank import build_bank
from modeling.kernels import RowIndex
from modeling.methods import METHODS
from modeling.methods.base import BackboneFacts
from modeling.presets import METHOD_PRESETS, method_preset
from modeling.recipe import AdapterModel, MethodEntry
from training.adapter_step import adapter_logits, sequence_loss

TASKS = ["vqa", "gqa"]
SMALL = {"hyperformer": {"task_embedding_dim": 8, "layer_embedding_dim": 8, "width": 4},
         "prompt_tuning": {"length": 3, "hidden_dim": 16},
         "prefix_tuning": {"length": 3, "hidden_dim": 16}, "lora": {"rank": 4},
         "trainable_tensors": {"layer_norms": True}}  # BLIP has no visual projection
ZERO_START = ("adapter", "parallel_adapter", "compacter", "hyperformer", "lora")
SERVEABLE = sorted(set(METHODS) - {"full_finetuning"})


def _model(backbone, method, sharing="multiple", configs=SMALL):
    return AdapterModel([MethodEntry(method, configs.get(method, {}), sharing)],
                        BackboneFacts.of(backbone), TASKS)


def test_backbone_facts_hold_the_backbones_own_frozen_tensor_map(backbone, monkeypatch):
    """One map of the frozen tensors (`VLBackbone.frozen_tensors`, tied LM head included):
    what methods and check_fits see is what the bank stacks overrides against."""
    assert BackboneFacts.of(backbone).frozen.keys() == backbone.frozen_tensors().keys()
    only = dict([next(iter(backbone.frozen_tensors().items()))])
    monkeypatch.setattr(backbone, "frozen_tensors", lambda: only)
    assert BackboneFacts.of(backbone).frozen is only


@pytest.mark.parametrize("method", ZERO_START)
def test_zero_initialised_methods_start_equal_to_the_frozen_backbone(family_backbone, method):
    backbone = family_backbone
    model = _model(backbone, method)
    batch = random_batch(backbone, [4, 6])
    with torch.no_grad():
        adapted = adapter_logits(backbone, model, batch, ["vqa", "gqa"])
        assert torch.allclose(adapted, backbone(batch), atol=1e-6)


@pytest.mark.parametrize("method", SERVEABLE)
def test_a_training_step_moves_only_the_adapter_never_the_backbone(family_backbone, method):
    backbone = family_backbone
    # LayerNorms as well: a Florence-2 backbone has no visual projection to train
    model = _model(backbone, method, configs={**SMALL, "trainable_tensors": {"layer_norms": True}})
    randomize(model, seed=1)
    before = {k: v.clone() for k, v in backbone.state_dict().items()}
    adapter_before = [p.detach().clone() for p in model.parameters()]
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    batch = random_batch(backbone, [5, 3])
    loss = sequence_loss(adapter_logits(backbone, model, batch, ["vqa", "gqa"]), batch.labels)
    loss.backward()
    optimizer.step()
    assert all(not p.requires_grad and p.grad is None for p in backbone.parameters())
    assert all(torch.equal(v, backbone.state_dict()[k]) for k, v in before.items())
    moved = [not torch.equal(a, p) for a, p in zip(adapter_before, model.parameters(),
                                                    strict=True)]
    assert any(moved)


def test_sharing_modes_decide_which_tensors_are_per_task(backbone):
    facts = BackboneFacts.of(backbone)
    counts = {}
    for sharing in ("single", "half_shared", "multiple"):
        model = AdapterModel([MethodEntry("adapter", {}, sharing)], facts, TASKS)
        shared, per_task = model.split_state()
        counts[sharing] = (len(shared), len(per_task["vqa"]))
    assert counts["single"][1] == 0 and counts["multiple"][0] == 0
    assert counts["half_shared"][0] == counts["half_shared"][1] > 0  # up shared, down per task


@pytest.mark.parametrize("preset_name", sorted(set(METHOD_PRESETS) - {"full_finetuning"}))
def test_presets_build_and_round_trip_through_the_artifact_split(backbone, preset_name):
    facts = BackboneFacts.of(backbone)
    entries = [MethodEntry(e.method, {**e.config, **SMALL.get(e.method, {})}, e.sharing, e.id)
               for e in method_preset(preset_name)]
    source = AdapterModel(entries, facts, TASKS)
    randomize(source, seed=2)
    target = AdapterModel(entries, facts, TASKS)
    target.load_split_state(*source.split_state())
    for task in TASKS:
        a, b = source.materialize(task), target.materialize(task)
        assert all(torch.equal(x, y) for x, y in zip(a.tensors(), b.tensors(), strict=True))


def test_full_finetuning_trains_a_copy_and_has_no_serve_form(family_backbone):
    backbone = family_backbone
    model = AdapterModel([MethodEntry("full_finetuning")], BackboneFacts.of(backbone), TASKS,
                         backbone=backbone)
    copy = model.methods["full_finetuning"].model
    assert copy.lm is not backbone.lm and all(p.requires_grad for p in copy.lm.parameters())
    assert not any(p.requires_grad for p in copy.vision.parameters())  # the tower stays
    before = {k: v.clone() for k, v in backbone.state_dict().items()}
    batch = random_batch(backbone, [5, 3])
    optimizer = torch.optim.AdamW([p for p in copy.parameters() if p.requires_grad], lr=1e-2)
    sequence_loss(copy(batch), batch.labels).backward()
    optimizer.step()
    assert all(torch.equal(v, backbone.state_dict()[k]) for k, v in before.items())
    assert any(not torch.equal(before[k], v) for k, v in copy.state_dict().items())
    assert not model.serveable
    with pytest.raises(ValueError, match="whole model"):
        model.materialize("vqa")


def test_mixed_ranks_in_one_forward_give_each_row_what_it_gets_alone(backbone):
    """Ranks 2 and 6 share one bank (rank 2 zero-padded to 6); each row's logits equal
    those of its adapter stacked alone at its own rank."""
    facts = BackboneFacts.of(backbone)
    sets = []
    for rank in (2, 6):
        model = AdapterModel([MethodEntry("lora", {"rank": rank})], facts, ["t"])
        randomize(model, seed=rank, std=0.1)
        sets.append(model.materialize("t"))
    frozen, d_model = backbone.frozen_tensors(), backbone.config.d_model
    stacked = build_bank(sets, frozen, d_model, torch.zeros(()))
    assert next(iter(stacked.lora.values())).lora_a.shape[:2] == (2, 6)
    batch = random_batch(backbone, [3, 5])
    with torch.no_grad():
        mixed = backbone(batch, stacked, RowIndex.of(torch.tensor([0, 1])))
        bare = backbone(batch)
        for row, weights in enumerate(sets):
            alone = build_bank([weights], frozen, d_model, torch.zeros(()))
            one = batch.select([row])
            expected = backbone(one, alone, RowIndex.of(torch.tensor([0])))[0]
            # fp32 summation order (gather vs dense matmul) moves logits by ~1e-5 of their
            # size; a wrongly padded rank moves them by as much as the adapter does (> 1e-2).
            bound = 1e-4 * (1 + float(expected.abs().max()))
            assert (bare[row] - expected).abs().max() > 1e-2  # guard: the adapter matters
            assert (mixed[row] - expected).abs().max() <= bound


def test_lora_dropout_acts_in_training_mode_only(backbone):
    model = AdapterModel([MethodEntry("lora", {"rank": 4, "dropout": 0.5})],
                         BackboneFacts.of(backbone), ["vqa"])
    randomize(model, seed=4)
    batch = random_batch(backbone, [6, 6])
    with torch.no_grad():
        torch.manual_seed(0)
        first = adapter_logits(backbone, model, batch, ["vqa", "vqa"])
        second = adapter_logits(backbone, model, batch, ["vqa", "vqa"])
        assert not torch.equal(first, second)
        model.eval()
        assert torch.equal(adapter_logits(backbone, model, batch, ["vqa", "vqa"]),
                           adapter_logits(backbone, model, batch, ["vqa", "vqa"]))


def test_resident_bytes_count_a_tensor_shared_by_all_tasks_once(backbone):
    from modeling.serve_forms import unique_nbytes

    facts = BackboneFacts.of(backbone)
    shared = AdapterModel([MethodEntry("adapter", {"width": 8}, "single")], facts, TASKS)
    per_task = AdapterModel([MethodEntry("adapter", {"width": 8}, "multiple")], facts, TASKS)
    one = shared.materialize("vqa").nbytes()
    assert unique_nbytes([shared.materialize(t) for t in TASKS]) == one
    assert unique_nbytes([per_task.materialize(t) for t in TASKS]) == 2 * one
