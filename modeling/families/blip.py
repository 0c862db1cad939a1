"""BLIP as a backbone: the model class of the PEFT study (mPLUG's nearest relative).

    VQA (BlipForQuestionAnswering)             captioning (BlipForConditionalGeneration)

    pixels ─► ViT (frozen, cacheable) ─► image states [b, 1+p, feat]
                      │                                 │
    question ─► BERT text encoder ◄─ cross-attn        (passed through)
                      │                                 │
              question states [b, L, d]                 │
                      ▼                                 ▼
    [DEC] ─► BERT text decoder ◄─ cross-attn ─► answer / caption tokens

`encode` is the text encoder over the question (VQA) or the identity on the image states
(captioning: BLIP has no text encoder there, so a batch's text is not read); `decode` is
the BERT decoder (`BlipTextLMHeadModel`) with its key/value cache. The methods attach to
the "bert" site table (`modeling.sites`): q/k/v/o of self- and cross-attention, FFN in/out,
serial and parallel adapters after each sublayer's output Linear, prefixes in every
attention; prompt vectors go before the question (VQA) or before the image states
(captioning, where their width must equal the ViT's).

Two departures from calling transformers' BLIP directly, both exact when nothing is
padded (what `generate` sees): each row's padding is masked in cross-attention
(`BlipTextAttention` drops the encoder mask, so padded questions of a batch would be
attended), and a cached decoder step reads each row's own position.
"""

from __future__ import annotations

import json
import math
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import (
    BlipConfig,
    BlipForConditionalGeneration,
    BlipForQuestionAnswering,
    PreTrainedTokenizerBase,
)
from transformers.cache_utils import EncoderDecoderCache
from transformers.models.blip.modeling_blip_text import BlipTextSelfAttention

from modeling.backbone import VLBackbone, VLBatch, pack_left, with_prompt
from modeling.bank import AdapterBank
from modeling.config import BackboneConfig, VisionConfig
from modeling.families.folders import TOKENIZER_FILES, first_line, load_tokenizer, model_type
from modeling.hooks import prefix_attention
from modeling.joint_encoder import TEXT, VISUAL
from modeling.kernels import RowIndex

# Hugging Face architecture -> (class, mode); other BLIP heads (retrieval) are no backbone.
ARCHITECTURES = {
    "BlipForQuestionAnswering": (BlipForQuestionAnswering, "vqa"),
    "BlipForConditionalGeneration": (BlipForConditionalGeneration, "caption"),
}


def detect(folder: Path) -> bool:
    """Whether `folder` holds a Hugging Face BLIP model (config.json, model_type "blip")."""
    try:
        return model_type(folder) == "blip"
    except ValueError:  # an unreadable config.json is no BLIP folder
        return False


def load(folder: Path) -> BlipBackbone:
    """The BLIP VQA or captioning model saved in `folder` (weights, and its tokenizer when
    the folder has one) as a frozen backbone; a ValueError of one line otherwise."""
    folder = Path(folder)
    model_cls, _ = ARCHITECTURES[_architecture(folder)]
    try:
        model = model_cls.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError) as err:
        raise ValueError(f"{folder}: BLIP weights do not load: {first_line(err)}") from None
    tokenizer = None
    if any((folder / name).is_file() for name in TOKENIZER_FILES):
        tokenizer = load_tokenizer(folder, model.config.text_config.vocab_size)
    return BlipBackbone(model, tokenizer)


def _architecture(folder: Path) -> str:
    """The folder's BLIP class name (config.json `architectures`); a ValueError of one line
    when it is no BLIP generator."""
    data = json.loads((folder / "config.json").read_text())
    architecture = (data.get("architectures") or [None])[0]
    if architecture not in ARCHITECTURES:
        raise ValueError(f"{folder}: BLIP architecture {architecture!r} is not a "
                         f"vision-language generator; expected one of {sorted(ARCHITECTURES)}")
    return architecture


def config(folder: Path) -> BackboneConfig:
    """Our config of a BLIP folder from its config.json alone (no weights read)."""
    folder = Path(folder)
    architecture = _architecture(folder)
    settings = BlipConfig.from_pretrained(folder, local_files_only=True)
    for part in (settings, settings.text_config, settings.vision_config):
        part.dtype = torch.float32  # what `load` reading the weights in float32 records
    return backbone_config(settings, architecture)


