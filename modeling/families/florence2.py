"""Florence-2 as a backbone: DaViT tower + projector (frozen) -> BART (the hooks' "bart").

A Hugging Face `Florence2ForConditionalGeneration` folder is

    pixels -> vision_tower (DaViT) -> multi_modal_projector -> image tokens [n, T, d_model]
    encoder input = [ image tokens | <s> prompt </s> ]  (the processor's layout)
    language_model (BartModel) + lm_head (tied to the shared embedding)

It becomes a `VLBackbone` whose `vision` is the tower and projector together (its output
is what the LM consumes, so the vision cache and precomputed features hold exactly the
encoder's visual inputs), whose visual projection is the identity (`visual: "identity"`),
whose visual tokens come before the text (`visual_position: "before_text"`), and whose
`.lm` is a `BartForConditionalGeneration` holding the language model and head weights.
Every BART site, method, bank kernel and the cached decode then apply unchanged.

What the library does that this keeps (checked by tests/modeling/test_florence2_parity.py):
the image tokens are `inputs_embeds` rows, so BART's embedding scale applies to text
tokens only, while learned positions (offset 2, image tokens included) and
`layernorm_embedding` apply to all; the encoder mask covers image and text tokens;
decoding starts from the text config's `decoder_start_token_id` (`</s>`). Florence-2's
head has no `final_logits_bias`; BART's stays zero.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn
from transformers import (
    AutoTokenizer,
    BartConfig,
    BartForConditionalGeneration,
    Florence2Config,
    Florence2ForConditionalGeneration,
    PreTrainedTokenizerBase,
)

from modeling.backbone import VLBackbone
from modeling.config import BackboneConfig, VisionConfig

FAMILY = "florence2"
# Florence-2's processors resize every image to 768 x 768 (preprocessor_config.json).
DEFAULT_IMAGE_SIZE = 768
_LM_PREFIX = "model.language_model."
SAFETENSORS_FILES = ("model.safetensors", "model.safetensors.index.json")


class Florence2Vision(nn.Module):
    """DaViT tower + multi-modal projector: pixels -> the image tokens the encoder reads."""

    def __init__(self, tower: nn.Module, projector: nn.Module):
        super().__init__()
        self.tower, self.projector = tower, projector

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """pixel_values [n, 3, H, W] -> tokens [n, (H/32)*(W/32) + 1, d_model] (spatial
        tokens, then one temporal token, as `Florence2Model.get_image_features`)."""
        grid = self.tower(pixel_values).last_hidden_state  # [n, C, H/32, W/32]
        return self.projector(grid)


class Florence2Backbone(VLBackbone):
    """A `VLBackbone` over Florence-2: only the tower differs (no CLS, no grid pooling)."""

    def image_tokens(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """pixel_values [n, 3, S, S] -> image tokens [n, T, d_model] (see Florence2Vision)."""
        if self.vision is None:
            raise ValueError("this backbone has no vision tower: pass precomputed features")
        return self.vision(pixel_values)

    def save_pretrained(self, path: str | Path) -> None:
        """The Hugging Face Florence-2 folder `load` reads back (the inverse of `split`):
        config.json, model.safetensors, preprocessor_config.json and the tokenizer."""
        folder = Path(path)
        with torch.device("meta"):  # every part is replaced by ours below
            model = Florence2ForConditionalGeneration(self.hf_config)
        model.model.vision_tower = self.vision.tower
        model.model.multi_modal_projector = self.vision.projector
        model.model.language_model, model.lm_head = self.lm.model, self.lm.lm_head
        model.save_pretrained(folder)
        _write_image_size(folder, self.config.vision.image_size)
        if self.tokenizer is not None:
            self.tokenizer.save_pretrained(folder)


def detect(folder: Path) -> bool:
    """Whether `folder` holds a Hugging Face Florence-2 model (config.json model_type)."""
    config_file = Path(folder) / "config.json"
    if not config_file.is_file():
        return False
    try:
        return json.loads(config_file.read_text()).get("model_type") == FAMILY
    except (ValueError, AttributeError):
        return False


def backbone_config(config: Florence2Config, image_size: int) -> BackboneConfig:
    """Our config of a Florence-2 model: BART settings, the tower's own settings, the
    identity visual projection and the visual-first layout (all in the fingerprint)."""
    text = config.text_config
    d_model = int(text.d_model)
    vision_settings = _json_form(config.vision_config.to_dict())
    if int(vision_settings["projection_dim"]) != d_model:
        raise ValueError(f"Florence-2 projector width {vision_settings['projection_dim']} != "
                         f"the language model's d_model {d_model}")
    davit = config.vision_config
    vision = VisionConfig(  # the CLIP-named fields summarise DaViT; `settings` is the truth
        hidden_size=d_model, intermediate_size=0, num_hidden_layers=sum(davit.depths),
        num_attention_heads=int(davit.num_heads[-1]), image_size=image_size,
        patch_size=_total_stride(config), num_channels=int(davit.in_channels),
        tower=FAMILY, settings=vision_settings)
    return BackboneConfig(lm_type="bart", lm=_lm_settings(text), feat_dim=d_model,
                          vision=vision, image_grid=0, n_images=1, visual="identity",
                          visual_position="before_text", preset=None)


def _total_stride(config: Florence2Config) -> int:
    stride = 1
    for step in config.vision_config.patch_stride:
        stride *= int(step)
    return stride


def _lm_settings(text: BartConfig) -> dict:
    """BartConfig kwargs of the language model (no bookkeeping keys), in JSON form."""
    settings = text.to_dict()
    for key in ("transformers_version", "architectures", "_name_or_path", "dtype",
                "torch_dtype", "model_type", "id2label", "label2id"):
        settings.pop(key, None)
    return _json_form(settings)


def _json_form(settings: dict) -> dict:
    """`settings` as JSON gives it back (lists for tuples, string keys): the config equals
    itself after a save and load, and the fingerprint reads the same."""
    return json.loads(json.dumps(settings))


def split(model: Florence2ForConditionalGeneration, image_size: int,
          tokenizer: PreTrainedTokenizerBase | None = None) -> Florence2Backbone:
    """Our backbone over the parts of a loaded (or meta-device) Florence-2 model.

    The BART takes `model.language_model.*` as `model.*` and `lm_head.weight`; tower and
    projector move over as they are. Shares storage with `model` (no copy).
    """
    config = backbone_config(model.config, image_size)
    with torch.device("meta"):  # every tensor is assigned from `model` below
        lm = BartForConditionalGeneration(BartConfig(**config.lm))
    state = {k[len(_LM_PREFIX):]: v for k, v in model.state_dict().items()
             if k.startswith(_LM_PREFIX)}
    state = {f"model.{k}": v for k, v in state.items()}
    state["lm_head.weight"] = model.lm_head.weight
    state["final_logits_bias"] = torch.zeros(lm.final_logits_bias.shape,
                                             device=model.lm_head.weight.device)
    missing, unexpected = lm.load_state_dict(state, strict=False, assign=True)
    missing = [k for k in missing if not k.endswith("embed_tokens.weight")]  # tied to shared
    if missing or unexpected:
        raise ValueError(f"Florence-2 language model does not map onto BART: missing "
                         f"{missing[:5]}, unexpected {unexpected[:5]}")
    lm.tie_weights()
    vision = Florence2Vision(model.model.vision_tower, model.model.multi_modal_projector)
    backbone = Florence2Backbone(config, lm=lm.eval(), vision=vision.eval(), tokenizer=tokenizer)
    backbone.hf_config = model.config  # what `save_pretrained` writes back (image_token_id)
    return backbone


def _write_image_size(folder: Path, image_size: int) -> None:
    """preprocessor_config.json: the image side `_image_size` reads back."""
    size = {"height": image_size, "width": image_size}
    (folder / "preprocessor_config.json").write_text(json.dumps(
        {"image_processor_type": "CLIPImageProcessor", "size": size, "crop_size": size}))


def _image_size(folder: Path) -> int:
    """The processor's image side (preprocessor_config.json), 768 when it is absent."""
    for name in ("preprocessor_config.json", "processor_config.json"):
        path = folder / name
        if path.is_file():
            data = json.loads(path.read_text())
            data = data.get("image_processor", data)
            size = data.get("crop_size") or data.get("size") or {}
            if isinstance(size, dict) and "height" in size:
                return int(size["height"])
    return DEFAULT_IMAGE_SIZE


