"""Readers of the eight tasks' data formats, visual stores and the data-ratio subsample."""

from training.data.example import Example
from training.data.formats import DataFormat, LoadOptions, SplitData
from training.data.image_text import load_vqa_annotations, sample_vqa_target
from training.data.records import DataFormatError
from training.data.registry import (
    FORMATS,
    detect_format,
    format_names,
    load_split,
    read_split,
    subsample,
)
from training.data.subtitles import load_subtitles, read_srt
from training.data.visual_stores import (
    FeatureStore,
    H5FeatureStore,
    ImageFolder,
    MissingVisualError,
    NpzFolderStore,
    SafetensorsFeatureStore,
    VideoFrameFolder,
    VisualSource,
    load_image,
    open_feature_store,
    open_visual_source,
)

__all__ = [
    "FORMATS",
    "DataFormat",
    "DataFormatError",
    "Example",
    "FeatureStore",
    "H5FeatureStore",
    "ImageFolder",
    "LoadOptions",
    "MissingVisualError",
    "NpzFolderStore",
    "SafetensorsFeatureStore",
    "SplitData",
    "VideoFrameFolder",
    "VisualSource",
    "detect_format",
    "format_names",
    "load_image",
    "load_split",
    "load_subtitles",
    "load_vqa_annotations",
    "open_feature_store",
    "open_visual_source",
    "read_split",
    "read_srt",
    "sample_vqa_target",
    "subsample",
]
