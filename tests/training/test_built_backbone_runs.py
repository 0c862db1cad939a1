"""A backbone built from Hugging Face folders trains (`train-adapter train`) and serves (a
real gRPC server over the built folder) like any backbone folder."""

from __future__ import annotations

import json
from pathlib import Path

import yaml
from hf_parts import save_lm, save_tower

from adapters_registry import Registry
from modeling.families import load_backbone
from serving.client import Client
from serving.config import ServeConfig
from serving.server import Server
from training.cli import main
from training.config import load_task_split, parse_config
from training.data.visual_stores import ImageFolder
from training.text import corpus_words


def test_built_backbone_trains_and_serves_nlvr2(world, tmp_path, capsys):
    raw = {**world["raw"], "steps": 2,
           "tasks": {"nlvr2": world["raw"]["tasks"]["nlvr2"]}}
    data = parse_config(raw).tasks["nlvr2"]
    examples = load_task_split("nlvr2", data, "train") + load_task_split("nlvr2", data, "val")
    save_lm(tmp_path / "bart", "bart", corpus_words(examples))
    save_tower(tmp_path / "siglip", "siglip_vision")
    assert main(["backbone", "build", "--vision", str(tmp_path / "siglip"), "--lm",
                 str(tmp_path / "bart"), "--out", str(tmp_path / "bb"), "--image-grid",
                 "2"]) == 0
    fingerprint = capsys.readouterr().out.splitlines()[-1].removeprefix("fingerprint: ")
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({**raw, "backbone": str(tmp_path / "bb")}))
    assert main(["train", "--config", str(config), "--out", str(tmp_path / "run"),
                 "--quiet"]) == 0
    manifest = json.loads((tmp_path / "run" / "artifact" / "manifest.json").read_text())
    assert manifest["base_model"]["fingerprint"] == fingerprint == \
        load_backbone(tmp_path / "bb").fingerprint()

    Registry(tmp_path / "registry").publish(tmp_path / "run" / "artifact", "built")
    server = Server(ServeConfig(registry=str(tmp_path / "registry"),
                                backbone=str(tmp_path / "bb"), host="127.0.0.1", port=0,
                                load=("built",))).start()
    try:
        images = ImageFolder(Path(data.visual))
        first = examples[0]
        with Client(f"127.0.0.1:{server.port}") as client:
            reply = client.nlvr2(images.image_path(first.visual_ids[0]).read_bytes(),
                                 images.image_path(first.visual_ids[1]).read_bytes(),
                                 first.text, "built")
    finally:
        server.stop(grace=1)
    assert reply.label in ("true", "false")
    assert sorted(score.label for score in reply.scores) == ["false", "true"]
    assert reply.adapter_name == "built" and reply.adapter_version == 1
