"""Input limits and request validation: every refusal names the limit it hit.

Validation runs on the gRPC worker thread that received the call, before the request
reaches the engine's queue, so a bad request never touches a batch that other requests
share. Images are decoded here (Pillow) and their size checked before any pixel is
read, so a decompression bomb is refused from its header; a text is measured in bytes
before it is tokenized, so a huge one costs a length check, not seconds of tokenizing.
"""

from __future__ import annotations

import copy
import hashlib
import io
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from modeling.config import MIN_TEXT_TOKENS, BackboneConfig
from modeling.inputs import check_features, decoder_prompt_ids
from modeling.tasks import TASKS, TaskKind, TaskSpec, VisualInput

ACCEPTED_FORMATS = ("JPEG", "PNG", "WEBP")
# A generous bound on the UTF-8 bytes one token of text covers (English BPE averages about
# 4; a token of 8 four-byte characters is 32), so no text that fits max_text_tokens is
# refused by the byte limit, and a huge one is refused before the tokenizer reads it.
TEXT_BYTES_PER_TOKEN = 32


class InvalidInput(ValueError):
    """A request the server refuses as INVALID_ARGUMENT; the message names the limit."""


@dataclass(frozen=True)
class Limits:
    """What one request may hold. Sizes in bytes, pixels = width * height."""

    max_message_bytes: int = 8 * 1024 * 1024
    max_image_bytes: int = 4 * 1024 * 1024
    max_image_pixels: int = 4096 * 4096
    # Long edge / short edge: CLIP preprocessing scales the short edge up to the tower's
    # size, so a 1 x 1,000,000 PNG of 4 KB would cost ~10 GB and minutes to resize.
    max_image_aspect: int = 32
    max_frames: int = 64
    max_feature_tokens: int = 1024
    max_text_tokens: int = 256
    max_new_tokens: int = 64
    max_beams: int = 8
    max_choices: int = 8
    default_max_new_tokens: int = 20

    @property
    def max_text_bytes(self) -> int:
        """The UTF-8 bytes each text field may hold (text, subtitles, each choice)."""
        return self.max_text_tokens * TEXT_BYTES_PER_TOKEN


@dataclass
class ImageInput:
    """One image (or video frame) as the engine needs it.

    key: sha256 of the encoded bytes (the vision-cache key), or None for features;
    pixels [3, H, W] float32 (None when features are given); features [n, feat_dim] float32.
    """

    key: str | None
    pixels: torch.Tensor | None = None
    features: torch.Tensor | None = None


def decode_image(data: bytes, limits: Limits, what: str) -> Image.Image:
    """Encoded JPEG / PNG / WebP bytes -> a loaded RGB image, or InvalidInput."""
    if len(data) > limits.max_image_bytes:
        raise InvalidInput(f"{what} is {len(data)} bytes; limit max_image_bytes="
                           f"{limits.max_image_bytes}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            if image.format not in ACCEPTED_FORMATS:
                raise InvalidInput(f"{what} is {image.format or 'not an image'}; expected one "
                                   f"of {', '.join(ACCEPTED_FORMATS)}")
            width, height = image.size
            if width * height > limits.max_image_pixels:
                raise InvalidInput(f"{what} has {width}x{height} pixels; limit "
                                   f"max_image_pixels={limits.max_image_pixels}")
            if max(width, height) > limits.max_image_aspect * min(width, height):
                raise InvalidInput(f"{what} is {width}x{height} pixels; limit "
                                   f"max_image_aspect={limits.max_image_aspect}")
            image.load()
            return image.convert("RGB")
    except InvalidInput:
        raise
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombWarning,
            Image.DecompressionBombError) as exc:
        raise InvalidInput(f"{what} is not a valid JPEG, PNG or WebP image ({exc})") from None


def decode_features(data: bytes, tokens: int, feat_dim: int, expected_dim: int,
                    limits: Limits, what: str) -> torch.Tensor:
    """Raw float32 bytes -> features [tokens, feat_dim], or InvalidInput.

    Sizes are checked before the bytes become a tensor; the width, token count and
    finiteness by `modeling.inputs.check_features`, the check training data meets too."""
    if not 1 <= tokens <= limits.max_feature_tokens:
        raise InvalidInput(f"{what} has {tokens} tokens; limit max_feature_tokens="
                           f"{limits.max_feature_tokens} (and at least 1)")
    if len(data) != tokens * feat_dim * 4:
        raise InvalidInput(f"{what} holds {len(data)} bytes; tokens*feat_dim*4 = "
                           f"{tokens * feat_dim * 4}")
    features = torch.from_numpy(np.frombuffer(data, dtype="<f4").copy()).view(tokens, feat_dim)
    try:
        return check_features(features, expected_dim, what)
    except ValueError as exc:
        raise InvalidInput(str(exc)) from None


