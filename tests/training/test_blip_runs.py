"""A BLIP folder (Hugging Face's `save_pretrained` layout, with its tokenizer) trains VQA and
captioning adapters (`train-adapter train`), serves them over a real gRPC server, and runs
`train-adapter sweep` over the study's five methods."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import yaml
from family_helpers import blip_model
from training_helpers import check_tuned_backbone_written

from adapters_registry import Registry
from modeling.families import load_backbone
from modeling.tokenizer import build_word_tokenizer
from serving.client import Client
from serving.config import ServeConfig
from serving.server import Server
from training.cli import main
from training.config import load_task_split, parse_config
from training.data.visual_stores import ImageFolder
from training.text import corpus_words
from training.trainer import Trainer

STUDY_METHODS = ["prompt_tuning", "prefix_tuning", "lora", "adapter", "parallel_adapter"]


def _blip_folder(world: dict, mode: str, root: Path) -> Path:
    """A tiny random BLIP `mode` model with a word tokenizer over the world's words."""
    raw = world["raw"]
    examples = [e for t, d in parse_config(raw).tasks.items()
                for e in load_task_split(t, d, "train") + load_task_split(t, d, "val")]
    folder = root / f"blip-{mode}"
    model = blip_model(mode, "tiny", seed=0)
    model.save_pretrained(folder)
    build_word_tokenizer(corpus_words(examples), "bert",
                         model.config.text_config.vocab_size).save_pretrained(folder)
    return folder


def _run(world: dict, tmp_path: Path, folder: Path, tasks: list[str], **extra) -> dict:
    raw = {**world["raw"], "backbone": str(folder), "steps": 2, **extra,
           "tasks": {t: world["raw"]["tasks"][t] for t in tasks}}
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(raw))
    assert main(["train", "--config", str(config), "--out", str(tmp_path / "run"),
                 "--quiet"]) == 0
    return raw


@pytest.mark.parametrize("mode, tasks", [("vqa", ["vqa", "caption"]), ("caption", ["caption"])])
def test_blip_folder_trains_and_serves_its_tasks(world, tmp_path, mode, tasks):
    folder = _blip_folder(world, mode, tmp_path)
    raw = _run(world, tmp_path, folder, tasks)
    manifest = json.loads((tmp_path / "run" / "artifact" / "manifest.json").read_text())
    assert manifest["base_model"]["fingerprint"] == load_backbone(folder).fingerprint()
    assert manifest["base_model"]["lm_type"] == "bert"

    Registry(tmp_path / "registry").publish(tmp_path / "run" / "artifact", "blip")
    server = Server(ServeConfig(registry=str(tmp_path / "registry"), backbone=str(folder),
                                host="127.0.0.1", port=0, load=("blip",))).start()
    data = parse_config(raw).tasks[tasks[0]]
    first = load_task_split(tasks[0], data, "val")[0]
    image = ImageFolder(Path(data.visual)).image_path(first.visual_ids[0]).read_bytes()
    try:
        with Client(f"127.0.0.1:{server.port}") as client:
            replies = {"caption": client.caption(image, "blip")}
            if "vqa" in tasks:
                replies["vqa"] = client.vqa(image, first.text, "blip")
    finally:
        server.stop(grace=1)
    for task, reply in replies.items():  # tests/serving/test_blip_serving.py: the texts
        assert reply.adapter_name == "blip" and reply.adapter_version == 1, task


def test_blip_full_finetuning_runs_the_baseline_and_writes_the_tuned_model(world, tmp_path):
    folder = _blip_folder(world, "caption", tmp_path)
    raw = {**world["raw"], "backbone": str(folder), "steps": 1,
           "methods": [{"method": "full_finetuning"}],
           "tasks": {"caption": world["raw"]["tasks"]["caption"]}}
    trainer = Trainer(parse_config(raw), tmp_path / "run", show_progress=False)
    trainer.run()
    records = [json.loads(line) for line in
               (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert "caption" in records[-1]["eval"]
    check_tuned_backbone_written(tmp_path / "run", trainer.full.model, trainer.backbone)


def test_sweep_runs_the_studys_five_methods_on_blip(world, tmp_path):
    folder = _blip_folder(world, "vqa", tmp_path)
    config = tmp_path / "base.yaml"
    config.write_text(yaml.safe_dump({**world["raw"], "backbone": str(folder), "steps": 1,
                                      "tasks": {"vqa": world["raw"]["tasks"]["vqa"]}}))
    assert main(["sweep", "--config", str(config), "--out", str(tmp_path / "sweep"),
                 "--methods", ",".join(STUDY_METHODS), "--ratios", "1", "--sizes", "2"]) == 0
    with open(tmp_path / "sweep" / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert sorted(r["method"] for r in rows) == sorted(STUDY_METHODS)
    assert all(0 < float(r["percent"]) < 100 for r in rows)
