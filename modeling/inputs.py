"""From raw inputs to a `VLBatch`: image preprocessing, tokenisation, padding.

Shared by training (data loaders) and serving (requests) so both feed the model the same
way. Images go through the tower's own preprocessing at its resolution: CLIP's
(`CLIPImageProcessorPil`: resize + centre crop + CLIP's mean / std), SigLIP's
(`SiglipImageProcessorPil`: resize to a square, mean / std 0.5), Florence-2's (resize to a
square, ImageNet mean / std) or BLIP's (`BlipImageProcessorPil`: bicubic resize to a
square, CLIP's mean / std).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from PIL import Image
from transformers import (
    BlipImageProcessorPil,
    CLIPImageProcessorPil,
    PreTrainedTokenizerBase,
    SiglipImageProcessorPil,
)

from modeling.backbone import VLBatch
from modeling.config import MAX_TEXT_TOKENS, MIN_TEXT_TOKENS, BackboneConfig
from modeling.visual import frame_index


@dataclass
class VisualTokens:
    """One example's visual tokens: features [n, feat_dim]; image_order [n] (0/1: NLVR2's
    images; a video's frame indices with `BackboneConfig.frame_order`)."""

    features: torch.Tensor
    image_order: torch.Tensor

    @property
    def count(self) -> int:
        """How many visual tokens (the n of features [n, feat_dim])."""
        return self.features.shape[0]

    @classmethod
    def concat(cls, per_image: list[torch.Tensor]) -> VisualTokens:
        """Tokens of several images [n_i, feat] in order, image i tagged with order id i."""
        order = [torch.full((t.shape[0],), i, dtype=torch.long) for i, t in enumerate(per_image)]
        return cls(torch.cat(per_image), torch.cat(order))

    @classmethod
    def video(cls, tokens: torch.Tensor, config: BackboneConfig) -> VisualTokens:
        """A video's valid tokens [n, feat] (frame-major, `modeling.visual.video_tokens`):
        tagged with their frame's index when `config.frame_order` (with `cell_order`: each
        token its own index, frame * cells + cell), else all 0 (one image)."""
        if config.cell_order:
            return cls(tokens, torch.arange(tokens.shape[0]))
        if config.frame_order:
            return cls(tokens, frame_index(tokens.shape[0], config.frame_grid))
        return cls(tokens, torch.zeros(tokens.shape[0], dtype=torch.long))


def check_features(features: torch.Tensor, feat_dim: int, what: str) -> torch.Tensor:
    """Refuse visual features a backbone taking `feat_dim`-wide features cannot use.

    features [n, width] float: `width` must be `feat_dim`, n >= 1, every value finite.
    Returns `features` unchanged; raises ValueError naming `what` (for training data and
    for requests alike).
    """
    if features.dim() != 2 or not features.is_floating_point():
        raise ValueError(f"{what}: expected float features [tokens, feat_dim], got "
                         f"{features.dtype} with shape {tuple(features.shape)}")
    if features.shape[1] != feat_dim:
        raise ValueError(f"{what} has feat_dim {features.shape[1]}; this backbone takes "
                         f"{feat_dim}")
    if features.shape[0] < 1:
        raise ValueError(f"{what} has no tokens")
    if not bool(torch.isfinite(features).all()):
        raise ValueError(f"{what} holds NaN or infinite values")
    return features


# How many text tokens a batch row keeps: one cut for every row, each row's own, or per row
# the cut for its visual-token count (`BackboneConfig.text_budget`: what its encoder
# positions leave).
TextBudget = int | Sequence[int] | Callable[[int], int]

ImageProcessor = CLIPImageProcessorPil | SiglipImageProcessorPil
IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


def image_processor(image_size: int, tower: str = "clip") -> ImageProcessor:
    """The preprocessing of a `tower` ("clip" / "siglip" / "florence2" / "blip",
    `VisionConfig.tower`) at `image_size` pixels (no download: built from arguments)."""
    if tower == "siglip":
        return SiglipImageProcessorPil(size={"height": image_size, "width": image_size})
    if tower == "florence2":  # Florence-2's processor: square resize, ImageNet mean / std
        return CLIPImageProcessorPil(size={"height": image_size, "width": image_size},
                                     do_center_crop=False, image_mean=IMAGENET_MEAN,
                                     image_std=IMAGENET_STD)
    if tower == "blip":
        return BlipImageProcessorPil(size={"height": image_size, "width": image_size})
    return CLIPImageProcessorPil(size={"shortest_edge": image_size},
                                 crop_size={"height": image_size, "width": image_size})


def images_to_pixels(images: list[Image.Image], processor: ImageProcessor) -> torch.Tensor:
    """PIL images -> pixel_values [n, 3, H, W] float32."""
    rgb = [image.convert("RGB") for image in images]
    return processor(images=rgb, return_tensors="pt")["pixel_values"]


def candidate_ids(tokenizer: PreTrainedTokenizerBase, labels: list[list[str]]) -> torch.Tensor:
    """Candidate labels per row -> token ids [b, c, t] with -100 padding (eos included).

    A row with fewer candidates repeats its first one in the spare columns; callers read
    only the scores of a row's own candidates.
    """
    encoded = [[tokenizer(label)["input_ids"] for label in row] for row in labels]
    count = max(len(row) for row in encoded)
    longest = max(len(ids) for row in encoded for ids in row)
    out = torch.full((len(labels), count, longest), -100, dtype=torch.long)
    for r, row in enumerate(encoded):
        for c in range(count):
            ids = row[c] if c < len(row) else row[0]
            out[r, c, :len(ids)] = torch.tensor(ids)
    return out


