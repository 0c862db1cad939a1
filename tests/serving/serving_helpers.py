"""Serving test helpers: a tiny backbone with a word tokenizer, random adapters, request
builders, a server starter and a direct oracle (the modeling API alone, no server).

A module of its own (not conftest): several test folders have a conftest.py, so
`from conftest import ...` would pick whichever was imported last.
"""


from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import pytest
import torch
from PIL import Image
from prometheus_client import generate_latest

from adapters_registry import Registry
from modeling.backbone import VLBackbone
from modeling.bank import build_bank
from modeling.config import preset
from modeling.generation import beam_search, greedy, score_candidates
from modeling.inputs import VisualTokens, image_processor, images_to_pixels, make_batch
from modeling.kernels import RowIndex
from modeling.methods.base import BackboneFacts
from modeling.recipe import AdapterModel, MethodEntry
from modeling.tasks import TASKS, ChoiceAnswer, TaskKind, VisualInput
from modeling.tokenizer import build_word_tokenizer
from serving.config import ServeConfig
from serving.metrics import ServerMetrics
from serving.protos import inference_pb2, repository_pb2, repository_pb2_grpc
from serving.server import Server
from training.artifact import write_artifact

ALL_TASKS = list(TASKS)
WORDS = ["what", "is", "the", "color", "shape", "red", "blue", "circle", "true", "false",
         "[", "]", ":", "subs", "q", "choices", "left", "right", "a", "man", "cooks",
         *[f"a{i}" for i in range(8)], *[w.strip(": ") for w in (s.prompt for s in
                                                                 TASKS.values())]]
# Artifacts published by the `registry` fixture: name -> (recipe, tasks, seeds per version).
RECIPES = {
    "alpha": ([MethodEntry("adapter", {"reduction_factor": 8}, "multiple"),
               MethodEntry("trainable_tensors", {"layer_norms": True}, "single", "tensors")],
              ALL_TASKS, (11, 12)),
    "beta": ([MethodEntry("lora", {"rank": 4, "alpha": 8}, "single"),
              MethodEntry("prompt_tuning", {"length": 3, "hidden_dim": 16}, "multiple")],
             ["vqa", "nlvr2", "caption", "tvqa"], (21,)),
    "gamma": ([MethodEntry("prefix_tuning", {"length": 2, "hidden_dim": 16}, "single")],
              ["vqa", "gqa", "tvc", "how2qa", "yc2c"], (31,)),
}

# The KServe model name test servers host their vision tower as (`--serve-vision-model`).
VISION_MODEL = "clip_vision"


def tiny_backbone(seed: int = 0, name: str = "tiny") -> VLBackbone:
    """The tiny T5 preset (or preset `name`) with a word tokenizer filling its whole
    vocabulary.

    Filler words make every id decode to a word, so generated texts from random weights
    differ exactly when their ids do.
    """
    config = preset(name)
    vocab = config.lm["vocab_size"]
    words = WORDS + [f"w{i}" for i in range(vocab)]
    words = list(dict.fromkeys(w.lower() for w in words))[: vocab - 3]
    return VLBackbone.from_config(config, seed=seed,
                                  tokenizer=build_word_tokenizer(words, "t5", vocab))


def random_adapter(backbone: VLBackbone, recipe, tasks, seed: int) -> AdapterModel:
    """An AdapterModel whose every trainable tensor is random (zero ups would hide bugs)."""
    model = AdapterModel(recipe, BackboneFacts.of(backbone), tasks)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad:
                param.add_(torch.randn(param.shape, generator=gen) * 0.3)
    return model.eval()


def png(seed: int, size: int = 32) -> bytes:
    """A random RGB PNG."""
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG")
    return out.getvalue()


@dataclass
class Published:
    root: str
    models: dict[tuple[str, int], AdapterModel]  # (name, version) -> the published model


def publish_recipes(backbone: VLBackbone, base: Path) -> Published:
    """A registry under `base` with alpha v1/v2 (adapter + LayerNorms), beta (LoRA +
    prompts) and gamma (prefixes), random adapters of `backbone` (`RECIPES`)."""
    registry = Registry(str(base / "store"))
    models = {}
    for name, (recipe, tasks, seeds) in RECIPES.items():
        for seed in seeds:
            model = random_adapter(backbone, recipe, tasks, seed)
            out = base / f"{name}-{seed}"
            write_artifact(out, model, backbone, {"trainable": model.trainable_count()})
            models[(name, registry.publish(out, name))] = model
    return Published(str(base / "store"), models)


