"""train-adapter pretrain: a backbone folder with tokenizer, reused on the next call."""

from __future__ import annotations

import json

from training.cli import main
from training.pretrain import PretrainSettings, pretrain
from training.synthetic.generate import SplitSizes


def test_pretrain_writes_a_reusable_backbone_with_an_attribute_report(tmp_path):
    settings = PretrainSettings(steps=2, batch_size=4, sizes=SplitSizes(6, 3, 3))
    backbone = pretrain(tmp_path / "backbone", tmp_path / "data", settings, show_progress=False)
    assert backbone.tokenizer is not None and not any(p.requires_grad
                                                      for p in backbone.parameters())
    # Every downstream word (answers, MC labels, prompts) has its own id.
    for word in ("true", "false", "a4", "nlvr", "yes", "circle"):
        assert backbone.tokenizer.convert_tokens_to_ids(word) != backbone.tokenizer.unk_token_id
    report = json.loads((tmp_path / "backbone" / "pretrain_report.json").read_text())
    assert {"vqa", "gqa", "tvc"} <= set(report) and "accuracy/colour" in report["vqa"]
    assert 0.0 <= report["tvc"]["motion"] <= 100.0
    fingerprint = backbone.fingerprint()
    again = pretrain(tmp_path / "backbone", tmp_path / "data", settings, show_progress=False)
    assert again.fingerprint() == fingerprint  # cached, not retrained


def test_pretrain_cli_prints_the_backbone_folder(tmp_path, capsys, monkeypatch):
    import training.pretrain as module

    monkeypatch.setattr(module, "PretrainSettings",
                        lambda **kw: PretrainSettings(**kw, batch_size=4,
                                                      sizes=SplitSizes(6, 3, 3)))
    assert main(["pretrain", "--out", str(tmp_path / "b"), "--data", str(tmp_path / "d"),
                 "--steps", "1", "--quiet"]) == 0
    assert f"backbone: {tmp_path / 'b'}" in capsys.readouterr().out


def test_motion_accuracy_compares_the_first_motion_word():
    from training.data import Example
    from training.pretrain import motion_accuracy

    examples = [Example("tvc", str(i), ("v",), "tvc:", targets=(target,)) for i, target in
                enumerate(["the red circle moves left", "a blue square stays still",
                           "two shapes", "the red square moves up and a circle moves left"])]
    predictions = {"0": "the red circle moves left", "1": "a blue square moves right",
                   "2": "anything", "3": "the square moves up"}
    assert motion_accuracy(predictions, examples) == 200 / 3  # example 2 names no motion
