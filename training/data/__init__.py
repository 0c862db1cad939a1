"""Readers for the VL-Adapter task formats, visual stores and the data-ratio subsample."""

from training.data.example import Example
from training.data.image_text import (
    load_coco_captions,
    load_gqa,
    load_nlvr2,
    load_vqa,
    load_vqa_annotations,
    sample_vqa_target,
)
from training.data.records import DataFormatError
from training.data.registry import LOADERS, LoadOptions, load_split, subsample
from training.data.video_text import load_subtitles, load_video_captions, load_video_qa
from training.data.visual_stores import (
    FeatureStore,
    H5FeatureStore,
    ImageFolder,
    MissingVisualError,
    NpzFolderStore,
    SafetensorsFeatureStore,
    VideoFrameFolder,
    load_image,
    open_feature_store,
)

__all__ = [
    "LOADERS",
    "DataFormatError",
    "Example",
    "FeatureStore",
    "H5FeatureStore",
    "ImageFolder",
    "LoadOptions",
    "MissingVisualError",
    "NpzFolderStore",
    "SafetensorsFeatureStore",
    "VideoFrameFolder",
    "load_coco_captions",
    "load_image",
    "load_gqa",
    "load_nlvr2",
    "load_split",
    "load_subtitles",
    "load_video_captions",
    "load_video_qa",
    "load_vqa",
    "load_vqa_annotations",
    "open_feature_store",
    "sample_vqa_target",
    "subsample",
]
