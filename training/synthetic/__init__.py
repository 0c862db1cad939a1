"""A small synthetic vision-language world with all eight task kinds, in the real formats."""

from training.synthetic.generate import (
    DEFAULT_SIZES,
    SplitSizes,
    generate,
    subtitles_path,
    vqa_annotations_path,
)
from training.synthetic.world import WorldConfig

__all__ = [
    "DEFAULT_SIZES",
    "SplitSizes",
    "WorldConfig",
    "generate",
    "subtitles_path",
    "vqa_annotations_path",
]
