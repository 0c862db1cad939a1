"""`modeling.tensor_names` (plain Python, shared with the torch-free registry) gives shared
tensors exactly the names `AdapterModel.split_state` writes into an artifact."""

from __future__ import annotations

from modeling.backbone import VLBackbone
from modeling.config import preset
from modeling.methods.base import BackboneFacts
from modeling.recipe import AdapterModel, MethodEntry
from modeling.tensor_names import param_key, shared_tensor_name, site_of


def test_param_key_and_site_of_are_inverse_and_dot_free():
    site = "lm.encoder.block.0.layer.0.SelfAttention.q"
    assert param_key(site) == "lm__encoder__block__0__layer__0__SelfAttention__q"
    assert "." not in param_key(site)
    assert site_of(param_key(site)) == site


def test_shared_tensor_names_are_the_names_an_adapter_model_writes():
    facts = BackboneFacts.of(VLBackbone.from_config(preset("tiny"), device="meta"))
    entries = [MethodEntry("lora", {"rank": 2}, "single", "lora_2"),
               MethodEntry("prompt_tuning", {"length": 3, "reparameterize": False})]
    model = AdapterModel(entries, facts, ["vqa", "nlvr2"])
    shared, per_task = model.split_state()
    sites = model.materialize("vqa").lora
    assert sites
    expected = {shared_tensor_name("lora_2", f"lora_{part}", param_key(site))
                for site in sites for part in "AB"}
    expected.add(shared_tensor_name("prompt_tuning", "prompt", "embedding.weight"))
    assert set(shared) == expected
    assert per_task == {"vqa": {}, "nlvr2": {}}
