"""The frozen VL encoder-decoder: CLIP / SigLIP tower (optional) -> visual projection ->
T5 / BART.

Encoder input per row (VL-T5 / VL-Adapter layout, visual tokens after the text):

    [ prompt vectors (prompt tuning, 0..L) | text tokens | visual tokens ]

Florence-2 (`modeling.families.florence2`: DaViT + projector as the tower, an identity
visual projection) places the image tokens first, as its processor does:

    [ prompt vectors | visual tokens | text tokens ]

Rows are packed to the left and right-padded, so a row in a mixed batch sees exactly the
positions it would see alone (T5's relative and BART's learned positions agree).

`visual_semantics` "vlt5" (the `vl-t5-*` / `vl-bart-*` presets) is the papers' encoder:
visual tokens carry no text positions, and get an object-order embedding
(`modeling.joint_encoder`, `modeling.visual`); "plain" gives every token a position.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import (
    AutoTokenizer,
    BartConfig,
    BartForConditionalGeneration,
    CLIPVisionConfig,
    CLIPVisionModel,
    PreTrainedTokenizerBase,
    SiglipVisionConfig,
    SiglipVisionModel,
    T5Config,
    T5ForConditionalGeneration,
)
from transformers.modeling_outputs import BaseModelOutput

from modeling import hooks
from modeling.bank import AdapterBank
from modeling.config import BackboneConfig
from modeling.joint_encoder import PROMPT, TEXT, VISUAL, JointEncoder
from modeling.kernels import RowIndex, gathered_rows
from modeling.tokenizer import tokenizer_digest
from modeling.visual import tower_grid, video_tokens, visual_module

CONFIG_FILE = "vladapter_backbone.json"
VISUAL_FILE = "visual_projection.safetensors"
# VisionConfig.tower -> (its Hugging Face config class, model class).
VISION_TOWERS = {"clip": (CLIPVisionConfig, CLIPVisionModel),
                 "siglip": (SiglipVisionConfig, SiglipVisionModel)}


@dataclass
class VLBatch:
    """One batch of model inputs (already tokenised and featurised).

    input_ids [b, t] long, text_mask [b, t] bool; visual [b, v, feat_dim] float,
    visual_mask [b, v] bool, image_order [b, v] long (0/1: which image of an NLVR2 pair),
    boxes [b, v, 5] or None; labels [b, y] long with -100 at padding, or None.
    decoder_prompt [b, p] long: each row's decoder prompt ids (`TaskSpec.decoder_prompt_for`,
    read after the start token), -100 after a row's own; None when no row has one. With
    labels, row i's labels begin with its prompt (the decoder reads it teacher-forced) and
    `answer_labels` leaves it out of the loss.
    """

    input_ids: torch.Tensor
    text_mask: torch.Tensor
    visual: torch.Tensor
    visual_mask: torch.Tensor
    image_order: torch.Tensor
    boxes: torch.Tensor | None = None
    labels: torch.Tensor | None = None
    decoder_prompt: torch.Tensor | None = None

    def decoder_prompts(self) -> list[list[int]]:
        """Per row its decoder prompt ids (empty lists without one)."""
        if self.decoder_prompt is None:
            return [[] for _ in range(self.size)]
        return [[t for t in row if t != -100] for row in self.decoder_prompt.tolist()]

    @property
    def answer_labels(self) -> torch.Tensor | None:
        """labels [b, y] with each row's decoder prompt positions set to -100: the tokens
        a loss is taken on (the answer and its eos)."""
        if self.labels is None or self.decoder_prompt is None:
            return self.labels
        length = (self.decoder_prompt != -100).sum(1, keepdim=True)  # [b, 1]
        position = torch.arange(self.labels.shape[1], device=self.labels.device)
        return self.labels.masked_fill(position[None, :] < length, -100)

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> VLBatch:
        """The batch on `device`; with `dtype`, its floating tensors (visual features,
        boxes) in that type too, the backbone's (ids, masks and labels keep theirs)."""
        moved = {k: (v.to(device, dtype if dtype is not None and v.is_floating_point()
                          else v.dtype) if isinstance(v, torch.Tensor) else v)
                 for k, v in self.__dict__.items()}
        return VLBatch(**moved)

    def select(self, rows: torch.Tensor | list[int]) -> VLBatch:
        """The sub-batch of `rows` (used to run one example alone in oracle tests)."""
        return VLBatch(**{k: (v[rows] if isinstance(v, torch.Tensor) else v)
                          for k, v in self.__dict__.items()})

    @property
    def size(self) -> int:
        return self.input_ids.shape[0]