def config(folder: Path) -> BackboneConfig:
    """Our config of a Florence-2 folder from its config.json alone (no weights read)."""
    return backbone_config(Florence2Config.from_pretrained(folder), _image_size(Path(folder)))


def load(folder: Path) -> Florence2Backbone:
    """A Florence-2 folder (config.json, safetensors weights, tokenizer files) as a frozen
    backbone. A weight the model expects and the folder lacks is refused by name."""
    folder = Path(folder)
    if not detect(folder):
        raise ValueError(f"{folder} is not a Florence-2 folder (config.json with model_type "
                         f"'{FAMILY}')")
    if not any((folder / name).is_file() for name in SAFETENSORS_FILES):
        raise ValueError(f"{folder} has no {' or '.join(SAFETENSORS_FILES)}: Florence-2 "
                         f"weights are read from safetensors only")
    model, info = Florence2ForConditionalGeneration.from_pretrained(
        folder, output_loading_info=True, use_safetensors=True)
    missing = [k for k in info["missing_keys"] if k != "lm_head.weight"]
    if missing:
        raise ValueError(f"{folder} lacks Florence-2 weights {sorted(missing)[:3]} "
                         f"({len(missing)} in all): not a transformers-format Florence-2")
    tokenizer = None
    if (folder / "tokenizer_config.json").is_file() or (folder / "tokenizer.json").is_file():
        tokenizer = AutoTokenizer.from_pretrained(folder)
    return split(model.float().eval(), _image_size(folder), tokenizer)


def from_config(config: Florence2Config, device: str | torch.device = "meta",
                image_size: int = DEFAULT_IMAGE_SIZE, seed: int = 0) -> Florence2Backbone:
    """Random weights of a Florence-2 config (device "meta": shapes only, no memory)."""
    with torch.device(device):
        if str(device) != "meta":
            torch.manual_seed(seed)
        model = Florence2ForConditionalGeneration(config)
    return split(model.eval(), image_size)