def make_batch(tokenizer: PreTrainedTokenizerBase, texts: list[str],
               visuals: list[VisualTokens], targets: list[str] | None = None,
               text_budget: TextBudget = MAX_TEXT_TOKENS, max_target_tokens: int = 64,
               decoder_prompts: list[str] | None = None,
               max_decoder_tokens: int | None = None) -> VLBatch:
    """Tokenise and pad one batch; targets become labels with -100 at padding.

    text_budget: each text is cut to this many tokens (one int, or one per row), or with a
    callable (the backbone's `BackboneConfig.text_budget`) to what it gives for the row's
    visual-token count: more would index past the encoder's positions, which visual tokens
    share on some families.

    decoder_prompts: per row the text its decoder reads before answering
    (`TaskSpec.decoder_prompt_for`; "" for none): tokenised without special tokens into
    `VLBatch.decoder_prompt`, and put before the row's target in its labels.

    max_decoder_tokens: the backbone's `BackboneConfig.max_decoder_tokens` (None: no
    table): targets are cut so that the longest decoder prompt and its target fit in it.
    """
    if any(len(column) != len(texts) for column in (visuals, targets or texts,
                                                    decoder_prompts or texts)):
        raise ValueError("texts, visuals, targets and decoder prompts must have one entry "
                         "per example")
    if isinstance(text_budget, int):
        cuts = [text_budget] * len(texts)
    else:
        cuts = [text_budget(v.count) for v in visuals] if callable(text_budget) \
            else list(text_budget)
    input_ids, text_mask = _texts(tokenizer, texts, cuts)
    longest = max(v.features.shape[0] for v in visuals)
    feat_dim = visuals[0].features.shape[1]
    visual = torch.zeros(len(visuals), longest, feat_dim)
    visual_mask = torch.zeros(len(visuals), longest, dtype=torch.bool)
    image_order = torch.zeros(len(visuals), longest, dtype=torch.long)
    for row, tokens in enumerate(visuals):
        count = tokens.features.shape[0]
        visual[row, :count] = tokens.features
        visual_mask[row, :count] = True
        image_order[row, :count] = tokens.image_order
    prompts = _decoder_prompts(tokenizer, decoder_prompts)
    labels = None
    if targets is not None:
        if max_decoder_tokens is not None:
            longest_prompt = max(map(len, prompts)) if prompts else 0
            max_target_tokens = min(max_target_tokens, max_decoder_tokens - longest_prompt)
        encoded = tokenizer(targets, truncation=True, max_length=max_target_tokens)
        labels = _padded([p + t for p, t in zip(prompts or [[]] * len(targets),
                                                encoded["input_ids"], strict=True)])
    return VLBatch(input_ids=input_ids, text_mask=text_mask,
                   visual=visual, visual_mask=visual_mask, image_order=image_order,
                   labels=labels, decoder_prompt=None if prompts is None else _padded(prompts))


def _texts(tokenizer: PreTrainedTokenizerBase, texts: list[str], cuts: list[int]
           ) -> tuple[torch.Tensor, torch.Tensor]:
    """Each text tokenized and cut at its own `cuts[i]` tokens (special tokens kept, as the
    tokenizer truncates), right-padded -> (input_ids [b, t] long, mask [b, t] bool). One
    tokenizer call per distinct cut (a batch has one or a few)."""
    ids: list[list[int]] = [[] for _ in texts]
    for cut in set(cuts):
        if cut < MIN_TEXT_TOKENS:
            raise ValueError(f"an example's visual tokens leave {cut} text tokens of the "
                             f"encoder's positions; a text needs {MIN_TEXT_TOKENS}")
        rows = [row for row, row_cut in enumerate(cuts) if row_cut == cut]
        encoded = tokenizer([texts[row] for row in rows], truncation=True, max_length=cut)
        for row, row_ids in zip(rows, encoded["input_ids"], strict=True):
            ids[row] = row_ids
    longest = max(map(len, ids))
    input_ids = torch.full((len(texts), longest), tokenizer.pad_token_id, dtype=torch.long)
    mask = torch.zeros(len(texts), longest, dtype=torch.bool)
    for row, row_ids in enumerate(ids):
        input_ids[row, :len(row_ids)] = torch.tensor(row_ids, dtype=torch.long)
        mask[row, :len(row_ids)] = True
    return input_ids, mask


def _decoder_prompts(tokenizer: PreTrainedTokenizerBase, prompts: list[str] | None
                     ) -> list[list[int]] | None:
    """Each prompt's ids without special tokens (the decoder's start token precedes them,
    no end follows); None when no row has a prompt."""
    if not prompts or not any(prompts):
        return None
    return [decoder_prompt_ids(tokenizer, p) for p in prompts]


def decoder_prompt_ids(tokenizer: PreTrainedTokenizerBase, prompt: str) -> list[int]:
    """A decoder prompt's ids, without special tokens ("" -> [])."""
    return tokenizer(prompt, add_special_tokens=False)["input_ids"] if prompt else []


def _padded(rows: list[list[int]]) -> torch.Tensor:
    """Id lists -> [b, longest] long, -100 after each row's own ids."""
    out = torch.full((len(rows), max(1, max(map(len, rows)))), -100, dtype=torch.long)
    for index, row in enumerate(rows):
        out[index, :len(row)] = torch.tensor(row, dtype=torch.long)
    return out
