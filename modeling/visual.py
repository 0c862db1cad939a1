"""Visual inputs: pooling CLIP grids and video frames to tokens, and the visual projection.

VL-Adapter (Sung et al., CVPR 2022, Sec. 3) feeds CLIP RN101 grid features (7x7x2048)
max-pooled to 6x6 = 36 tokens per image; video tasks feed one 512-d feature per frame,
pooled or padded to 64 tokens. The projection follows VL-T5's `VisualEmbedding`:

    token = LayerNorm(Linear(feat -> d)) + LayerNorm(Linear(box(5) -> d)) + order_emb[image]
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


class VisualProjection(nn.Module):
    """Project visual features into the LM's embedding space.

    Args:
        feat_dim: width of an input feature.
        d_model: LM width.
        box_dim: box encoding width (x1, y1, x2, y2, area); zeros when there are no boxes.
        n_images: number of image-order embeddings (2 for NLVR2 pairs).
    """

    def __init__(self, feat_dim: int, d_model: int, box_dim: int = 5, n_images: int = 2):
        super().__init__()
        self.feat_linear = nn.Linear(feat_dim, d_model)
        self.feat_norm = nn.LayerNorm(d_model)
        self.box_linear = nn.Linear(box_dim, d_model)
        self.box_norm = nn.LayerNorm(d_model)
        self.image_order = nn.Embedding(n_images, d_model)
        self.box_dim = box_dim

    def forward(
        self,
        features: torch.Tensor,
        image_order: torch.Tensor,
        boxes: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """features [b, n, feat_dim], image_order [b, n] int, boxes [b, n, 5] -> [b, n, d]."""
        if boxes is None:
            boxes = features.new_zeros(*features.shape[:2], self.box_dim)
        feat = self.feat_norm(self.feat_linear(features))
        box = self.box_norm(self.box_linear(boxes))
        return feat + box + self.image_order(image_order)


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
    """Pool (uniform segments, mean) or zero-pad frame features to `max_frames` tokens.

    frames [n_frames, dim] -> (tokens [max_frames, dim], valid [max_frames] bool).
    """
    n_frames, dim = frames.shape
    if n_frames == 0:
        raise ValueError("a video needs at least one frame")
    if n_frames > max_frames:
        pooled = F.adaptive_avg_pool1d(frames.T.unsqueeze(0), max_frames)[0].T
        return pooled, torch.ones(max_frames, dtype=torch.bool, device=frames.device)
    padded = frames.new_zeros(max_frames, dim)
    padded[:n_frames] = frames
    valid = torch.zeros(max_frames, dtype=torch.bool, device=frames.device)
    valid[:n_frames] = True
    return padded, valid


def video_tokens(frames: Sequence[torch.Tensor], max_frames: int
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """One video as tokens: each frame's features averaged to one vector, then the frames
    pooled or padded to `max_frames` (`fit_frames`). Training and serving both use this, so a
    video is the same tokens whether the tower ran in a backbone call or behind the cache.

    frames: each frame's features [tokens_i, dim] (its pooled grid, or what a client sent;
    a tensor [n_frames, tokens, dim] works too) -> (tokens [max_frames, dim], valid
    [max_frames] bool).
    """
    if len(frames) == 0:
        raise ValueError("a video needs at least one frame")
    return fit_frames(torch.stack([frame.mean(dim=0) for frame in frames]), max_frames)
