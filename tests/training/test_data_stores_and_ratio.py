"""Visual stores (HDF5, npz folder, safetensors, image and frame folders) and subsample."""

from __future__ import annotations

import os
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from safetensors.numpy import save_file

from modeling.backbone import VLBackbone
from modeling.config import preset
from training.data import (
    Example,
    FeatureStore,
    ImageFolder,
    MissingVisualError,
    VideoFrameFolder,
    load_image,
    open_feature_store,
    subsample,
)
from training.features import features_for

FEATURES = {
    "img_a": np.arange(36 * 8, dtype=np.float32).reshape(36, 8),
    "img_b": np.ones((36, 8), dtype=np.float32),
}


def _write_h5(path: Path) -> Path:
    with h5py.File(path, "w") as file:
        for visual_id, array in FEATURES.items():
            file[f"{visual_id}/features"] = array
            file[f"{visual_id}/img_h"] = 224
    return path


def _write_npz(path: Path) -> Path:
    path.mkdir()
    for visual_id, array in FEATURES.items():
        np.savez(path / f"{visual_id}.npz", features=array)
    return path


def _write_safetensors(path: Path) -> Path:
    save_file(FEATURES, str(path))
    return path


@pytest.mark.parametrize(
    "name, writer",
    [("f.h5", _write_h5), ("npz", _write_npz), ("f.safetensors", _write_safetensors)],
)
def test_feature_store_backends(tmp_path: Path, name: str, writer) -> None:
    path = writer(tmp_path / name)
    store = open_feature_store(path)
    assert isinstance(store, FeatureStore)
    assert "img_a" in store and "img_c" not in store
    np.testing.assert_array_equal(store.get("img_a"), FEATURES["img_a"])
    assert store.get("img_b").shape == (36, 8) and store.get("img_b").dtype == np.float32
    with pytest.raises(MissingVisualError) as error:
        store.get("img_c")
    assert "'img_c'" in str(error.value) and str(path) in str(error.value)


def test_feature_store_refuses_non_matrix(tmp_path: Path) -> None:
    path = tmp_path / "bad.safetensors"
    save_file({"img_a": np.zeros((2, 3, 4), dtype=np.float32)}, str(path))
    with pytest.raises(ValueError, match=r"img_a.*\[n_tokens, feat_dim\].*\(2, 3, 4\)"):
        open_feature_store(path).get("img_a")


def _broken_npz_folder(tmp_path: Path) -> tuple[Path, Path]:
    folder = tmp_path / "npz"
    folder.mkdir()
    (folder / "img_a.npz").write_bytes(b"PK\x03\x04 cut short")
    return folder, folder / "img_a.npz"


def _broken_file(name: str):
    def write(tmp_path: Path) -> tuple[Path, Path]:
        (tmp_path / name).write_bytes(b"not a feature file")
        return tmp_path / name, tmp_path / name
    return write


@pytest.mark.parametrize("make", [_broken_file("f.h5"), _broken_file("f.safetensors"),
                                  _broken_npz_folder], ids=["h5", "safetensors", "npz"])
def test_unreadable_feature_file_is_a_value_error_naming_it(tmp_path: Path, make) -> None:
    store_path, broken = make(tmp_path)
    with pytest.raises(ValueError, match=f"^{broken}: not a readable"):
        open_feature_store(store_path).get("img_a")


def test_unreadable_image_is_a_value_error_naming_it(tmp_path: Path) -> None:
    (tmp_path / "img_a.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match=f"^{tmp_path / 'img_a.png'}: not a readable image"):
        load_image(ImageFolder(tmp_path).image_path("img_a"))
    Image.new("RGB", (3, 2)).save(tmp_path / "img_b.png")
    assert load_image(tmp_path / "img_b.png").size == (3, 2)


@pytest.mark.parametrize(("features", "message"), [
    (np.zeros((4, 100), np.float32), "has feat_dim 100; this backbone takes 64"),
    (np.zeros((0, 64), np.float32), "has no tokens"),
    (np.full((4, 64), np.nan, np.float32), "holds NaN or infinite values"),
], ids=["too wide", "no tokens", "nan"])
def test_features_the_backbone_cannot_take_are_refused_naming_id_and_source(
        tmp_path: Path, features: np.ndarray, message: str) -> None:
    store = tmp_path / "f.safetensors"
    save_file({"img_a": features}, str(store))
    backbone = VLBackbone.from_config(preset("tiny"))  # feat_dim 64
    example = Example("vqa", "1", ("img_a",), "vqa: q", ("yes",))
    with pytest.raises(ValueError, match=f"^features of 'img_a' from {store} {message}"):
        features_for(backbone, "vqa", store, [example], tmp_path / "cache", "fp")
    assert not (tmp_path / "cache").exists()  # nothing refused is cached


def _rewrite_h5(path: Path, features: dict[str, np.ndarray]) -> None:
    """Write `path` anew; HDF5 refuses (OSError) while this process holds it open."""
    with h5py.File(path, "w") as f:
        for visual_id, array in features.items():
            f[f"{visual_id}/features"] = array


def test_leaving_with_closes_an_h5_store_so_its_file_can_be_rewritten(tmp_path: Path) -> None:
    path = _write_h5(tmp_path / "f.h5")
    with open_feature_store(path) as store:
        assert store.get("img_a").shape == (36, 8)
        with pytest.raises(OSError):
            _rewrite_h5(path, FEATURES)  # the check can fail: open files are refused
    _rewrite_h5(path, {"img_c": FEATURES["img_a"]})
    with open_feature_store(path) as store:
        assert "img_c" in store and "img_a" not in store


def test_a_failed_feature_read_leaves_the_h5_file_free_to_fix(tmp_path: Path) -> None:
    """The error of a missing id is kept (as a notebook or a test keeps it), and its
    traceback holds the reader's frames: the file is closed all the same, so it can be
    fixed in place and read again in the same process."""
    path = tmp_path / "f.h5"
    _rewrite_h5(path, {"img_a": np.ones((4, 64), np.float32)})
    backbone = VLBackbone.from_config(preset("tiny"))  # feat_dim 64
    example = Example("nlvr2", "1", ("img_a", "img_b"), "nlvr: s", ("true",))
    with pytest.raises(MissingVisualError, match="'img_b'") as kept:
        features_for(backbone, "nlvr2", path, [example], None, None)
    assert kept.tb is not None
    _rewrite_h5(path, {"img_a": np.ones((4, 64), np.float32),
                       "img_b": np.zeros((4, 64), np.float32)})
    fixed = features_for(backbone, "nlvr2", path, [example], None, None)
    assert fixed.table["img_b"].shape == (4, 64)


def _save_png(path: Path, seed: int) -> None:
    """A 16x16 noise image, stored uncompressed: every seed gives a file of the same size."""
    pixels = np.random.default_rng(seed).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, compress_level=0)


