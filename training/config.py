"""The run configuration of `train-adapter train` (a YAML file), validated field by field.

```yaml
backbone: runs/backbone-small        # a backbone folder with its tokenizer/, or a preset
                                     # name: random weights and a word tokenizer over the
                                     # run's data, saved as OUT/backbone (smoke runs)
methods: single_adapter              # a method preset, or a list of {method, config, sharing, id}
tasks:
  vqa: {train: data/vqa/v2_OpenEnded_mscoco_train2014_questions.json, visual: data/coco,
        annotations: "data/vqa/v2_mscoco_{split}2014_annotations.json", batch_size: 32}
  caption: {train: data/coco/dataset_coco.json, visual: data/coco}   # train2014/ val2014/
  tvqa: {train: data/tvqa/tvqa_train.jsonl, visual: data/tvqa/frames_hq,
         subtitles: data/tvqa/tvqa_subtitles, format: tvqa}         # format: optional
steps: 1000
```

Every error names the field and what was expected, and the CLI prints it in one line.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from adapters_registry.method_config import PUBLISH_SIZES, method_config_problem
from modeling.config import PRESETS
from modeling.presets import method_preset
from modeling.recipe import MethodEntry
from modeling.tasks import DEFAULT_FAMILY, TASKS, ChoiceAnswer
from training.data.example import Example
from training.data.formats import LoadOptions, SplitData
from training.data.registry import format_names, read_split


class ConfigError(ValueError):
    """A run configuration field is missing or wrong."""


@dataclass(frozen=True)
class TaskData:
    """Where one task's data lives. `visual`: an image folder, a video-frame folder (both
    searched in sub-folders too), or a feature file/folder (.h5, .safetensors, folder of
    .npz). `format`: the split files' layout (`training.data.FORMATS`, e.g. `vqav2`,
    `vl-t5`); detected from each file when absent."""

    train: str
    visual: str
    val: str | None = None
    test: str | None = None
    batch_size: int = 32
    subtitles: str | None = None
    annotations: str | None = None  # VQA: `{split}` is replaced by the split name
    format: str | None = None


# TaskData fields that are not paths (not checked as paths, not resolved from the config)
_NOT_PATHS = ("batch_size", "format")


@dataclass(frozen=True)
class RunConfig:
    backbone: str
    tasks: dict[str, TaskData]
    methods: list[MethodEntry]
    steps: int = 1000
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_steps: int = 0
    schedule: str = "linear"  # "linear" (VL-Adapter) or "cosine" (the empirical study)
    clip_grad: float = 5.0
    accumulation: int = 1
    sampling: str = "round_robin"  # or "proportional"
    # multiple choice answered by the option's label ("label", VL-Adapter) or its text
    choice_answer: ChoiceAnswer = ChoiceAnswer.LABEL
    data_ratio: float = 1.0
    eval_every: int | str = 0  # N steps, "epoch", or 0: only at the end
    eval_examples: int | None = None  # cap per task and split
    checkpoint_every: int = 0  # 0: only at the end
    max_new_tokens: int = 20
    precision: str = "fp32"  # "bf16" (GPU) or "fp32"
    seed: int = 0
    log_every: int = 10
    device: str = "cpu"
    java_metrics: bool | None = None  # captioning: Java PTB tokenizer + METEOR (None: if found)
    # Folder of the encoded-feature cache (None: OUT/feature-cache); runs over the same
    # backbone and image folders may share one, so each image is encoded once for all.
    feature_cache: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


# What decides a run's trajectory: resuming a checkpoint needs these to match. Steps may
# grow (extend a run); evaluation, logging, device and data paths may change.
_TRAJECTORY = ("lr", "weight_decay", "warmup_steps", "schedule", "clip_grad", "accumulation",
               "sampling", "data_ratio", "precision", "seed")


def run_identity(config: RunConfig, backbone_fingerprint: str) -> dict[str, Any]:
    """The settings a checkpoint must share with the run that resumes it, as plain JSON."""
    identity = {name: getattr(config, name) for name in _TRAJECTORY}
    identity["backbone"] = backbone_fingerprint
    if config.choice_answer != ChoiceAnswer.LABEL:  # absent from checkpoints made before it
        identity["choice_answer"] = ChoiceAnswer(config.choice_answer).value
    identity["methods"] = [asdict(entry) for entry in config.methods]
    identity["tasks"] = {name: data.batch_size for name, data in sorted(config.tasks.items())}
    return json.loads(json.dumps(identity))


_CHOICES = {"schedule": ("linear", "cosine"), "sampling": ("round_robin", "proportional"),
            "choice_answer": tuple(answer.value for answer in ChoiceAnswer),
            "precision": ("fp32", "bf16")}
# field -> smallest allowed value, for the integer and the (finite) number fields.
_INTEGERS = {"steps": 1, "accumulation": 1, "max_new_tokens": 1, "log_every": 1,
             "warmup_steps": 0, "checkpoint_every": 0, "seed": 0}
_NUMBERS = {"weight_decay": 0.0}
_POSITIVE_NUMBERS = ("lr", "clip_grad")
_DEVICE = re.compile(r"cpu|cuda(:\d+)?")


def _is_integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return (isinstance(value, int | float) and not isinstance(value, bool)
            and math.isfinite(value))


def _methods(value: Any) -> list[MethodEntry]:
    if isinstance(value, str):
        try:
            return method_preset(value)
        except ValueError as err:
            raise ConfigError(f"methods: {err}") from None
    if not isinstance(value, list) or not value:
        raise ConfigError("methods: expected a preset name or a non-empty list of methods")
    entries = []
    for i, item in enumerate(value):
        if not isinstance(item, dict) or "method" not in item:
            raise ConfigError(f"methods[{i}]: expected a mapping with a 'method' key")
        unknown = set(item) - {"method", "config", "sharing", "id"}
        if unknown:
            raise ConfigError(f"methods[{i}]: unknown key(s) {sorted(unknown)}")
        config = item.get("config") or {}
        problem = method_config_problem(item["method"], config, PUBLISH_SIZES) \
            if isinstance(config, dict) else "config: expected a mapping"
        if problem is not None:
            raise ConfigError(f"methods[{i}]: {problem}")
        entries.append(MethodEntry(item["method"], config,
                                   item.get("sharing", "single"), item.get("id")))
    return entries


def _task_data(name: str, value: Any) -> TaskData:
    if name not in TASKS:
        raise ConfigError(f"tasks: unknown task {name!r}; expected some of {list(TASKS)}")
    if not isinstance(value, dict):
        raise ConfigError(f"tasks.{name}: expected a mapping with 'train' and 'visual'")
    known = {f.name for f in fields(TaskData)}
    unknown = set(value) - known
    if unknown:
        raise ConfigError(f"tasks.{name}: unknown key(s) {sorted(unknown)}; expected some of "
                          f"{sorted(known)}")
    for required in ("train", "visual"):
        if required not in value:
            raise ConfigError(f"tasks.{name}.{required}: missing")
    for key in sorted(known - set(_NOT_PATHS)):
        path = value.get(key)
        if (key in ("train", "visual") or path is not None) \
                and (not isinstance(path, str) or not path):
            raise ConfigError(f"tasks.{name}.{key}: expected a path, got {path!r}")
    data_format = value.get("format")
    if data_format is not None and data_format not in format_names(name):
        raise ConfigError(f"tasks.{name}.format: expected one of {list(format_names(name))} "
                          f"(or nothing: detected from each file), got {data_format!r}")
    data = TaskData(**value)
    if not _is_integer(data.batch_size) or data.batch_size < 1:
        raise ConfigError(f"tasks.{name}.batch_size: expected a positive integer, "
                          f"got {data.batch_size!r}")
    return data


def _check_scalars(values: dict[str, Any]) -> None:
    for key, choices in _CHOICES.items():
        if key in values and values[key] not in choices:
            raise ConfigError(f"{key}: expected one of {choices}, got {values[key]!r}")
    for key, least in _INTEGERS.items():
        if key in values and (not _is_integer(values[key]) or values[key] < least):
            raise ConfigError(f"{key}: expected an integer >= {least}, got {values[key]!r}")
    for key, least in _NUMBERS.items():
        if key in values and (not _is_number(values[key]) or values[key] < least):
            raise ConfigError(f"{key}: expected a number >= {least:g}, got {values[key]!r}")
    for key in _POSITIVE_NUMBERS:
        if key in values and (not _is_number(values[key]) or values[key] <= 0):
            raise ConfigError(f"{key}: expected a positive number, got {values[key]!r}")
    every = values.get("eval_every", 0)
    if every != "epoch" and (not _is_integer(every) or every < 0):
        raise ConfigError(f"eval_every: expected a step count >= 0 or 'epoch', got {every!r}")
    ratio = values.get("data_ratio", 1.0)
    if not _is_number(ratio) or not 0 < ratio <= 1:
        raise ConfigError(f"data_ratio: expected a number in (0, 1], got {ratio!r}")
    cap = values.get("eval_examples")
    if cap is not None and (not _is_integer(cap) or cap < 1):
        raise ConfigError(f"eval_examples: expected an integer >= 1 (or nothing: no cap), "
                          f"got {cap!r}")
    if values.get("java_metrics") not in (None, True, False):
        raise ConfigError(f"java_metrics: expected true, false or nothing (use Java if "
                          f"found), got {values['java_metrics']!r}")
    cache = values.get("feature_cache")
    if cache is not None and (not isinstance(cache, str) or not cache):
        raise ConfigError(f"feature_cache: expected a folder path (or nothing: the run's "
                          f"own OUT/feature-cache), got {cache!r}")
    device = values.get("device", "cpu")
    if not isinstance(device, str) or not _DEVICE.fullmatch(device):
        raise ConfigError(f"device: expected cpu, cuda or cuda:N, got {device!r}")


def parse_config(raw: dict[str, Any], base_dir: Path | None = None) -> RunConfig:
    """Validate a config mapping; relative paths are taken from `base_dir`."""
    if not isinstance(raw, dict):
        raise ConfigError("the config must be a mapping")
    known = {f.name for f in fields(RunConfig)} - {"extra"}
    unknown = set(raw) - known
    if unknown:
        raise ConfigError(f"unknown key(s) {sorted(unknown)}; expected some of {sorted(known)}")
    for required in ("backbone", "tasks", "methods"):
        if required not in raw:
            raise ConfigError(f"{required}: missing")
    if not isinstance(raw["tasks"], dict) or not raw["tasks"]:
        raise ConfigError("tasks: expected a mapping of task name -> data")
    _check_scalars(raw)
    tasks = {name: _resolve(_task_data(name, value), base_dir)
             for name, value in raw["tasks"].items()}
    backbone = str(raw["backbone"])
    if base_dir is not None and backbone not in PRESETS and not Path(backbone).is_absolute():
        backbone = str(base_dir / backbone)
    cache = raw.get("feature_cache")
    if base_dir is not None and cache is not None and not Path(cache).is_absolute():
        cache = str(base_dir / cache)
    return RunConfig(**{**raw, "backbone": backbone, "tasks": tasks, "feature_cache": cache,
                        "choice_answer": ChoiceAnswer(raw.get("choice_answer", ChoiceAnswer.LABEL)),
                        "methods": _methods(raw["methods"])})


def _resolve(data: TaskData, base_dir: Path | None) -> TaskData:
    if base_dir is None:
        return data
    updates = {}
    for f in fields(TaskData):
        value = getattr(data, f.name)
        if isinstance(value, str) and f.name not in _NOT_PATHS and not Path(value).is_absolute():
            updates[f.name] = str(base_dir / value)
    return TaskData(**{**data.__dict__, **updates})


def load_config(path: str | Path) -> RunConfig:
    """Read and validate a YAML run config."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} " + ("is a folder" if path.is_dir()
                                                     else "does not exist"))
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path}: not valid YAML ({err})") from None
    return parse_config(raw, base_dir=path.parent)


def read_task_split(task: str, data: TaskData, split: str,
                    one_per_caption: bool | None = None,
                    family: str = DEFAULT_FAMILY) -> SplitData:
    """One split (`train`, `val`, `test`) of a configured task, with the format it was read
    as (see `training.data.read_split` for the errors), prompted for a backbone of `family`
    (`BackboneConfig.family`)."""
    annotations = data.annotations.replace("{split}", split) if data.annotations else None
    options = LoadOptions(split=split, data_format=data.format,
                          vqa_annotations_path=Path(annotations) if annotations else None,
                          subtitles_path=Path(data.subtitles) if data.subtitles else None,
                          one_per_caption=one_per_caption, family=family)
    return read_split(task, getattr(data, split), options)


def load_task_split(task: str, data: TaskData, split: str,
                    family: str = DEFAULT_FAMILY) -> list[Example]:
    """The examples of one split (`train`, `val`, `test`) of a configured task, prompted
    for a backbone of `family`."""
    return read_task_split(task, data, split, family=family).examples