def start_server(backbone, published: Published, **settings) -> Server:
    config = ServeConfig(registry=published.root, host="127.0.0.1", port=0,
                         load=("alpha", "beta", "gamma"), **settings)
    return Server(config, backbone=backbone).start()


def request_for(task: str, adapter: str = "alpha", seed: int = 0, version: int | None = None,
                **options) -> inference_pb2.PredictRequest:
    """A valid request for `task` with random images / frames and task-shaped text."""
    spec = TASKS[task]
    message = inference_pb2.PredictRequest(task=task, request_id=f"{task}-{seed}")
    message.adapter.name = adapter
    if version is not None:
        message.adapter.version = version
    if spec.visual_input is VisualInput.VIDEO_FRAMES:
        message.video.frames.extend(inference_pb2.Image(encoded=png(seed * 10 + i))
                                    for i in range(3))
        message.video.subtitles = "a man cooks"
    else:
        count = 2 if spec.visual_input is VisualInput.TWO_IMAGES else 1
        message.images.extend(inference_pb2.Image(encoded=png(seed * 10 + i))
                              for i in range(count))
    if spec.kind is TaskKind.MULTIPLE_CHOICE:
        message.choices.extend(["red circle", "blue", "left"])
    if not spec.is_captioning:
        message.text = "what is the color" if spec.kind is not TaskKind.BINARY else "red left"
    message.generation.max_new_tokens = options.get("max_new_tokens", 4)
    message.generation.num_beams = options.get("num_beams", 0)
    return message


@torch.no_grad()
def direct(backbone: VLBackbone, model: AdapterModel, message,
           choice_answer: ChoiceAnswer = ChoiceAnswer.LABEL) -> tuple[str, list[float]]:
    """The answer of the modeling API alone (no server): (text, candidate log-probs;
    multiple choice scored in `choice_answer` form)."""
    spec = TASKS[message.task]
    vision = backbone.config.vision
    processor = image_processor(vision.image_size, vision.tower)
    frames = message.video.frames if spec.visual_input is VisualInput.VIDEO_FRAMES \
        else message.images
    pixels = images_to_pixels([Image.open(io.BytesIO(f.encoded)) for f in frames], processor)
    if spec.visual_input is VisualInput.VIDEO_FRAMES:
        tokens, valid = backbone.encode_frames(pixels)
        visual = VisualTokens(tokens[valid], torch.zeros(int(valid.sum()), dtype=torch.long))
    else:
        visual = VisualTokens.concat(list(backbone.encode_images(pixels)))
    source = spec.source_text(message.text, tuple(message.choices), message.video.subtitles,
                              backbone.config.family)
    tokenizer = backbone.tokenizer
    batch = make_batch(tokenizer, [source], [visual],
                       decoder_prompts=[spec.decoder_prompt_for(backbone.config.family)])
    bank = build_bank([model.materialize(message.task)], backbone.frozen_tensors(),
                            backbone.config.d_model, torch.zeros(()))
    index = RowIndex.of(torch.zeros(1, dtype=torch.long))
    if spec.is_scored:
        labels = spec.candidate_labels(message.choices, choice_answer)
        ids = [tokenizer(label)["input_ids"] for label in labels]
        candidates = torch.full((1, len(ids), max(map(len, ids))), -100, dtype=torch.long)
        for c, row in enumerate(ids):
            candidates[0, c, :len(row)] = torch.tensor(row)
        scores = score_candidates(backbone, batch, candidates, bank, index,
                                  [ChoiceAnswer(choice_answer).per_token])[0].tolist()
        best = max(range(len(scores)), key=scores.__getitem__)
        text = spec.answer_text(best, message.choices)
        return text, scores
    beams = max(message.generation.num_beams, 1)
    if beams > 1:
        out = beam_search(backbone, batch, bank, index, message.generation.max_new_tokens,
                          beams)
    else:
        out = greedy(backbone, batch, bank, index, message.generation.max_new_tokens)
    return tokenizer.decode(out[0], skip_special_tokens=True).strip(), []


def metrics_text(metrics: ServerMetrics) -> str:
    """The Prometheus text exposition of every metric of `metrics`, as a scrape reads it."""
    return generate_latest(metrics.registry).decode("utf-8")


def load_refusal(channel, name: str):
    """The error a Repository.Load of adapter `name` over `channel` answers with (the test
    fails if the load succeeds): a grpc.RpcError."""
    request = repository_pb2.LoadRequest()
    request.adapter.name = name
    with pytest.raises(grpc.RpcError) as caught:
        repository_pb2_grpc.RepositoryStub(channel).Load(request, timeout=30)
    return caught.value