@pytest.mark.parametrize("rewrite", ["other size", "same size, later mtime"])
def test_an_image_rewritten_under_its_name_is_encoded_again(tmp_path: Path, monkeypatch,
                                                            rewrite: str) -> None:
    backbone = VLBackbone.from_config(preset("tiny"))  # has a CLIP tower
    images = tmp_path / "images"
    images.mkdir()
    path = images / "img_a.png"
    _save_png(path, seed=0)
    example = Example("vqa", "1", ("img_a",), "vqa: q", ("yes",))

    def cached():
        return features_for(backbone, "vqa", images, [example], tmp_path / "cache", "fp")

    first = cached().table["img_a"]
    encode = backbone.encode_images
    monkeypatch.setattr(backbone, "encode_images", None)  # unchanged: read from the cache
    assert torch.equal(cached().table["img_a"], first)
    monkeypatch.setattr(backbone, "encode_images", encode)
    before = path.stat()
    if rewrite == "other size":
        Image.open(path).crop((0, 0, 8, 16)).save(path, compress_level=0)
        os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))  # only the size tells
        assert path.stat().st_size != before.st_size
    else:
        _save_png(path, seed=1)
        os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns + 1_000_000))
        assert path.stat().st_size == before.st_size
    fresh = features_for(backbone, "vqa", images, [example], None, None).table["img_a"]
    assert not torch.equal(fresh, first)
    assert torch.equal(cached().table["img_a"], fresh)


def test_image_and_frame_folders(tmp_path: Path) -> None:
    images = tmp_path / "images"
    images.mkdir()
    Image.new("RGB", (4, 4)).save(images / "img_a.png")
    folder = ImageFolder(images)
    assert "img_a" in folder and folder.image_path("img_a") == images / "img_a.png"
    with pytest.raises(MissingVisualError, match=f"'img_b' not found in {images}"):
        folder.image_path("img_b")
    clip = tmp_path / "videos" / "clip1"
    clip.mkdir(parents=True)
    for index in (1, 0):
        Image.new("RGB", (4, 4)).save(clip / f"frame_{index:03d}.png")
    frames = VideoFrameFolder(tmp_path / "videos")
    assert [p.name for p in frames.frame_paths("clip1")] == ["frame_000.png", "frame_001.png"]
    assert "clip2" not in frames
    with pytest.raises(MissingVisualError, match="'clip2'"):
        frames.frame_paths("clip2")


def _examples(count: int) -> list[Example]:
    return [Example("gqa", str(index), ("img",), "gqa: q", ("yes",)) for index in range(count)]


@settings(max_examples=40, deadline=None)
@given(count=st.integers(1, 300), ratio=st.floats(0.001, 1.0), seed=st.integers(0, 2**31))
def test_subsample_size_order_and_seed(count: int, ratio: float, seed: int) -> None:
    examples = _examples(count)
    chosen = subsample(examples, ratio, seed)
    assert len(chosen) == max(1, round(ratio * count))
    positions = [int(example.example_id) for example in chosen]
    assert positions == sorted(set(positions))
    assert subsample(examples, ratio, seed) == chosen


def test_subsample_seed_changes_subset_and_full_ratio_keeps_all() -> None:
    examples = _examples(1000)
    assert subsample(examples, 0.01, 1) != subsample(examples, 0.01, 2)
    assert len(subsample(examples, 0.01, 1)) == 10
    assert subsample(examples, 1.0, 5) == examples
    assert subsample([], 0.5, 0) == []


@pytest.mark.parametrize("ratio", [0.0, -0.1, 1.01, float("nan")])
def test_subsample_refuses_bad_ratio(ratio: float) -> None:
    with pytest.raises(ValueError, match="data ratio must be in"):
        subsample(_examples(3), ratio, 0)
