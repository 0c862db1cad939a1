"""An LRU of vision-tower outputs keyed by the sha256 of the encoded image.

The same picture asked about by several requests (or tasks) runs through CLIP once, on
whichever `VisionEncoder` the server was started with (torch, onnxruntime or triton).
Entries are grid features [image_grid**2, feat_dim] float32 on the host; the cache is
bounded by entry count and guarded by one lock (the engine thread is its only writer).
"""

from __future__ import annotations

import threading
from collections import OrderedDict

import torch

from modeling.backbone import VLBackbone
from modeling.inputs import VisualTokens
from modeling.visual import video_tokens
from serving.limits import ImageInput
from serving.vision_backends import TorchVisionEncoder, VisionEncoder


class VisionCache:
    """LRU map sha256 hex -> features [tokens, feat_dim]."""

    def __init__(self, max_entries: int, on_event=None):
        """on_event(event): called with "hit", "miss" or "eviction" (metrics)."""
        self.max_entries = max_entries
        self._entries: OrderedDict[str, torch.Tensor] = OrderedDict()
        self._lock = threading.Lock()
        self._on_event = on_event or (lambda event: None)

    def get(self, key: str) -> torch.Tensor | None:
        with self._lock:
            features = self._entries.get(key)
            if features is not None:
                self._entries.move_to_end(key)
        self._on_event("hit" if features is not None else "miss")
        return features

    def put(self, key: str, features: torch.Tensor) -> None:
        if self.max_entries <= 0:
            return
        evicted = 0
        with self._lock:
            self._entries[key] = features
            self._entries.move_to_end(key)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)
                evicted += 1
        for _ in range(evicted):
            self._on_event("eviction")

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def __contains__(self, key: str) -> bool:
        with self._lock:
            return key in self._entries


def encode_pixels(encoder: VisionEncoder, pixels: torch.Tensor, device: torch.device,
                  dtype: torch.dtype) -> torch.Tensor:
    """pixels [n, 3, H, W] -> features [n, grid*grid, feat_dim] float32 on the host.

    The torch tower gets the backbone's device and dtype; the other backends take float32
    (they copy to their own runtime), so bf16 serving does not round their inputs.
    """
    if isinstance(encoder, TorchVisionEncoder):
        pixels = pixels.to(device, dtype)
    else:
        pixels = pixels.float()
    return encoder.encode(pixels).float().cpu()


def visual_tokens(backbone: VLBackbone, cache: VisionCache,
                  examples: list[tuple[list[ImageInput], bool]], device: torch.device,
                  dtype: torch.dtype, encoder: VisionEncoder | None = None
                  ) -> list[VisualTokens]:
    """Visual tokens of each example; the tower runs once over the distinct uncached images.

    encoder: where pixels become features (None: the backbone's own tower in torch).

    examples: (images or frames in order, is_video). Images give grid features
    [grid**2, feat] each (NLVR2: two, tagged 0/1); a video's frames become tokens by
    `modeling.visual.video_tokens`, the function `VLBackbone.encode_frames` uses.
    Returned features are float32 on the host.
    """
    features: dict[str, torch.Tensor] = {}
    pending: dict[str, torch.Tensor] = {}
    for image in (img for images, _ in examples for img in images if img.key is not None):
        if image.key in features or image.key in pending:
            continue
        cached = cache.get(image.key)
        if cached is not None:
            features[image.key] = cached
        else:
            pending[image.key] = image.pixels
    if pending:
        encoder = encoder if encoder is not None else TorchVisionEncoder(backbone)
        computed = encode_pixels(encoder, torch.stack(list(pending.values())), device, dtype)
        for key, tensor in zip(pending, computed, strict=True):
            features[key] = tensor
            cache.put(key, tensor)
    out = []
    for images, is_video in examples:
        per_image = [img.features if img.key is None else features[img.key] for img in images]
        if is_video:
            tokens, valid = video_tokens(per_image, backbone.config.max_frames,
                                         backbone.config.frame_grid)
            out.append(VisualTokens.video(tokens[valid], backbone.config))
        else:
            out.append(VisualTokens.concat(per_image))
    return out
