"""Registry -> host tier (one load per version however many wait, LRU byte budget that
spares active and pinned versions, refusals) and the vision feature LRU."""

from __future__ import annotations

import json
import threading

import grpc
import pytest
import torch
from serving_helpers import random_adapter

from adapters_registry import FingerprintMismatch, NotFound, Registry
from modeling.methods.base import BackboneFacts
from modeling.recipe import MethodEntry
from serving.adapter_store import AdapterRejected, AdapterStore
from serving.limits import ImageInput
from serving.requests import error_for
from serving.vision_cache import VisionCache, visual_tokens
from training.artifact import write_artifact


def make_store(backbone, published, budget=1 << 30, loads=None) -> AdapterStore:
    return AdapterStore(Registry(published.root), BackboneFacts.of(backbone),
                        backbone.fingerprint(), budget,
                        on_load=(lambda s: loads.append(s)) if loads is not None else None)


def test_concurrent_fetches_share_one_load(backbone, published):
    loads: list[float] = []
    store = make_store(backbone, published, loads=loads)
    futures, barrier = [], threading.Barrier(6)

    def fetch():
        barrier.wait()
        futures.append(store.fetch("beta", 1))

    threads = [threading.Thread(target=fetch) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    entries = {id(f.result(timeout=30)) for f in futures}
    assert len(entries) == 1 and len(loads) == 1
    entry = futures[0].result()
    assert sorted(entry.tasks) == ["caption", "nlvr2", "tvqa", "vqa"]
    expected = published.models[("beta", 1)].materialize("vqa")
    for ours, theirs in zip(entry.serve["vqa"].tensors(), expected.tensors(), strict=True):
        assert torch.equal(ours, theirs)
    store.close()


def test_budget_evicts_lru_but_spares_what_the_lifecycle_keeps(backbone, published):
    """The store evicts least recently used versions over its budget, never one the caller
    keeps (the lifecycle keeps active, pinned and in-use versions: test_lifecycle.py)."""
    store = make_store(backbone, published, budget=1)  # everything is over budget
    store.fetch("alpha", 1).result(timeout=30)
    store.fetch("gamma", 1).result(timeout=30)
    assert store.evict_over_budget(keep={("alpha", 1), ("gamma", 1)}) == []
    assert store.entry(("alpha", 1)) is not None  # active
    assert store.entry(("gamma", 1)) is not None  # in use by the request that loaded it
    store.fetch("beta", 1).result(timeout=30)
    assert store.evict_over_budget(keep={("alpha", 1), ("beta", 1)}) == [("gamma", 1)]
    assert store.entry(("gamma", 1)) is None  # LRU, neither active nor pinned
    store.fetch("alpha", 2).result(timeout=30)
    assert store.evict_over_budget(keep={("alpha", 1), ("beta", 1), ("alpha", 2)}) == []
    assert store.entry(("beta", 1)) is not None  # pinned
    assert store.entry(("alpha", 1)) is not None
    assert store.evict_over_budget(keep={("alpha", 2)}) == [("alpha", 1), ("beta", 1)]
    store.close()


def test_refusals_surface_as_registry_errors(backbone, published):
    store = make_store(backbone, published)
    with pytest.raises(FingerprintMismatch):
        store.fetch("alien", 1).result(timeout=30)
    with pytest.raises(NotFound):
        store.resolve("nobody")
    assert store.resolve("alpha") == 2 and store.resolve("alpha", version=1) == 1
    store.close()


def test_hyperformer_from_before_vl_adapters_layout_is_refused_in_one_line(backbone, tmp_path):
    """A hyperformer artifact written before manifests stated `layout` holds the earlier
    hypernetwork: the store refuses it in one line naming the layout (FAILED_PRECONDITION
    to a client), and the same artifact stating today's layout loads."""
    recipe = [MethodEntry("hyperformer", {"width": 4, "task_embedding_dim": 8,
                                          "layer_embedding_dim": 8})]
    manifest = write_artifact(tmp_path / "hyper", random_adapter(backbone, recipe, ["vqa"], 51),
                              backbone, {})
    registry = Registry(str(tmp_path / "store"))
    registry.publish(tmp_path / "hyper", "hyper")
    del manifest["methods"][0]["config"]["layout"]
    (tmp_path / "hyper" / "manifest.json").write_text(json.dumps(manifest))
    registry.publish(tmp_path / "hyper", "hyper")
    store = AdapterStore(registry, BackboneFacts.of(backbone), backbone.fingerprint(), 1 << 30)
    assert list(store.fetch("hyper", 1).result(timeout=30).tasks) == ["vqa"]
    with pytest.raises(AdapterRejected) as caught:
        store.fetch("hyper", 2).result(timeout=30)
    message = str(caught.value)
    assert "hyperformer layout 'per-position" in message and "retrain" in message
    assert "\n" not in message
    assert error_for(caught.value).code == grpc.StatusCode.FAILED_PRECONDITION
    store.close()


def test_vision_cache_is_lru_by_entries():
    events: list[str] = []
    cache = VisionCache(2, on_event=events.append)
    cache.put("a", torch.zeros(1))
    cache.put("b", torch.ones(1))
    assert cache.get("a") is not None  # a is now most recent
    cache.put("c", torch.ones(1))
    assert "b" not in cache and "a" in cache and "c" in cache
    assert cache.get("b") is None
    assert events == ["hit", "eviction", "miss"]


def test_video_frames_through_the_cache_are_the_tokens_the_backbone_gives(backbone):
    """Cached, fresh and feature-sent frames pool as `VLBackbone.encode_frames` pools them."""
    size = backbone.config.vision.image_size
    pixels = torch.randn(3, 3, size, size, generator=torch.Generator().manual_seed(0))
    grids = backbone.encode_images(pixels)
    cache = VisionCache(8)
    cache.put("cached", grids[0])
    frames = [ImageInput("cached"), ImageInput("fresh", pixels=pixels[1]),
              ImageInput(None, features=grids[2])]
    [tokens] = visual_tokens(backbone, cache, [(frames, True)], torch.device("cpu"),
                             torch.float32)
    expected, valid = backbone.encode_frames(pixels)
    assert torch.allclose(tokens.features, expected[valid], atol=1e-6)
    assert tokens.image_order.tolist() == [0, 0, 0]


def test_server_runs_vision_once_per_distinct_image(server, inference):
    from serving_helpers import request_for

    before = len(server.vision)
    inference.Predict(request_for("vqa", "alpha", seed=77), timeout=30)
    inference.Predict(request_for("caption", "beta", seed=77), timeout=30)  # same image
    assert len(server.vision) == before + 1
