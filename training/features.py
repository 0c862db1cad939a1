"""Visual tokens of every example, computed once by the frozen vision tower and cached.

Sources (`open_visual_source`): a folder of images (encoded by the backbone's CLIP tower),
a folder of video frame folders (one pooled vector or a small grid per frame, pooled or
padded to `max_frames`: `modeling.visual.video_tokens`), both also searched in
sub-folders as the datasets' releases lay them out, or a feature store (.h5 /
.safetensors / folder of .npz). Encoded features are kept on disk in one safetensors file
per (backbone fingerprint, source folder), so each image is encoded once across runs; the
file's metadata keeps each id's `stamp` (its files' sizes and modification times), so an
image rewritten under the same name is encoded again, never served stale.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from modeling.backbone import VLBackbone
from modeling.inputs import VisualTokens, check_features, image_processor, images_to_pixels
from modeling.tasks import TASKS, VisualInput
from modeling.visual import video_tokens
from training.data.example import Example
from training.data.visual_stores import (
    FeatureStore,
    ImageFolder,
    VideoFrameFolder,
    VisualSource,
    load_image,
    open_visual_source,
)

ENCODE_CHUNK = 64


class VisualFeatures:
    """visual id -> tokens [n, feat_dim] for one task's source; `tokens(example)` builds
    the example's VisualTokens (two images for NLVR2, tagged 0 and 1)."""

    def __init__(self, backbone: VLBackbone, source: str | Path, visual_input: VisualInput,
                 cache_dir: str | Path | None = None, fingerprint: str | None = None):
        self.backbone, self.source = backbone, Path(source)
        self.visual_input = visual_input
        self.cache_file = None
        if cache_dir is not None and fingerprint is not None:
            key = hashlib.sha256(f"{fingerprint}|{self.source.resolve()}".encode()).hexdigest()
            self.cache_file = Path(cache_dir) / f"features-{key[:24]}.safetensors"
        self.table: dict[str, torch.Tensor] = {}
        self.stamps: dict[str, str] = {}  # id -> its files' stamp when its tokens were made
        if self.cache_file is not None and self.cache_file.is_file():
            with safe_open(self.cache_file, framework="pt") as cached:
                self.table = {vid: cached.get_tensor(vid) for vid in cached.keys()}
                self.stamps = dict(cached.metadata() or {})  # caches before stamps: none

    def prepare(self, visual_ids: Iterable[str]) -> None:
        """Encode every id not in the table yet, or whose files changed since (in chunks),
        check every id's features fit the backbone (cached ones too: a cache may predate
        the check), save the cache."""
        wanted = sorted(set(visual_ids))
        with open_visual_source(self.source,
                                self.visual_input is VisualInput.VIDEO_FRAMES) as source:
            stamps = {vid: source.stamp(vid) for vid in wanted} \
                if self.cache_file is not None else {}
            stale = [vid for vid in wanted
                     if vid not in self.table or self.stamps.get(vid) != stamps.get(vid)]
            self._fill(source, stale)
        for vid in wanted:
            check_features(self.table[vid], self.backbone.config.feat_dim,
                           f"features of {vid!r} from {self.source}")
        self.stamps.update(stamps)
        if stale and self.cache_file is not None:
            self.cache_file.parent.mkdir(parents=True, exist_ok=True)
            # Written aside and renamed: runs sharing a cache folder read either the old
            # file or the new one, never a half-written one.
            staging = self.cache_file.with_name(f"{self.cache_file.name}.{os.getpid()}.tmp")
            save_file({k: v.contiguous() for k, v in self.table.items()}, staging,
                      metadata={vid: self.stamps.get(vid, "") for vid in self.table})
            os.replace(staging, self.cache_file)

    def _fill(self, source: VisualSource, stale: list[str]) -> None:
        if isinstance(source, ImageFolder):
            self._encode_images(source, stale)
        elif isinstance(source, VideoFrameFolder):
            for vid in stale:
                self.table[vid] = self._encode_video(source.frame_paths(vid))
        else:
            for vid in stale:
                self.table[vid] = self._from_store(source, vid)

    def _from_store(self, store: FeatureStore, vid: str) -> torch.Tensor:
        features = torch.from_numpy(store.get(vid)).float()
        if self.visual_input is VisualInput.VIDEO_FRAMES:
            config = self.backbone.config  # one vector per frame: [n_frames, 1, feat]
            tokens, valid = video_tokens(features.unsqueeze(1), config.max_frames,
                                         config.frame_grid)
            return tokens[valid]
        return features

    def _encode_images(self, folder: ImageFolder, ids: list[str]) -> None:
        processor = image_processor(self.backbone.config.vision.image_size,
                                    self.backbone.config.vision.tower)
        for start in range(0, len(ids), ENCODE_CHUNK):
            chunk = ids[start:start + ENCODE_CHUNK]
            images = [load_image(folder.image_path(vid)) for vid in chunk]
            pixels = images_to_pixels(images, processor).to(self._device)
            encoded = self.backbone.encode_images(pixels)
            for vid, tokens in zip(chunk, encoded, strict=True):
                self.table[vid] = tokens.to("cpu", copy=True)

    def _encode_video(self, frame_paths: list[Path]) -> torch.Tensor:
        processor = image_processor(self.backbone.config.vision.image_size,
                                    self.backbone.config.vision.tower)
        pixels = images_to_pixels([load_image(p) for p in frame_paths], processor)
        tokens, valid = self.backbone.encode_frames(pixels.to(self._device))
        return tokens[valid].to("cpu", copy=True)

    @property
    def _device(self) -> torch.device:
        """Where the tower runs: the backbone's device (the table itself stays on the CPU,
        where batches are built)."""
        return next(self.backbone.parameters()).device

    def tokens(self, example: Example) -> VisualTokens:
        if self.visual_input is VisualInput.VIDEO_FRAMES:
            return VisualTokens.video(self.table[example.visual_ids[0]], self.backbone.config)
        return VisualTokens.concat([self.table[vid] for vid in example.visual_ids])


def features_for(backbone: VLBackbone, task: str, source: str | Path, examples: list[Example],
                 cache_dir: str | Path | None, fingerprint: str | None) -> VisualFeatures:
    """Visual features of `examples`, ready to use (missing ids name the id and source)."""
    features = VisualFeatures(backbone, source, TASKS[task].visual_input, cache_dir, fingerprint)
    features.prepare(v for e in examples for v in e.visual_ids)
    return features
