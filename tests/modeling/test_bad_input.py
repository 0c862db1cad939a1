"""Bad configs and adapters get a clear error naming the field and the expected value."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from modeling.config import preset
from modeling.fit import check_fits
from modeling.methods.base import BackboneFacts
from modeling.presets import method_preset
from modeling.recipe import AdapterModel, MethodEntry
from modeling.serve_forms import AdapterSet, Bottleneck, LowRankDelta, PrefixKV


@pytest.fixture(scope="module")
def facts():
    from modeling.backbone import VLBackbone
    return BackboneFacts.of(VLBackbone.from_config(preset("tiny"), device="meta"))


@pytest.mark.parametrize(("entry", "message"), [
    (MethodEntry("nope"), "unknown method 'nope'"),
    (MethodEntry("lora", {"rank": 65}), "rank 65 is larger than layer"),
    (MethodEntry("lora", {"targets": ["qq"]}), "unknown LoRA target"),
    (MethodEntry("lora", {"ranks": 4}), r"unknown LoraConfig field\(s\) \['ranks'\]"),
    (MethodEntry("adapter", {"placements": ["encoder.cross_attn"]}), "unknown adapter placement"),
    (MethodEntry("compacter", {"phm_dim": 3}), "phm_dim 3 must divide"),
    (MethodEntry("prompt_tuning", {}, "half_shared"), "no up-projection"),
    (MethodEntry("adapter", {}, "everything"), "sharing must be one of"),
    (MethodEntry("prefix_tuning", {"length": 0}), "prefix length must be >= 1"),
])
def test_bad_method_configs_are_refused_with_the_field_named(facts, entry, message):
    with pytest.raises(ValueError, match=message):
        AdapterModel([entry], facts, ["vqa"])


UNKNOWN_ACTIVATION = (r"activation 'swish' is not a known activation; expected one of "
                      r"\['relu', 'gelu', 'silu', 'tanh'\]")


@pytest.mark.parametrize("build", [
    lambda facts: AdapterModel([MethodEntry("adapter", {"activation": "swish"})], facts, ["vqa"]),
    lambda facts: AdapterModel([MethodEntry("parallel_adapter", {"activation": "swish"})], facts,
                               ["vqa"]),
    lambda facts: AdapterModel([MethodEntry("compacter", {"activation": "swish"})], facts,
                               ["vqa"]),
    lambda facts: Bottleneck(torch.zeros(8, 64), torch.zeros(8), torch.zeros(64, 8),
                             torch.zeros(64), activation="swish"),
], ids=["adapter", "parallel_adapter", "compacter", "serve form"])
def test_an_unknown_activation_is_refused_by_one_check_listing_the_kernel_table(facts, build):
    """Method configs and serve forms (what the bank and check_fits receive) share one check
    against the kernels' activation table, so no bottleneck reaches a kernel without one."""
    with pytest.raises(ValueError, match=UNKNOWN_ACTIVATION):
        build(facts)


def test_unknown_presets_list_the_known_ones():
    with pytest.raises(ValueError, match="expected one of.*tiny"):
        preset("huge")
    with pytest.raises(ValueError, match="single_adapter"):
        method_preset("one_adapter")


def test_prefix_on_a_backbone_without_attention_sites_is_refused(facts):
    no_attention = dataclasses.replace(facts, attention=())
    with pytest.raises(ValueError, match="prefix tuning needs attention"):
        AdapterModel([MethodEntry("prefix_tuning")], no_attention, ["vqa"])


SITE = "lm.encoder.block.0.layer.0.SelfAttention.q"


