"""The host tier bounds a version's method configs by this backbone's d_model before it
builds anything: an adapter wider than 4 x d_model is refused by the registry read, naming
the field and the limit, and no module is built for it."""

from __future__ import annotations

import json

import pytest
from serving_helpers import random_adapter

import serving.adapter_store
from adapters_registry import InvalidArtifact, Registry
from modeling.methods.base import BackboneFacts
from modeling.recipe import MethodEntry
from serving.adapter_store import AdapterStore
from training.artifact import write_artifact


def test_config_wider_than_this_backbone_is_refused_before_any_module_is_built(
    backbone, tmp_path, monkeypatch
):
    model = random_adapter(backbone, [MethodEntry("adapter", {"width": 8})], ["vqa"], seed=3)
    write_artifact(tmp_path / "wide", model, backbone, {})
    manifest_path = tmp_path / "wide" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["methods"][0]["config"]["width"] = 4 * backbone.config.d_model + 1
    manifest_path.write_text(json.dumps(manifest))
    registry = Registry(tmp_path / "store")
    registry.publish(tmp_path / "wide", "wide")  # a width some backbone could take

    def build(*args, **kwargs):
        raise AssertionError("modules were built for a config beyond the backbone's bounds")

    monkeypatch.setattr(serving.adapter_store.AdapterModel, "from_artifact", build)
    store = AdapterStore(registry, BackboneFacts.of(backbone), backbone.fingerprint(), 1 << 30)
    try:
        with pytest.raises(InvalidArtifact, match=r"config\.width is 257, above the limit 256 "
                                                  r"\(4 x d_model of this backbone\)"):
            store.fetch("wide", 1).result(timeout=60)
    finally:
        store.close()