def backbone_config(config: BlipConfig, architecture: str) -> BackboneConfig:
    """Our config of a BLIP model (`architecture`: its class name): lm_type "bert", the
    BLIP config as `lm` (plus d_model, the text width, and the architecture), feat_dim the
    ViT width (the image states are the features)."""
    text, vision = config.text_config, config.vision_config
    lm = _architecture_fields(config.to_dict())
    lm["d_model"] = text.hidden_size
    lm["architectures"] = [architecture]
    tower = VisionConfig(hidden_size=vision.hidden_size,
                         intermediate_size=vision.intermediate_size,
                         num_hidden_layers=vision.num_hidden_layers,
                         num_attention_heads=vision.num_attention_heads,
                         image_size=vision.image_size, patch_size=vision.patch_size,
                         tower="blip")
    return BackboneConfig(lm_type="bert", lm=lm, feat_dim=vision.hidden_size, vision=tower,
                          image_grid=vision.image_size // vision.patch_size)


def _architecture_fields(data: dict[str, Any]) -> dict[str, Any]:
    """A config dict without what says where and by which version it was loaded (keys
    `_name_or_path`, `transformers_version`, ...): the same weights copied to another folder
    keep their fingerprint."""
    return {k: _architecture_fields(v) if isinstance(v, dict) else v
            for k, v in data.items() if not str(k).startswith("_") and k != "transformers_version"}


class BlipText(nn.Module):
    """The LM of a BLIP backbone: its BERT text encoder (VQA only) and BERT decoder."""

    def __init__(self, text_decoder: nn.Module, text_encoder: nn.Module | None = None):
        super().__init__()
        self.text_encoder = text_encoder
        self.text_decoder = text_decoder
        self.config = text_decoder.config

    def bert_stacks(self) -> dict[str, nn.Module]:
        """BERT layer stacks by name ("encoder" only for VQA) for `modeling.sites`."""
        stacks = {"decoder": self.text_decoder.bert.encoder}
        if self.text_encoder is not None:
            stacks = {"encoder": self.text_encoder.encoder, **stacks}
        return stacks

    def get_input_embeddings(self) -> nn.Embedding:
        return self.text_decoder.get_input_embeddings()


class BlipBackbone(VLBackbone):
    """A frozen BLIP model behind the backbone interface (see the module docstring)."""

    def __init__(self, model: BlipForQuestionAnswering | BlipForConditionalGeneration,
                 tokenizer: PreTrainedTokenizerBase | None = None):
        nn.Module.__init__(self)  # VLBackbone.__init__ builds T5 / BART: not ours
        self.hf_config = model.config
        self.tokenizer = tokenizer
        self.config = backbone_config(model.config, type(model).__name__)
        self.vision = model.vision_model
        self.lm = BlipText(model.text_decoder, getattr(model, "text_encoder", None))
        self._install_and_freeze(route_bert_attention)

    @property
    def mode(self) -> str:
        """"vqa" (question fused with the image) or "caption" (image states only)."""
        return "caption" if self.lm.text_encoder is None else "vqa"

    @classmethod
    def from_pretrained(cls, path: str | Path) -> BlipBackbone:
        return load(Path(path))

    @classmethod
    def from_config(cls, config: BackboneConfig, seed: int = 0,
                    device: str | torch.device = "cpu",
                    tokenizer: PreTrainedTokenizerBase | None = None) -> BlipBackbone:
        """Random weights from our config of a BLIP model (seeded); device "meta" builds
        without memory (the parameter report)."""
        fields = {k: v for k, v in config.lm.items() if k != "d_model"}
        model_cls, _ = ARCHITECTURES[fields["architectures"][0]]
        with torch.device(device):
            if str(device) != "meta":
                torch.manual_seed(seed)
            return cls(model_cls(BlipConfig.from_dict(fields)).eval(), tokenizer)

    def save_pretrained(self, path: str | Path) -> None:
        """The Hugging Face folder this backbone loads from (weights, config, tokenizer)."""
        model_cls = BlipForQuestionAnswering if self.mode == "vqa" else \
            BlipForConditionalGeneration
        with torch.device("meta"):  # every part is replaced by ours below
            model = model_cls(self.hf_config)
        model.vision_model, model.text_decoder = self.vision, self.lm.text_decoder
        if self.mode == "vqa":
            model.text_encoder = self.lm.text_encoder
        model.save_pretrained(path)
        if self.tokenizer is not None:
            self.tokenizer.save_pretrained(path)

    # --- visual inputs -----------------------------------------------------------------
    def image_tokens(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """pixel_values [n, 3, H, W] -> the ViT's states [n, 1 + patches, feat_dim] (BLIP
        cross-attends all of them, class token included)."""
        return self.vision(pixel_values=pixel_values).last_hidden_state

    # --- forward -----------------------------------------------------------------------
    def encoder_inputs(self, batch: VLBatch, bank: AdapterBank | None, index: RowIndex | None
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """VQA: question word embeddings [b, L, d] (BERT adds positions); captioning: the
        image states [b, L, feat_dim]; prompt vectors first, rows packed left; with the
        token kinds [b, L] (`modeling.joint_encoder`)."""
        if self.mode == "vqa":
            embeds = self.lm.text_encoder.get_input_embeddings()(batch.input_ids)
            return with_prompt(embeds, batch.text_mask.bool(),
                               torch.full_like(batch.input_ids, TEXT), bank, index)
        visual = batch.visual.to(next(self.lm.parameters()).dtype)
        if bank is not None and bank.prompt is not None and \
                bank.prompt.shape[-1] != visual.shape[-1]:
            raise ValueError(f"prompt width {bank.prompt.shape[-1]} cannot precede BLIP's "
                             f"image states of width {visual.shape[-1]} (captioning)")
        return with_prompt(visual, batch.visual_mask.bool(),
                           torch.full_like(batch.image_order, VISUAL), bank, index)

    def encode(self, batch: VLBatch, bank: AdapterBank | None = None,
               index: RowIndex | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (states the decoder cross-attends [b, L, width], mask [b, L] bool)."""
        with self.adapter_context.use(bank, index, rows=batch.size):
            embeds, mask, _ = self.encoder_inputs(batch, bank, index)
            if self.mode == "caption":
                return embeds, mask
            visual, visual_mask, _ = pack_left(batch.visual.to(embeds.dtype),
                                               batch.visual_mask.bool())
            hidden = self.lm.text_encoder(inputs_embeds=embeds, attention_mask=mask,
                                          encoder_hidden_states=visual,
                                          encoder_attention_mask=visual_mask)
        return hidden.last_hidden_state, mask

    def decode(self, encoder_hidden: torch.Tensor, encoder_mask: torch.Tensor,
               decoder_input_ids: torch.Tensor | None = None, labels: torch.Tensor | None = None,
               bank: AdapterBank | None = None, index: RowIndex | None = None,
               cache=None, decoder_mask: torch.Tensor | None = None):
        """One BERT decoder pass -> its output (logits [b, y, vocab], cache); with labels
        [b, y] (-100 padding) the decoder reads [DEC] + labels[:-1], logits aligned with
        labels (VLBackbone.decode's contract)."""
        if decoder_input_ids is None:
            decoder_input_ids = self.shift_right(labels)
        with self.adapter_context.use(bank, index, rows=encoder_hidden.shape[0]):
            return self.lm.text_decoder(
                input_ids=decoder_input_ids, attention_mask=decoder_mask,
                encoder_hidden_states=encoder_hidden, encoder_attention_mask=encoder_mask,
                cache=cache, use_cache=cache is not None)

    def shift_right(self, labels: torch.Tensor) -> torch.Tensor:
        """labels [b, y] -> decoder inputs [b, y]: the start token, then labels[:, :-1]
        with -100 read as padding."""
        ids = labels.new_full(labels.shape, self.decoder_start_token_id)
        ids[:, 1:] = labels[:, :-1]
        return ids.masked_fill(ids == -100, int(self.lm.config.pad_token_id))

    def finetuned_parts(self) -> list[nn.Module]:
        """Full fine-tuning trains the text encoder and decoder; the ViT stays frozen."""
        return [self.lm]

    def decoder_positions(self) -> tuple[nn.Embedding, int]:
        return self.lm.text_decoder.bert.embeddings.position_embeddings, 0

    @property
    def eos_token_id(self) -> int:
        return int(self.lm.config.sep_token_id)  # BLIP's generate stops at [SEP]

    @property
    def decoder_start_token_id(self) -> int:
        return int(self.lm.config.bos_token_id)  # [DEC]


BACKBONE_CLASS = BlipBackbone  # what `modeling.families.from_config` builds


# --- attention -----------------------------------------------------------------------
def route_bert_attention(lm: BlipText) -> None:
    """Prefix sites run `prefix_attention` when the active bank has a prefix there (the
    module's own forward otherwise), and cross-attention masks the encoder's padding."""
    for stack in lm.bert_stacks().values():
        for layer in stack.layer:
            attentions = [layer.attention.self]
            if getattr(layer, "crossattention", None) is not None:
                cross = layer.crossattention.self
                cross.register_forward_pre_hook(_mask_encoder_padding, with_kwargs=True)
                attentions.append(cross)
            for attention in attentions:
                if hasattr(attention, "vladapter_context"):
                    attention.forward = partial(_attention_forward, attention)


def _mask_encoder_padding(module: nn.Module, args: tuple, kwargs: dict) -> tuple | None:
    """transformers' BlipTextAttention hands cross-attention its (encoder) mask as
    `attention_mask`, which BlipTextSelfAttention ignores for cross-attention: pass it
    where it is read."""
    if kwargs.get("encoder_attention_mask") is None and kwargs.get("attention_mask") is not None:
        return args, {**kwargs, "encoder_attention_mask": kwargs["attention_mask"]}
    return None


def _heads(module: BlipTextSelfAttention, x: torch.Tensor) -> torch.Tensor:
    """[b, n, heads * head_dim] -> [b, heads, n, head_dim]."""
    return x.view(*x.shape[:-1], -1, module.attention_head_size).transpose(1, 2)


def _keys_values(module: BlipTextSelfAttention, hidden: torch.Tensor,
                 encoder_hidden: torch.Tensor | None, cache: Any
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Keys and values [b, heads, k, head_dim] exactly as BlipTextSelfAttention.forward
    computes and caches them (cross-attention's once, at the first step)."""
    is_cross = encoder_hidden is not None
    layer_cache = cache
    if isinstance(cache, EncoderDecoderCache):
        if is_cross and cache.is_updated.get(module.layer_idx):
            layer = cache.cross_attention_cache.layers[module.layer_idx]
            return layer.keys, layer.values
        layer_cache = cache.cross_attention_cache if is_cross else cache.self_attention_cache
    states = encoder_hidden if is_cross else hidden
    key, value = _heads(module, module.key(states)), _heads(module, module.value(states))
    if layer_cache is not None:
        key, value = layer_cache.update(key, value, module.layer_idx)
        if is_cross and isinstance(cache, EncoderDecoderCache):
            cache.is_updated[module.layer_idx] = True
    return key, value


def _attention_forward(module: BlipTextSelfAttention, hidden_states: torch.Tensor,
                       attention_mask: torch.Tensor | None = None,
                       encoder_hidden_states: torch.Tensor | None = None,
                       encoder_attention_mask: torch.Tensor | None = None, cache: Any = None,
                       **kwargs: Any) -> tuple[torch.Tensor, None]:
    """BlipTextSelfAttention with key/value prefixes: hidden [b, q, d] -> (context [b, q, d],
    None). Without a prefix at this site the module's own forward runs, unchanged."""
    ctx = module.vladapter_context
    if ctx.weights is None or module.vladapter_site not in ctx.weights.prefix:
        return BlipTextSelfAttention.forward(  # the class's, not a bound copy: deepcopy-safe
            module, hidden_states, attention_mask=attention_mask,
            encoder_hidden_states=encoder_hidden_states,
            encoder_attention_mask=encoder_attention_mask, cache=cache, **kwargs)
    mask = encoder_attention_mask if encoder_hidden_states is not None else attention_mask
    if mask is not None:
        mask = mask == 0  # BLIP's masks are additive (0 where attended, a large negative)
    query = _heads(module, module.query(hidden_states))
    key, value = _keys_values(module, hidden_states, encoder_hidden_states, cache)
    out, _ = prefix_attention(module, query, key, value, mask,
                              dropout=module.dropout.p if module.training else 0.0,
                              scaling=1 / math.sqrt(module.attention_head_size),
                              widen_every_row=True)
    return out.reshape(*hidden_states.shape[:-1], -1), None
