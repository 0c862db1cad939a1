"""Backbone configuration and the named presets.

A backbone is a frozen VL encoder-decoder in the VL-T5 / VL-BART style: an optional CLIP
or SigLIP vision tower (or precomputed features), the visual projection, and a T5 or BART
seq2seq LM. Presets build it from configs with random weights; `modeling.families` loads
user weights from a local directory.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any, Literal

from modeling.tasks import TaskSpec, VisualInput

LMType = Literal["t5", "bart", "bert"]
# "vlt5": VL-T5 / VL-BART's joint encoder (`modeling.joint_encoder`): visual tokens carry no
# text positions and get an object-order embedding; "plain": one sequence, positions on
# every token (what backbones saved before the switch compute).
VisualSemantics = Literal["vlt5", "plain"]
# Vision towers a backbone holds: CLIP's ViT (a CLS token before the patches), SigLIP's
# (patches only), Florence-2's DaViT + projector (`modeling.families.florence2`) and BLIP's
# ViT (`modeling.families.blip`: all its tokens are features).
TowerType = Literal["clip", "siglip", "florence2", "blip"]
VisualKind = Literal["projection", "identity"]
VisualPosition = Literal["after_text", "before_text"]

# Switches added after backbones were saved: name -> the value that means "as before".
_VISION_SWITCHES = {"tower": "clip", "settings": None}
_BACKBONE_SWITCHES = {"visual": "projection", "visual_position": "after_text",
                      "visual_semantics": "plain", "frame_grid": 0, "frame_order": False,
                      "cell_order": False}


def _without_defaults(fields: dict[str, Any], switches: dict[str, Any]) -> dict[str, Any]:
    """`fields` less the switches that hold their "as before" value."""
    return {k: v for k, v in fields.items() if k not in switches or v != switches[k]}


# The most text tokens any example is read with: what batches were always cut to
# (`modeling.inputs.make_batch`), T5's pre-training length; a family with fewer text
# positions reads fewer (`BackboneConfig.max_text_tokens`).
MAX_TEXT_TOKENS = 512

# The fewest text tokens an example is read with: the start and end tokens every tokenizer
# here adds around a text (BART's <s> </s>, BERT's [CLS] [SEP]; T5's </s> alone). A task
# whose visual tokens leave less of the encoder's positions cannot run (`TaskDoesNotFit`).
MIN_TEXT_TOKENS = 2


class TaskDoesNotFit(ValueError):
    """A task whose visual tokens (and prompt vectors) leave a backbone's encoder positions
    no room for text: FAILED_PRECONDITION in serving, one CLI line in training."""


def frame_cells(frame_grid: int) -> int:
    """Tokens per video frame: 1 (the frame's mean vector) or frame_grid**2 grid cells."""
    return max(frame_grid, 1) ** 2


# VL-T5 / VL-BART add `<extra_id_0..99>` and `<vis_extra_id_0..99>` to the vocabulary.
VL_EXTRA_TOKENS = 200
BART_BASE_VOCAB = 50265


@dataclass(frozen=True)
class VisionConfig:
    """Vision tower settings: `tower` names the class (CLIP or SigLIP ViT), the other
    fields are its `transformers` config's (`CLIPVisionConfig` / `SiglipVisionConfig`);
    Florence-2's tower keeps its own config in `settings`, the fields summarising it."""

    hidden_size: int = 64
    intermediate_size: int = 128
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    image_size: int = 32
    patch_size: int = 8
    num_channels: int = 3
    tower: TowerType = "clip"
    # A tower whose Hugging Face config is not the fields above (Florence-2: DaViT +
    # projector) keeps it here; hidden_size is then the width of the tokens it outputs.
    settings: dict[str, Any] | None = None

    @property
    def pools_grid(self) -> bool:
        """Whether the features are the tower's patch grid max-pooled (CLIP, SigLIP:
        `modeling.visual.tower_grid`), or the tower's own output (BLIP's every state, class
        token included; Florence-2's projector tokens)."""
        return self.tower in ("clip", "siglip")

    @property
    def has_cls(self) -> bool:
        """Whether the tower's output starts with a CLS token (CLIP) before the patches."""
        return self.tower == "clip"

    def to_hf_kwargs(self) -> dict[str, Any]:
        """`CLIPVisionConfig` / `SiglipVisionConfig` keyword arguments (ViT towers only)."""
        if self.settings is not None:
            raise ValueError(f"a {self.tower} tower keeps its own config in `settings`")
        return {k: v for k, v in asdict(self).items() if k not in _VISION_SWITCHES}

    def to_dict(self) -> dict[str, Any]:
        """As saved; a CLIP tower's dict has no `tower` key (nor `settings`), as before other
        towers were added, so the fingerprints of existing backbones stay what they were."""
        return _without_defaults(asdict(self), _VISION_SWITCHES)


@dataclass(frozen=True)
class BackboneConfig:
    """Everything needed to rebuild a backbone's architecture.

    Args:
        lm_type: "t5" or "bart"; "bert" for BLIP (`modeling.families.blip`).
        lm: keyword arguments of `T5Config` / `BartConfig` (BLIP: its `BlipConfig` as a
            dict, with `d_model` added: the text width).
        feat_dim: width of one visual feature vector entering the projection
            (VL-Adapter: 2048 for CLIP RN101 grid features, 512 for video frame features;
            the CLIP hidden size when the tower is part of the backbone).
        vision: the vision tower (CLIP or SigLIP), or None when features are precomputed.
        image_grid: side of the pooled grid per image (6 -> 36 tokens per image).
        max_frames: video frames are pooled or padded to this many tokens (VL-Adapter: 64).
        n_images: image-order embedding size (2: NLVR2 pairs; at least `max_frames` with
            `frame_order`, whose frame indices share the table).
        frame_grid: 0 (VL-Adapter's layout) makes each video frame one token, the mean of
            its pooled grid; k > 0 keeps k x k grid cells per frame (max-pooled from the
            image grid), frame-major, so attention can compare where shapes are in
            consecutive frames.
        frame_order: tag each video token with its frame's index, so the projection adds a
            learned frame-order embedding (the image-order table), as video-language models
            add temporal positions; False tags every frame 0.
        cell_order: with `frame_order` and a `frame_grid`, tag each video token with its
            own index, frame * cells + cell, so the order embedding says where a cell is
            as well as when: visual tokens carry no text positions, so without it the cells
            of a frame are an unordered set to the LM, which then cannot tell a shape moving
            left from one moving right (n_images >= max_frames * cells).
        visual_semantics: "vlt5" (the papers' encoder, `modeling.joint_encoder`) or
            "plain". A config saved without the field is "plain", and "plain" is not
            written, so saved backbones load, answer and fingerprint as before.
        visual: "projection" (VL-T5's visual embedding from feat_dim to d_model, trained)
            or "identity" (the tower already outputs LM tokens: Florence-2's projector;
            feat_dim == d_model).
        visual_position: the visual tokens' place in the encoder input, "after_text"
            (VL-T5 / VL-Adapter) or "before_text" (Florence-2).
    """

    lm_type: LMType
    lm: dict[str, Any]
    feat_dim: int
    vision: VisionConfig | None = None
    image_grid: int = 2
    max_frames: int = 64
    n_images: int = 2
    box_dim: int = 5
    preset: str | None = None
    visual_semantics: VisualSemantics = "plain"
    visual: VisualKind = "projection"
    visual_position: VisualPosition = "after_text"
    frame_grid: int = 0
    frame_order: bool = False
    cell_order: bool = False

    def __post_init__(self) -> None:
        for name, allowed in (("visual_semantics", ("vlt5", "plain")),
                              ("visual", ("projection", "identity")),
                              ("visual_position", ("after_text", "before_text"))):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(map(repr, allowed))}, "
                                 f"got {getattr(self, name)!r}")
        if self.frame_grid < 0:
            raise ValueError(f"frame_grid must be >= 0, got {self.frame_grid}")
        if self.frame_order and self.n_images < self.max_frames:
            raise ValueError(f"frame_order needs n_images >= max_frames ({self.max_frames}) "
                             f"order embeddings, got n_images={self.n_images}")
        if self.cell_order and not (self.frame_order and self.frame_grid > 0):
            raise ValueError("cell_order needs frame_order and a frame_grid > 0")
        if self.cell_order and self.n_images < self.max_frames * self.frame_grid ** 2:
            raise ValueError(f"cell_order needs n_images >= max_frames * frame_grid**2 "
                             f"({self.max_frames * self.frame_grid ** 2}) order embeddings, "
                             f"got n_images={self.n_images}")

    @property
    def family(self) -> str:
        """The backbone family (a module of `modeling.families`): "blip" (a BERT LM),
        "florence2" (visual tokens before the text: Florence-2's layout, kept when the tower
        is left out for precomputed features) or "vl" (VL-T5 / VL-BART). Task prompts are
        chosen per family (`modeling.tasks.FAMILY_PROMPTS`)."""
        if self.lm_type == "bert":
            return "blip"
        return "florence2" if self.visual_position == "before_text" else "vl"

    @property
    def reads_text(self) -> bool:
        """Whether the model reads an input's text (prompt, question, subtitles): False
        for a BLIP captioning model, which has no text encoder (its decoder prompt is the
        only text it sees), so tasks that ask a question cannot be done on it."""
        architectures = self.lm.get("architectures") or [None]
        return architectures[0] != "BlipForConditionalGeneration"

    @property
    def max_text_tokens(self) -> int:
        """The most encoder text tokens (prompt and special tokens included) any example may
        have: `text_budget` of an example without visual tokens or prompt vectors. An
        example's own budget is `text_budget` of its visual tokens."""
        return self.text_budget()

    @property
    def encoder_positions(self) -> int | None:
        """The length of the learned position table the encoder's text reads (BART's
        `max_position_embeddings`, BLIP's BERT text config's), which visual tokens and
        prompt vectors share where `visual_positions` / `prompt_positions` say; None for
        T5 (relative positions)."""
        return self._lm_positions

    @property
    def visual_positions(self) -> bool:
        """Whether visual tokens take positions from the text's learned position table:
        BART read as one sequence ("plain" semantics: Florence-2, whose image tokens are
        `inputs_embeds` rows of the BART encoder, and `tiny-bart`). Not VL-BART ("vlt5":
        the position embedding is added to text tokens only), not BLIP (its text encoder
        cross-attends the image), not T5 (relative positions, no table)."""
        return self.lm_type == "bart" and self.visual_semantics == "plain"

    @property
    def prompt_positions(self) -> bool:
        """Whether prompt-tuning vectors take positions from that table: where visual tokens
        do, and in BLIP's text encoder (they precede the question); VL-BART gives them none
        (`modeling.joint_encoder`), nor BLIP captioning (they precede the image states)."""
        return self.visual_positions or (self.lm_type == "bert" and self.reads_text)

    def text_budget(self, visual_tokens: int = 0, prompt_vectors: int = 0) -> int:
        """The most encoder text tokens (task prompt and special tokens included) one example
        may have: the LM's learned encoder positions less those its `visual_tokens` and
        `prompt_vectors` take (`visual_positions`, `prompt_positions`), at most
        `MAX_TEXT_TOKENS` (T5's relative positions have no table to run past). Longer text
        would index past the position table. Below `MIN_TEXT_TOKENS`: the example cannot
        run (`check_task_fits`)."""
        positions = self.encoder_positions
        if positions is None:
            return MAX_TEXT_TOKENS
        taken = (visual_tokens if self.visual_positions else 0) + \
            (prompt_vectors if self.prompt_positions else 0)
        return min(positions - taken, MAX_TEXT_TOKENS)

    def visual_tokens(self, visual_input: VisualInput, per_image: Sequence[int]) -> int:
        """The visual tokens one example's images or frames become: images, their token
        counts summed (`tokens_per_image` each from the tower, a feature array's rows); a
        video, each frame `frame_cells` tokens, pooled to at most `max_frames` frames
        (`modeling.visual.video_tokens`) whatever a frame held."""
        if visual_input is VisualInput.VIDEO_FRAMES:
            return min(len(per_image), self.max_frames) * frame_cells(self.frame_grid)
        return sum(per_image)

    def task_visual_tokens(self, task: TaskSpec) -> int:
        """The visual tokens of `task`'s largest tower input: its images (NLVR2: two) of
        `tokens_per_image` each, or a video of `max_frames` frames or more."""
        count = self.max_frames if task.visual_input is VisualInput.VIDEO_FRAMES \
            else task.n_visual_ids
        return self.visual_tokens(task.visual_input, [self.tokens_per_image] * count)

    def check_task_fits(self, task: TaskSpec, prompt_vectors: int = 0) -> None:
        """Raise `TaskDoesNotFit`, with the arithmetic, when `task`'s largest input
        (`task_visual_tokens`) and `prompt_vectors` prompt-tuning vectors leave fewer than
        `MIN_TEXT_TOKENS` of the encoder's positions for text."""
        visual = self.task_visual_tokens(task)
        room = self.text_budget(visual, prompt_vectors)
        if room >= MIN_TEXT_TOKENS:
            return
        taken = []
        if self.visual_positions:
            parts = f"{self.max_frames} frames x {frame_cells(self.frame_grid)}" \
                if task.visual_input is VisualInput.VIDEO_FRAMES else \
                f"{task.n_visual_ids} image(s) x {self.tokens_per_image}"
            taken.append(f"{parts} = {visual} visual tokens")
        if prompt_vectors and self.prompt_positions:
            taken.append(f"{prompt_vectors} prompt vectors")
        raise TaskDoesNotFit(
            f"task {task.name!r} cannot run on this backbone: {' + '.join(taken)} leave "
            f"{max(room, 0)} of its {self.encoder_positions} encoder positions for text (a text "
            f"needs {MIN_TEXT_TOKENS})")

    @property
    def max_decoder_tokens(self) -> int | None:
        """The most tokens one decoder row may hold (its decoder prompt and answer; the
        start token takes none of them): the decoder's learned positions (BLIP's BERT text
        config's `max_position_embeddings`; BART's, a table the decoder has to itself);
        None for T5, whose relative positions have no table to run past."""
        return self._lm_positions

    @property
    def _lm_positions(self) -> int | None:
        """The LM's learned position table's length (BLIP: its BERT text config's); None
        when it has none (T5)."""
        text = self.lm.get("text_config", self.lm) if self.lm_type == "bert" else self.lm
        positions = text.get("max_position_embeddings")
        return None if positions is None else int(positions)

    @property
    def tokens_per_image(self) -> int:
        """Visual tokens one image becomes: the pooled grid, a BLIP ViT's 1 + patches, or
        Florence-2's DaViT cells + 1 temporal token (each stage's strided conv shrinks the
        side)."""
        if self.vision is not None and self.vision.tower == "blip":
            return (self.vision.image_size // self.vision.patch_size) ** 2 + 1
        if self.vision is not None and self.vision.tower == "florence2":
            settings, side = self.vision.settings, self.vision.image_size
            for kernel, stride, pad in zip(settings["patch_size"], settings["patch_stride"],
                                           settings["patch_padding"], strict=True):
                side = (side + 2 * pad - kernel) // stride + 1
            return side * side + 1
        return self.image_grid ** 2

    @property
    def d_model(self) -> int:
        return int(self.lm["d_model"])

    def to_dict(self) -> dict[str, Any]:
        """The fields; the family switches only when set, so a backbone saved before they
        existed keeps its config and its fingerprint."""
        out = _without_defaults(asdict(self), _BACKBONE_SWITCHES)
        out["vision"] = None if self.vision is None else self.vision.to_dict()
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BackboneConfig:
        data = dict(data)
        vision = data.pop("vision", None)
        return cls(vision=None if vision is None else VisionConfig(**vision), **data)

    def with_features(self, feat_dim: int) -> BackboneConfig:
        """The same LM fed precomputed `feat_dim`-wide features (no vision tower)."""
        return replace(self, vision=None, feat_dim=feat_dim)



def _t5(d_model: int, layers: int, heads: int, d_ff: int, vocab: int, **extra: Any) -> dict:
    return dict(
        vocab_size=vocab, d_model=d_model, d_kv=d_model // heads, num_heads=heads, d_ff=d_ff,
        num_layers=layers, num_decoder_layers=layers, decoder_start_token_id=0,
        pad_token_id=0, eos_token_id=1, dropout_rate=0.1, **extra,
    )


def _bart(d_model: int, layers: int, heads: int, d_ff: int, vocab: int, **extra: Any) -> dict:
    return dict(
        vocab_size=vocab, d_model=d_model, encoder_layers=layers, decoder_layers=layers,
        encoder_attention_heads=heads, decoder_attention_heads=heads, encoder_ffn_dim=d_ff,
        decoder_ffn_dim=d_ff, max_position_embeddings=1024, pad_token_id=1, bos_token_id=0,
        eos_token_id=2, decoder_start_token_id=2, forced_eos_token_id=2, **extra,
    )


# Vocabulary of the bundled synthetic world's tokenizer (training.text) fits in 512 ids.
_SMALL_VOCAB = 512

PRESETS: dict[str, BackboneConfig] = {
    "tiny": BackboneConfig(
        lm_type="t5", lm=_t5(64, 2, 4, 128, _SMALL_VOCAB), feat_dim=64,
        vision=VisionConfig(), image_grid=2, max_frames=8, preset="tiny",
    ),
    "tiny-bart": BackboneConfig(
        lm_type="bart", lm=_bart(64, 2, 4, 128, _SMALL_VOCAB), feat_dim=64,
        vision=VisionConfig(), image_grid=2, max_frames=8, preset="tiny-bart",
    ),
    # The papers' encoder semantics (visual_semantics "vlt5") at the tiny sizes: tests, demo.
    "tiny-vl-t5": BackboneConfig(
        lm_type="t5", lm=_t5(64, 2, 4, 128, _SMALL_VOCAB), feat_dim=64,
        vision=VisionConfig(), image_grid=2, max_frames=8, preset="tiny-vl-t5",
        visual_semantics="vlt5",
    ),
    "tiny-vl-bart": BackboneConfig(
        lm_type="bart", lm=_bart(64, 2, 4, 128, _SMALL_VOCAB), feat_dim=64,
        vision=VisionConfig(), image_grid=2, max_frames=8, preset="tiny-vl-bart",
        visual_semantics="vlt5",
    ),
    "small": BackboneConfig(
        lm_type="t5", lm=_t5(128, 3, 4, 512, _SMALL_VOCAB), feat_dim=128,
        vision=VisionConfig(hidden_size=128, intermediate_size=512, num_hidden_layers=3,
                            image_size=64, patch_size=8),
        image_grid=4, max_frames=8, preset="small", frame_grid=2, frame_order=True,
        cell_order=True, n_images=32,
    ),
    # The papers' sizes, with precomputed CLIP RN101 grid features (2048-d, 6x6 per image).
    "vl-t5-base": BackboneConfig(
        lm_type="t5", lm=_t5(768, 12, 12, 3072, 32100 + VL_EXTRA_TOKENS - 100),
        feat_dim=2048, image_grid=6, preset="vl-t5-base", visual_semantics="vlt5",
    ),
    "vl-bart-base": BackboneConfig(
        lm_type="bart", lm=_bart(768, 6, 12, 3072, BART_BASE_VOCAB + VL_EXTRA_TOKENS),
        feat_dim=2048, image_grid=6, preset="vl-bart-base", visual_semantics="vlt5",
    ),
}

# VL-Adapter's video-text experiments feed one 512-d CLIP feature per frame.
VIDEO_FEAT_DIM = 512


def preset(name: str) -> BackboneConfig:
    """The named preset; a clear error lists the known names."""
    if name not in PRESETS:
        known = ", ".join(sorted(PRESETS))
        raise ValueError(f"unknown backbone preset {name!r}; expected one of: {known}")
    return PRESETS[name]


__all__ = ["BackboneConfig", "VisionConfig", "PRESETS", "preset", "VIDEO_FEAT_DIM"]