class RequestChecker:
    """Turns the parts of a request into engine inputs, enforcing `limits`.

    The checker counts tokens with its own copy of the tokenizer, so request threads never
    wait for the engine thread (or it for them). Many request threads share that copy: a
    Hugging Face fast tokenizer is only unsafe ("Already borrowed") when a call changes its
    truncation or padding while another call encodes, and every call here asks for the
    same settings, which are set once, here, before any request arrives.
    """

    def __init__(self, limits: Limits, tokenizer, processor, backbone: BackboneConfig):
        """backbone: the served backbone's config: its features' width (`feat_dim`),
        whether it has a tower (else images must come as features), its `frame_grid` (0:
        frames are averaged, any token count goes; k: a frame's features must be a square
        grid to pool), its `family`, whose task prompts requests get (training's), its
        `text_budget` (an encoded text gets the smaller of what the request's visual tokens
        leave of the encoder's positions and `limits.max_text_tokens`; a task whose images
        leave none is refused: `BackboneConfig.check_task_fits`) and its
        `max_decoder_tokens` (a task's new tokens get what its decoder prompt leaves of it)."""
        self.limits, self.tokenizer = limits, copy.deepcopy(tokenizer)
        self.processor, self.backbone = processor, backbone
        self.feat_dim, self.has_vision = backbone.feat_dim, backbone.vision is not None
        self.frame_grid, self.family = backbone.frame_grid, backbone.family
        self.text_tokens = min(limits.max_text_tokens, backbone.max_text_tokens)
        decoder_tokens = backbone.max_decoder_tokens
        self.decoder_room = {} if decoder_tokens is None else {
            name: decoder_tokens - len(decoder_prompt_ids(
                self.tokenizer, task.decoder_prompt_for(self.family)))
            for name, task in TASKS.items()}
        self._count_tokens("")  # fixes the truncation setting before threads share it

    def check_message(self, size: int) -> None:
        if size > self.limits.max_message_bytes:
            raise InvalidInput(f"request is {size} bytes; limit max_message_bytes="
                               f"{self.limits.max_message_bytes}")

    def image(self, source, what: str) -> ImageInput:
        """One proto `Image` (encoded bytes or features) -> ImageInput."""
        kind = source.WhichOneof("source")
        if kind == "features":
            f = source.features
            return ImageInput(None, features=decode_features(
                f.data, f.tokens, f.feat_dim, self.feat_dim, self.limits, what))
        if kind != "encoded":
            raise InvalidInput(f"{what} is empty: give encoded bytes or features")
        if not self.has_vision:
            raise InvalidInput(f"{what}: this backbone has no vision tower; send features")
        image = decode_image(source.encoded, self.limits, what)
        pixels = self.processor(images=[image], return_tensors="pt")["pixel_values"][0]
        return ImageInput(hashlib.sha256(source.encoded).hexdigest(), pixels=pixels)

    def visual(self, spec: TaskSpec, images, video) -> list[ImageInput]:
        """The images (or frames) a task needs, in order; counts checked per task, and
        their visual tokens against the encoder's positions before any is decoded (a task
        that never fits this backbone: `TaskDoesNotFit`, FAILED_PRECONDITION)."""
        self.backbone.check_task_fits(spec)
        if spec.visual_input is VisualInput.VIDEO_FRAMES:
            frames = list(video.frames)
            if not frames:
                raise InvalidInput(f"task {spec.name} needs video frames")
            if len(frames) > self.limits.max_frames:
                raise InvalidInput(f"video has {len(frames)} frames; limit max_frames="
                                   f"{self.limits.max_frames}")
            self._check_visual_room(spec, images, video)
            return [self._frame(f, f"frame {i}") for i, f in enumerate(frames)]
        wanted = spec.n_visual_ids
        if len(images) != wanted:
            raise InvalidInput(f"task {spec.name} takes {wanted} image(s), got {len(images)}")
        self._check_visual_room(spec, images, video)
        return [self.image(img, f"image {i}") for i, img in enumerate(images)]

    @staticmethod
    def _sources(spec: TaskSpec, images, video) -> tuple[str, list]:
        """(the request field, its proto `Image`s) a task reads: video.frames or images."""
        if spec.visual_input is VisualInput.VIDEO_FRAMES:
            return "video.frames", list(video.frames)
        return "images", list(images)

    def visual_tokens(self, spec: TaskSpec, images, video) -> int:
        """The visual tokens a request's images (or video frames) become on this backbone
        (`BackboneConfig.visual_tokens`), read from their sizes alone: an encoded image
        `tokens_per_image`, features their declared `tokens`."""
        per_image = [source.features.tokens if source.WhichOneof("source") == "features"
                     else self.backbone.tokens_per_image
                     for source in self._sources(spec, images, video)[1]]
        return self.backbone.visual_tokens(spec.visual_input, per_image)

    def _check_visual_room(self, spec: TaskSpec, images, video) -> None:
        """Refuse images / frames / features whose visual tokens leave the encoder's
        positions too little room for text (only where they share them: Florence-2)."""
        tokens = self.visual_tokens(spec, images, video)
        if self.backbone.text_budget(tokens) >= MIN_TEXT_TOKENS:
            return
        field, sources = self._sources(spec, images, video)
        features = any(source.WhichOneof("source") == "features" for source in sources)
        positions = self.backbone.encoder_positions
        raise InvalidInput(f"{field}{' (features)' if features else ''} carry {tokens} visual "
                           f"tokens; the backbone's {positions} encoder positions, which "
                           f"visual tokens and text share, hold at most "
                           f"{positions - MIN_TEXT_TOKENS} beside a text")

    def _frame(self, source, what: str) -> ImageInput:
        """One video frame; features must form a square grid when frames keep a grid."""
        frame = self.image(source, what)
        if self.frame_grid and frame.features is not None:
            count = frame.features.shape[0]
            if round(count ** 0.5) ** 2 != count:
                raise InvalidInput(f"{what} has {count} feature tokens; this backbone keeps a "
                                   f"{self.frame_grid}x{self.frame_grid} grid per frame: send "
                                   f"a square grid of tokens (1, 4, 9, ...)")
        return frame

    def choices(self, spec: TaskSpec, choices: list[str]) -> list[str]:
        if spec.kind is not TaskKind.MULTIPLE_CHOICE:
            if choices:
                raise InvalidInput(f"task {spec.name} takes no choices")
            return []
        if not 2 <= len(choices) <= self.limits.max_choices:
            raise InvalidInput(f"task {spec.name} needs 2..{self.limits.max_choices} choices "
                               f"(limit max_choices), got {len(choices)}")
        return list(choices)

    def source_text(self, spec: TaskSpec, text: str, choices: list[str],
                    subtitles: str, visual_tokens: int = 0) -> str:
        """The encoder text, exactly as training builds it; each field's length checked in
        bytes before any tokenizing, then the whole in tokens against what the request's
        `visual_tokens` (`visual_tokens`) leave of the encoder's positions."""
        fields = {"text": text, "subtitles": subtitles,
                  **{f"choices[{i}]": choice for i, choice in enumerate(choices)}}
        for name, value in fields.items():
            self._check_bytes(name, value)
        source = spec.source_text(text, tuple(choices), subtitles, self.family)
        limit, why = self._text_limit(visual_tokens)
        if self._count_tokens(source) > limit:
            raise InvalidInput(f"text (with the task prompt, choices and subtitles) is more "
                               f"than {limit} tokens; {why}")
        return source

    def _text_limit(self, visual_tokens: int) -> tuple[int, str]:
        """(the most text tokens beside `visual_tokens`, the limit's name for a refusal)."""
        budget = self.backbone.text_budget(visual_tokens)
        if budget >= self.limits.max_text_tokens:
            return self.limits.max_text_tokens, \
                f"limit max_text_tokens={self.limits.max_text_tokens}"
        if self.backbone.visual_positions:
            return budget, (f"the backbone reads at most {budget} text tokens beside "
                            f"{visual_tokens} visual tokens (they share its "
                            f"{self.backbone.encoder_positions} encoder positions)")
        return budget, (f"the backbone reads at most {budget} text tokens (its language "
                        f"model's text positions)")

    def _check_bytes(self, name: str, value: str) -> None:
        limit = self.limits.max_text_bytes
        if len(value) > limit or len(value.encode("utf-8")) > limit:  # len(): chars <= bytes
            raise InvalidInput(f"{name} is more than {limit} bytes; limit max_text_bytes="
                               f"{limit} ({TEXT_BYTES_PER_TOKEN} x max_text_tokens)")

    def _count_tokens(self, source: str) -> int:
        """Tokens of `source`, counted up to the text limit + 1: the encoding is cut
        there, so an over-long text costs no more ids than the limit."""
        limit = self.text_tokens + 1
        return len(self.tokenizer(source, truncation=True, max_length=limit)["input_ids"])

    def generation(self, max_new_tokens: int, num_beams: int, task: str
                   ) -> tuple[int, int]:
        """-> (max_new_tokens, num_beams) with server defaults for zeros; a `task` answer
        must also fit in what the backbone's decoder positions leave after its prompt."""
        if max_new_tokens < 0 or max_new_tokens > self.limits.max_new_tokens:
            raise InvalidInput(f"max_new_tokens {max_new_tokens}; limit max_new_tokens="
                               f"{self.limits.max_new_tokens}")
        room = self.decoder_room.get(task, self.limits.max_new_tokens)
        if max_new_tokens > room:
            raise InvalidInput(f"max_new_tokens {max_new_tokens}; the backbone's decoder "
                               f"writes at most {room} new tokens for task {task!r} (its "
                               f"decoder positions less the task's decoder prompt)")
        if num_beams < 0 or num_beams > self.limits.max_beams:
            raise InvalidInput(f"num_beams {num_beams}; limit max_beams={self.limits.max_beams}")
        return max_new_tokens or min(self.limits.default_max_new_tokens, room), \
            max(num_beams, 1)
