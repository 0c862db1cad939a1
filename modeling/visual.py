"""Visual inputs: pooling CLIP grids and video frames to tokens, and the visual projection.

VL-Adapter (Sung et al., CVPR 2022, Sec. 3) feeds CLIP RN101 grid features (7x7x2048)
max-pooled to 6x6 = 36 tokens per image; video tasks feed one 512-d feature per frame,
pooled or padded to 64 tokens. A backbone may keep a small grid per frame instead
(`BackboneConfig.frame_grid`) and tag tokens with their frame index so the order
embedding carries time (`frame_order`). The projection follows VL-T5's `VisualEmbedding`:

    token = Norm(Linear(feat -> d)) + Norm(Linear(box(5) -> d)) + image_emb[image]
            (+ E[vocab - 1 - object])                           (object_order only)

Norm is LayerNorm, or T5's RMS norm (no mean, no bias) for VL-T5. With `object_order`
(VL-T5 / VL-BART), token j of image i also adds a row of the LM's shared token embedding
E [vocab, d] counted from the end of the vocabulary: object j of every image reads row
vocab - 1 - j, i.e. `<vis_extra_id_j>` of the VL-T5 tokenizer (VL-T5's
`obj_order_embedding`, the same module as the LM's; NLVR2 restarts j at each image).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from transformers.models.t5.modeling_t5 import T5LayerNorm

from modeling.config import frame_cells


class VisualProjection(nn.Module):
    """Project visual features into the LM's embedding space.

    Args:
        feat_dim: width of an input feature.
        d_model: LM width.
        box_dim: box encoding width (x1, y1, x2, y2, area); zeros when there are no boxes.
        n_images: number of image-order embeddings (2 for NLVR2 pairs; with frame order,
            the video frames' indices share them).
        rms_eps: None: LayerNorms (VL-BART, ours); a float: T5's RMS norms with this
            epsilon (VL-T5).
        object_order: add the object-order rows of the shared token embedding (VL-T5 /
            VL-BART); `forward` then needs `token_embedding`.
    """

    def __init__(self, feat_dim: int, d_model: int, box_dim: int = 5, n_images: int = 2,
                 rms_eps: float | None = None, object_order: bool = False):
        super().__init__()
        self.feat_linear = nn.Linear(feat_dim, d_model)
        self.feat_norm = _norm(d_model, rms_eps)
        self.box_linear = nn.Linear(box_dim, d_model)
        self.box_norm = _norm(d_model, rms_eps)
        self.image_order = nn.Embedding(n_images, d_model)
        self.box_dim = box_dim
        self.object_order = object_order

    def forward(
        self,
        features: torch.Tensor,
        image_order: torch.Tensor,
        boxes: torch.Tensor | None = None,
        token_embedding: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """features [b, n, feat_dim], image_order [b, n] int, boxes [b, n, 5] -> [b, n, d].

        token_embedding: the LM's shared embedding weight [vocab, d] (object order only;
        passed, not held, so it stays the LM's frozen tensor and not a projection one).
        """
        if boxes is None:
            boxes = features.new_zeros(*features.shape[:2], self.box_dim)
        feat = self.feat_norm(self.feat_linear(features))
        box = self.box_norm(self.box_linear(boxes))
        out = feat + box + self.image_order(image_order)
        if self.object_order:
            if token_embedding is None:
                raise ValueError("object-order embedding needs the LM's token embedding")
            vocab = token_embedding.shape[0]
            if features.shape[1] > vocab:  # object ids < tokens per row (no device sync)
                raise ValueError(f"{features.shape[1]} visual tokens in a row; the "
                                 f"object-order embedding has {vocab} rows")
            objects = object_order_ids(image_order, self.image_order.num_embeddings)
            out = out + F.embedding(vocab - 1 - objects, token_embedding)
        return out


def _norm(d_model: int, rms_eps: float | None) -> nn.Module:
    return nn.LayerNorm(d_model) if rms_eps is None else T5LayerNorm(d_model, eps=rms_eps)


def object_order_ids(image_order: torch.Tensor, n_images: int) -> torch.Tensor:
    """Each visual token's index among the earlier tokens of its own image.

    image_order [b, n] long -> [b, n] long; [0,0,0,1,1] -> [0,1,2,0,1] (VL-T5's NLVR2
    `obj_order_ids`: arange per image). Padding tokens get ids too; they are masked.
    """
    one_hot = F.one_hot(image_order, n_images)  # [b, n, images]
    before = one_hot.cumsum(1) - one_hot  # tokens of each image before this one
    return before.gather(2, image_order.unsqueeze(-1)).squeeze(-1)


class IdentityVisual(nn.Module):
    """The visual "projection" of a tower whose output already is LM tokens (Florence-2's
    projector): features pass unchanged; no image-order or box embedding, no parameters."""

    def forward(self, features: torch.Tensor, image_order: torch.Tensor,
                boxes: torch.Tensor | None = None,
                token_embedding: torch.Tensor | None = None) -> torch.Tensor:
        """features [b, n, d_model] -> the same tensor (image_order, boxes and the token
        embedding unused)."""
        return features


def visual_module(kind: str, feat_dim: int, d_model: int, box_dim: int, n_images: int,
                  rms_eps: float | None = None, object_order: bool = False) -> nn.Module:
    """The backbone's `visual` part for `BackboneConfig.visual` ("projection" | "identity");
    rms_eps / object_order: the papers' projection (see `VisualProjection`)."""
    if kind == "projection":
        return VisualProjection(feat_dim, d_model, box_dim, n_images, rms_eps=rms_eps,
                                object_order=object_order)
    if feat_dim != d_model:
        raise ValueError(f"an identity visual projection needs feat_dim == d_model, got "
                         f"{feat_dim} and {d_model}")
    return IdentityVisual()


def pool_grid(patch_tokens: torch.Tensor, grid: int) -> torch.Tensor:
    """Max-pool a square patch grid to `grid x grid` tokens.

    patch_tokens [n, side*side, dim] (CLS excluded) -> [n, grid*grid, dim].
    """
    n, count, dim = patch_tokens.shape
    side = int(round(count**0.5))
    if side * side != count:
        raise ValueError(f"expected a square patch grid, got {count} patches")
    maps = patch_tokens.transpose(1, 2).reshape(n, dim, side, side)
    pooled = F.adaptive_max_pool2d(maps, grid)
    return pooled.flatten(2).transpose(1, 2)


def tower_grid(tower: nn.Module, pixel_values: torch.Tensor, grid: int,
               has_cls: bool) -> torch.Tensor:
    """A ViT tower's patch tokens max-pooled to a grid (CLIP's CLS token dropped; SigLIP
    has none).

    pixel_values [n, 3, H, W] -> [n, grid*grid, hidden].
    """
    hidden = tower(pixel_values=pixel_values).last_hidden_state  # [n, (1 +) patches, hidden]
    return pool_grid(hidden[:, 1:] if has_cls else hidden, grid)


def fit_frames(frames: torch.Tensor, max_frames: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Pool (uniform segments, mean) or zero-pad frame features to `max_frames` frames.

    frames [n_frames, *cell, dim] (no cell dims: one vector per frame) -> (tokens
    [max_frames, *cell, dim], valid [max_frames] bool); each cell is pooled over time on
    its own.
    """
    n_frames = frames.shape[0]
    if n_frames == 0:
        raise ValueError("a video needs at least one frame")
    if n_frames > max_frames:
        flat = frames.reshape(n_frames, -1)
        pooled = F.adaptive_avg_pool1d(flat.T.unsqueeze(0), max_frames)[0].T
        return (pooled.reshape(max_frames, *frames.shape[1:]),
                torch.ones(max_frames, dtype=torch.bool, device=frames.device))
    padded = frames.new_zeros(max_frames, *frames.shape[1:])
    padded[:n_frames] = frames
    valid = torch.zeros(max_frames, dtype=torch.bool, device=frames.device)
    valid[:n_frames] = True
    return padded, valid


def video_tokens(frames: Sequence[torch.Tensor], max_frames: int, frame_grid: int = 0
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """One video as tokens. frame_grid 0: each frame's features averaged to one vector;
    k > 0: each frame's grid max-pooled to k x k cells (`pool_grid`; a frame sent as one
    vector fills every cell). The frames are then pooled or padded to `max_frames`
    (`fit_frames`). Training and serving both use this, so a video is the same tokens
    whether the tower ran in a backbone call or behind the cache.

    frames: each frame's features [tokens_i, dim] (tokens_i a square: its pooled grid, or
    what a client sent; a tensor [n_frames, tokens, dim] works too) -> (tokens
    [max_frames * frame_cells, dim] frame-major, valid [max_frames * frame_cells] bool).
    """
    if len(frames) == 0:
        raise ValueError("a video needs at least one frame")
    if frame_grid == 0:
        return fit_frames(torch.stack([frame.mean(dim=0) for frame in frames]), max_frames)
    cells = torch.stack([pool_grid(frame.unsqueeze(0), frame_grid)[0] for frame in frames])
    tokens, valid = fit_frames(cells, max_frames)  # [max_frames, k*k, dim], [max_frames]
    per_frame = cells.shape[1]
    return tokens.reshape(-1, tokens.shape[-1]), valid.repeat_interleave(per_frame)


def frame_index(n_tokens: int, frame_grid: int) -> torch.Tensor:
    """Frame index of each of a video's first `n_tokens` tokens (frame-major, as
    `video_tokens` lays them out) -> [n_tokens] long."""
    return torch.arange(n_tokens) // frame_cells(frame_grid)