@pytest.mark.parametrize(("serve", "message"), [
    (AdapterSet(lora={SITE: LowRankDelta(torch.zeros(4, 32), torch.zeros(64, 4), 1.0)}),
     r"expected \[rank, 64\]"),
    (AdapterSet(lora={"lm.nowhere.q": LowRankDelta(torch.zeros(4, 64), torch.zeros(64, 4), 1)}),
     "not a Linear layer"),
    (AdapterSet(bottleneck={"encoder.0.ffn": Bottleneck(torch.zeros(8, 32), torch.zeros(8),
                                                          torch.zeros(32, 8), torch.zeros(32))}),
     r"down_weight has shape \(8, 32\); expected \[8, 64\]"),
    (AdapterSet(bottleneck={"encoder.9.ffn": Bottleneck(torch.zeros(8, 64), torch.zeros(8),
                                                          torch.zeros(64, 8), torch.zeros(64))}),
     "position 'encoder.9.ffn' does not exist"),
    (AdapterSet(prompt=torch.zeros(3, 32)), r"expected \[length, 64\]"),
    (AdapterSet(prefix={"encoder.0.self_attn": PrefixKV(torch.zeros(2, 3, 16),
                                                          torch.zeros(2, 3, 16))}),
     r"expected \[4, length, 16\]"),
    (AdapterSet(overrides={"visual.feat_norm.weight": torch.zeros(3)}), r"expected \(64,\)"),
    (AdapterSet(overrides={"vision.x": torch.zeros(3)}), "names no LM or visual-projection"),
])
def test_adapters_that_do_not_fit_the_backbone_are_refused(facts, serve, message):
    with pytest.raises(ValueError, match=message):
        check_fits(serve, facts)


@pytest.mark.parametrize(("rank", "message"), [
    (65, r"lora rank 65 is larger than layer lm\.encoder\.block\.0\.layer\.0\.SelfAttention\.q "
         r"\(64x64\); expected rank <= 64"),
    (0, r"lora rank must be >= 1, got 0 \(layer lm\.encoder\.block\.0\.layer\.0\.Self"),
])
def test_lora_rank_is_bounded_by_one_check_for_configs_and_serve_forms(facts, rank, message):
    """What a LoRA config may not ask for, an artifact's serve form may not hold either."""
    with pytest.raises(ValueError, match=message):
        AdapterModel([MethodEntry("lora", {"rank": rank, "targets": [SITE]})], facts, ["vqa"])
    delta = LowRankDelta(torch.zeros(rank, 64), torch.zeros(64, rank), 1.0)
    with pytest.raises(ValueError, match=message):
        check_fits(AdapterSet(lora={SITE: delta}), facts)


def test_a_fitting_adapter_passes_the_check(facts):
    model = AdapterModel(method_preset("single_adapter"), facts, ["vqa"])
    check_fits(model.materialize("vqa"), facts)


def test_lora_on_a_gated_ffn_takes_its_own_layers_and_refuses_the_absent_wi():
    """FLAN-T5's FFN has wi_0 / wi_1 and no wi: `ffn_in` must not silently adapt nothing."""
    from modeling.backbone import VLBackbone
    from modeling.methods.lora import lora_sites

    tiny = preset("tiny")
    gated = dataclasses.replace(tiny, lm={**tiny.lm, "feed_forward_proj": "gated-gelu"})
    facts = BackboneFacts.of(VLBackbone.from_config(gated, device="meta"))
    with pytest.raises(ValueError, match=r"unknown LoRA target\(s\) \['ffn_in'\] for this t5 "
                                         r"LM; expected some of \['ffn_out', 'k', 'o', 'q', 'v'\] "
                                         r"or \['k', 'o', 'q', 'v', 'wi_0', 'wi_1', 'wo'\]"):
        AdapterModel([MethodEntry("lora", {"targets": ["q", "ffn_in"]})], facts, ["vqa"])
    sites = lora_sites(facts, ("wi_0", "wi_1"))
    layers = tiny.lm["num_layers"] + tiny.lm["num_decoder_layers"]
    assert len(sites) == 2 * layers
    assert {site.rsplit(".", 1)[-1] for site in sites} == {"wi_0", "wi_1"}