def pack_left(embeds: torch.Tensor, valid: torch.Tensor, kinds: torch.Tensor | None = None
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Move each row's valid tokens to the front, keeping their order.

    embeds [b, n, d], valid [b, n] bool, kinds [b, n] long (`modeling.joint_encoder`) or
    None -> (packed [b, L, d], mask [b, L], kinds [b, L] or None), L = max valid.
    """
    order = torch.sort((~valid).to(torch.int8), dim=1, stable=True).indices
    longest = int(valid.sum(1).max())
    order = order[:, :longest]
    packed = torch.gather(embeds, 1, order.unsqueeze(-1).expand(-1, -1, embeds.shape[-1]))
    return (packed, torch.gather(valid, 1, order),
            None if kinds is None else torch.gather(kinds, 1, order))


def with_prompt(embeds: torch.Tensor, valid: torch.Tensor, kinds: torch.Tensor,
                bank: AdapterBank | None, index: RowIndex | None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Each row's prompt vectors (prompt tuning) before its input, rows packed left.

    embeds [b, n, d], valid [b, n] bool, kinds [b, n] long -> (inputs [b, L, d], mask
    [b, L] bool, kinds [b, L] long: PROMPT for the prompt vectors).
    """
    if bank is not None and bank.prompt is not None:
        prompt = gathered_rows(bank.prompt, index).to(embeds.dtype)
        length = gathered_rows(bank.prompt_length, index)
        prompt_valid = torch.arange(prompt.shape[1], device=embeds.device) < length[:, None]
        embeds, valid = torch.cat([prompt, embeds], 1), torch.cat([prompt_valid, valid], 1)
        kinds = torch.cat([torch.full(prompt_valid.shape, PROMPT, device=embeds.device),
                           kinds], 1)
    return pack_left(embeds, valid, kinds)


class VLBackbone(nn.Module):
    """The frozen backbone. Its parameters never require grad and are never written."""

    def __init__(self, config: BackboneConfig, lm: nn.Module | None = None,
                 vision: nn.Module | None = None, tokenizer: PreTrainedTokenizerBase | None = None):
        """Build from `config`; `lm` / `vision` are loaded Hugging Face parts, if given.

        tokenizer: the LM's tokenizer (saved and loaded with the backbone), if known.
        """
        super().__init__()
        self.tokenizer = tokenizer
        if config.lm_type not in ("t5", "bart"):
            raise ValueError(f"lm_type must be 't5' or 'bart', got {config.lm_type!r}")
        self.config = config
        self.vision = vision
        if vision is None and config.vision is not None:
            config_cls, model_cls = VISION_TOWERS[config.vision.tower]
            self.vision = model_cls(config_cls(**config.vision.to_hf_kwargs()))
        papers = config.visual_semantics == "vlt5"
        # VL-T5 normalises its visual projection with T5's RMS norm, VL-BART with LayerNorm.
        rms_eps = float(config.lm.get("layer_norm_epsilon", 1e-6)) \
            if papers and config.lm_type == "t5" else None
        self.visual = visual_module(config.visual, config.feat_dim, config.d_model,
                                    config.box_dim, config.n_images, rms_eps=rms_eps,
                                    object_order=papers)
        self.lm = lm
        if lm is None:
            self.lm = T5ForConditionalGeneration(T5Config(**config.lm)) \
                if config.lm_type == "t5" else BartForConditionalGeneration(BartConfig(**config.lm))
        self.joint_encoder = JointEncoder(config.lm_type, self.lm) if papers else None
        self._install_and_freeze()

    def _install_and_freeze(self, route_attention=hooks.route_through_interface) -> None:
        """Find the adapter sites (`hooks.install`) and freeze every weight: the last step
        of building any family's backbone."""
        self.adapter_context = hooks.install(self, self.config.lm_type, self.lm,
                                             route_attention)
        self.requires_grad_(False)
        self.eval()

    # --- construction ------------------------------------------------------------------
    @classmethod
    def from_config(cls, config: BackboneConfig, seed: int = 0,
                    device: str | torch.device = "cpu",
                    tokenizer: PreTrainedTokenizerBase | None = None) -> VLBackbone:
        """Random weights from a config (seeded); device "meta" builds without memory."""
        with torch.device(device):
            if str(device) != "meta":
                torch.manual_seed(seed)
            return cls(config, tokenizer=tokenizer)

    @classmethod
    def from_pretrained(cls, path: str | Path) -> VLBackbone:
        """Load a backbone saved by `save_pretrained` (or assembled by hand).

        Layout: `vladapter_backbone.json` (our config), `lm/` (Hugging Face T5 or BART),
        `vision/` (Hugging Face CLIPVisionModel or SiglipVisionModel, as the config's
        `vision.tower` says; optional), `visual_projection.safetensors`,
        `tokenizer/` (any Hugging Face tokenizer, optional).
        """
        root = Path(path)
        config_file = root / CONFIG_FILE
        if not config_file.is_file():
            raise FileNotFoundError(f"{config_file} not found: not a vladapter backbone folder")
        config = BackboneConfig.from_dict(json.loads(config_file.read_text()))
        lm_cls = T5ForConditionalGeneration if config.lm_type == "t5" else \
            BartForConditionalGeneration
        lm = lm_cls.from_pretrained(root / "lm")
        vision = None
        if config.vision is not None:
            vision = VISION_TOWERS[config.vision.tower][1].from_pretrained(root / "vision")
        tokenizer = None
        if (root / "tokenizer").is_dir():
            tokenizer = AutoTokenizer.from_pretrained(root / "tokenizer")
        model = cls(config, lm=lm, vision=vision, tokenizer=tokenizer)
        model.visual.load_state_dict(load_file(root / VISUAL_FILE))
        return model.eval()

    def save_pretrained(self, path: str | Path) -> None:
        root = Path(path)
        root.mkdir(parents=True, exist_ok=True)
        (root / CONFIG_FILE).write_text(json.dumps(self.config.to_dict(), indent=2))
        self.lm.save_pretrained(root / "lm")
        if self.vision is not None:
            self.vision.save_pretrained(root / "vision")
        save_file({k: v.contiguous() for k, v in self.visual.state_dict().items()},
                  root / VISUAL_FILE)
        if self.tokenizer is not None:
            self.tokenizer.save_pretrained(root / "tokenizer")

    def fingerprint(self) -> str:
        """sha256 over the config (canonical JSON), the tokenizer and every weight in name
        order: an adapter meets only the backbone it was trained on, token ids included.

        The tokenizer counts through `tokenizer_digest` (vocabulary, merges, special tokens,
        pre- and post-processing); a backbone without one counts as "no tokenizer".
        """
        digest = hashlib.sha256(json.dumps(self.config.to_dict(), sort_keys=True).encode())
        tokenizer = "none" if self.tokenizer is None else tokenizer_digest(self.tokenizer)
        digest.update(f"tokenizer:{tokenizer}".encode())
        for name, tensor in sorted(self.state_dict().items()):
            digest.update(name.encode())
            digest.update(tensor.detach().to("cpu").contiguous().view(torch.uint8).numpy())
        return "sha256:" + digest.hexdigest()

    # --- visual inputs -----------------------------------------------------------------
    def image_tokens(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """pixel_values [n, 3, H, W] -> grid features [n, image_grid**2, feat_dim]
        (`modeling.visual.tower_grid`; differentiable: pre-training trains the tower)."""
        if self.vision is None:
            raise ValueError("this backbone has no vision tower: pass precomputed features")
        return tower_grid(self.vision, pixel_values, self.config.image_grid,
                          self.config.vision.has_cls)

    @property
    def tokens_per_image(self) -> int:
        """How many visual tokens `image_tokens` gives per image (`BackboneConfig`'s count:
        the pooled grid, a BLIP ViT's 1 + patches, Florence-2's DaViT tokens)."""
        return self.config.tokens_per_image

    def frame_tokens(self, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """frames [n_frames, 3, H, W] of one video -> (tokens [max_frames * cells, feat],
        valid) (`modeling.visual.video_tokens` of each frame's grid features; cells per
        frame: `modeling.visual.frame_cells(config.frame_grid)`)."""
        return video_tokens(self.image_tokens(frames), self.config.max_frames,
                            self.config.frame_grid)

    @torch.no_grad()
    def encode_images(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """The frozen tower's features of images (see `image_tokens`)."""
        return self.image_tokens(pixel_values)

    @torch.no_grad()
    def encode_frames(self, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The frozen tower's tokens of one video's frames (see `frame_tokens`)."""
        return self.frame_tokens(frames)

    # --- forward -----------------------------------------------------------------------
    def encoder_inputs(self, batch: VLBatch, bank: AdapterBank | None, index: RowIndex | None
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """-> (inputs_embeds [b, L, d], attention mask [b, L] bool, token kinds [b, L]
        long: PROMPT / TEXT / VISUAL), rows packed left: [prompt | text | visual], or
        [prompt | visual | text] when the config places the visual tokens before the text
        (Florence-2: image tokens, then `<s> text </s>`)."""
        embedding = self.lm.get_input_embeddings()
        text = embedding(batch.input_ids)
        visual = self.visual(batch.visual, batch.image_order, batch.boxes,
                             token_embedding=embedding.weight).to(text.dtype)
        pieces, valid = [text, visual], [batch.text_mask.bool(), batch.visual_mask.bool()]
        kinds = [torch.full_like(batch.input_ids, TEXT),
                 torch.full_like(batch.image_order, VISUAL)]
        if self.config.visual_position == "before_text":
            for part in (pieces, valid, kinds):
                part.reverse()
        return with_prompt(torch.cat(pieces, 1), torch.cat(valid, 1), torch.cat(kinds, 1),
                           bank, index)

    def encode(self, batch: VLBatch, bank: AdapterBank | None = None,
               index: RowIndex | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (encoder hidden states [b, L, d], mask [b, L] bool)."""
        with self.adapter_context.use(bank, index, rows=batch.size):
            embeds, mask, kinds = self.encoder_inputs(batch, bank, index)
            papers = nullcontext() if self.joint_encoder is None else \
                self.joint_encoder.use(kinds)
            with papers:
                hidden = self.lm.get_encoder()(inputs_embeds=embeds, attention_mask=mask)
        return hidden.last_hidden_state, mask

    def decode(self, encoder_hidden: torch.Tensor, encoder_mask: torch.Tensor,
               decoder_input_ids: torch.Tensor | None = None, labels: torch.Tensor | None = None,
               bank: AdapterBank | None = None, index: RowIndex | None = None,
               cache=None, decoder_mask: torch.Tensor | None = None):
        """One decoder pass -> the LM's output (logits [b, y, vocab], cache).

        decoder_mask: [b, cached + y] bool over cached and new decoder positions (None: all
        real), for caches padded across rows (`modeling.decode_rows`).
        """
        with self.adapter_context.use(bank, index, rows=encoder_hidden.shape[0]):
            return self.lm(
                encoder_outputs=BaseModelOutput(last_hidden_state=encoder_hidden),
                attention_mask=encoder_mask, decoder_input_ids=decoder_input_ids,
                decoder_attention_mask=decoder_mask, labels=labels, cache=cache,
                use_cache=cache is not None)

    def forward(self, batch: VLBatch, bank: AdapterBank | None = None,
                index: RowIndex | None = None) -> torch.Tensor:
        """Teacher-forced logits [b, y, vocab] for batch.labels."""
        if batch.labels is None:
            raise ValueError("forward needs batch.labels; use modeling.generation to decode")
        # The rows run grouped by form (each site's rows a span: views, not gathers); the
        # logits go back in the caller's order. Not reordered for runs by slot alone: putting
        # the logits [b, y, vocab] back costs more than the runs save in a teacher-forced
        # pass (the engine orders requests as it admits them, which costs nothing).
        order = None
        if bank is not None and index is not None:
            index.check(batch.input_ids.shape[0], bank.slots)
            order = index.grouping(bank.used_by_sets(), runs=False)
        if order is not None:
            rows = torch.tensor(order, device=batch.input_ids.device)
            batch, index = batch.select(rows), index.select(order)
        hidden, mask = self.encode(batch, bank, index)
        logits = self.decode(hidden, mask, labels=batch.labels, bank=bank, index=index).logits
        return logits if order is None else logits.index_select(0, rows.argsort())

    @contextmanager
    def row_positions(self, positions: torch.Tensor) -> Iterator[None]:
        """During one cached decoder step: the new token of row i sits at decoder position
        positions[i] [b], not at the left-padded cache length (`modeling.decode_rows`).

        Learned positions (`decoder_positions`) are handed per row by a hook; T5 needs
        nothing, its relative bias is exact under left padding.
        """
        table = self.decoder_positions()
        if table is None:
            yield
            return
        embed, offset = table

        def per_row(module, args, output: torch.Tensor) -> torch.Tensor:  # output [1, 1, d]
            return module.weight[positions + offset].unsqueeze(1).to(output.dtype)

        handle = embed.register_forward_hook(per_row)
        try:
            yield
        finally:
            handle.remove()

    def decoder_positions(self) -> tuple[nn.Embedding, int] | None:
        """The decoder's learned position table and the row of position 0 (BART: 2), or
        None when positions are relative (T5)."""
        if self.config.lm_type != "bart":
            return None
        embed = self.lm.model.decoder.embed_positions
        return embed, embed.offset

    @property
    def eos_token_id(self) -> int:
        return int(self.lm.config.eos_token_id)

    @property
    def decoder_start_token_id(self) -> int:
        return int(self.lm.config.decoder_start_token_id)

    def finetuned_parts(self) -> list[nn.Module]:
        """What full fine-tuning trains: the LM and the visual projection (not the tower)."""
        return [self.lm, self.visual]

    def frozen_tensors(self) -> dict[str, torch.Tensor]:
        """Every backbone tensor by name (what overrides and LoRA shapes are checked against)."""
        return dict(self.named_parameters(remove_duplicate=False))  # tied LM head included
