"""train-adapter train: exact resume, frozen backbone, artifacts, CLI, and DDP on gloo."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file
from training_helpers import TASKS, check_tuned_backbone_written

from modeling import families
from modeling.tasks import ChoiceAnswer
from training import batches
from training.cli import main
from training.config import ConfigError, parse_config
from training.features import VisualFeatures
from training.trainer import Trainer


def _trainable(trainer: Trainer) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in trainer.model.named_parameters()}


def test_killed_and_resumed_run_ends_with_the_same_weights(world, tmp_path):
    config = parse_config(world["raw"])
    straight = Trainer(config, tmp_path / "straight", show_progress=False)
    straight.run()
    interrupted = Trainer(config, tmp_path / "resumed", show_progress=False)
    interrupted.run(stop_after=3)
    del interrupted  # the process "dies"; a new one picks up the checkpoint
    resumed = Trainer(config, tmp_path / "resumed", show_progress=False)
    resumed.run()
    assert resumed.step == straight.step == 6
    a, b = _trainable(straight), _trainable(resumed)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resuming_a_checkpoint_of_other_settings_is_refused_naming_them(world, tmp_path):
    Trainer(parse_config(world["raw"]), tmp_path, show_progress=False).run(stop_after=2)
    changed = parse_config({**world["raw"], "lr": 0.5, "seed": 7})
    with pytest.raises(ConfigError, match=r"different lr, seed; resuming needs the same"):
        Trainer(changed, tmp_path, show_progress=False).run()
    cloze = parse_config({**world["raw"], "choice_answer": "text"})  # other targets
    with pytest.raises(ConfigError, match=r"different choice_answer; resuming"):
        Trainer(cloze, tmp_path, show_progress=False).run()
    longer = Trainer(parse_config({**world["raw"], "steps": 8}), tmp_path, show_progress=False)
    longer.run()  # more steps is fine: the run is extended
    assert longer.step == 8


def test_a_checkpoint_of_an_earlier_method_layout_is_refused_in_one_line(world, tmp_path):
    """Same run settings, other trainable tensors (a method whose parameterisation changed
    since, as the hyperformer preset did): resuming names the tensors, never a KeyError."""
    Trainer(parse_config(world["raw"]), tmp_path, show_progress=False).run(stop_after=2)
    path = tmp_path / "checkpoints" / "last" / "tensors.safetensors"
    tensors = load_file(path)
    name = next(k for k in tensors if k.startswith("model/"))
    tensors[name + "_earlier_layout"] = tensors.pop(name)
    save_file(tensors, path)
    with pytest.raises(ValueError, match=r"does not hold this run's trainable tensors \(mis"
                                         r"sing \['" + name.split("/", 1)[1]) as caught:
        Trainer(parse_config(world["raw"]), tmp_path, show_progress=False).run()
    assert "\n" not in str(caught.value) and "earlier_layout" in str(caught.value)


def test_a_save_that_died_between_its_renames_leaves_a_checkpoint_to_resume(world, tmp_path):
    trainer = Trainer(parse_config(world["raw"]), tmp_path, show_progress=False)
    trainer.run(stop_after=3)
    last = tmp_path / "checkpoints" / "last"
    os.replace(last, last.with_name("last.old"))  # killed after moving the old one aside
    resumed = Trainer(parse_config(world["raw"]), tmp_path, show_progress=False)
    assert resumed.resume() and resumed.step == 3


def test_eval_every_epoch_evaluates_after_each_pass_over_the_data(world, tmp_path):
    raw = {**world["raw"], "eval_every": "epoch"}
    epoch = Trainer(parse_config(raw), tmp_path / "probe", show_progress=False).epoch_steps()
    trainer = Trainer(parse_config({**raw, "steps": 2 * epoch}), tmp_path, show_progress=False)
    expected = sum(len(s.train) // 4 for s in trainer.tasks.values())  # batch size 4
    assert trainer.eval_interval == epoch == expected
    trainer.run()
    evals = [json.loads(line)["step"] for line in (tmp_path / "log.jsonl").read_text()
             .splitlines() if '"eval"' in line]
    assert evals == [epoch, 2 * epoch]


def test_backbone_stays_bit_identical_and_only_trainables_reach_the_optimizer(world, tmp_path):
    trainer = Trainer(parse_config(world["raw"]), tmp_path, show_progress=False)
    before = {k: v.clone() for k, v in trainer.backbone.state_dict().items()}
    trainer.run()
    assert all(torch.equal(v, trainer.backbone.state_dict()[k]) for k, v in before.items())
    in_optimizer = {id(p) for g in trainer.optimizer.param_groups for p in g["params"]}
    trainable = {id(p) for p in trainer.model.parameters() if p.requires_grad}
    assert in_optimizer == trainable
    assert not any(id(p) in in_optimizer for p in trainer.backbone.parameters())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU (run on a GPU machine)")
def test_a_run_on_cuda_trains_evaluates_and_writes_its_artifact_there(world, tmp_path):
    """`device: cuda`: the backbone, the trainable tensors, the steps, the towers' features
    and evaluation all on the GPU (the first GPU run found the trainer left them on the
    CPU); its artifact loads as the CPU run's does, trained on the same fingerprint."""
    config = parse_config({**world["raw"], "device": "cuda"})
    trainer = Trainer(config, tmp_path, show_progress=False)
    results = trainer.run()
    assert all(p.is_cuda for p in trainer.model.parameters())
    assert all(p.is_cuda for p in trainer.backbone.parameters())
    assert set(results) == set(TASKS)
    manifest = json.loads((tmp_path / "artifact" / "manifest.json").read_text())
    cpu = Trainer(parse_config(world["raw"]), tmp_path / "cpu", show_progress=False)
    assert manifest["base_model"]["fingerprint"] == cpu.fingerprint
    assert all(torch.isfinite(t).all() for name in manifest["files"]
               for t in load_file(tmp_path / "artifact" / name).values())


def test_artifact_holds_only_trainable_tensors_and_a_full_manifest(world, tmp_path):
    trainer = Trainer(parse_config(world["raw"]), tmp_path, show_progress=False)
    trainer.run()
    manifest = json.loads((tmp_path / "artifact" / "manifest.json").read_text())
    assert manifest["base_model"]["fingerprint"] == trainer.backbone.fingerprint()
    assert set(manifest["tasks"]) == set(TASKS)
    assert manifest["tasks"]["nlvr2"]["prompt"] == "nlvr: "
    assert {m["method"] for m in manifest["methods"]} == {"lora", "adapter"}
    headers, data = 0, 0
    for name, entry in manifest["files"].items():
        raw = (tmp_path / "artifact" / name).read_bytes()
        assert entry["size"] == len(raw)
        headers += 8 + int.from_bytes(raw[:8], "little")
        data += sum(t.numel() * t.element_size()
                    for t in load_file(tmp_path / "artifact" / name).values())
    assert data == trainer.model.trainable_count() * 4
    assert headers + data == sum(e["size"] for e in manifest["files"].values())
    assert set(manifest["metrics"]) == set(TASKS)
    assert manifest["parameters"]["trainable"] == trainer.model.trainable_count()
    assert any((tmp_path / "tensorboard").iterdir())
    steps = [json.loads(line)["step"] for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert steps[:3] == [2, 4, 6]


def test_each_log_line_holds_every_task_trained_since_the_last_one(world, tmp_path):
    """Round robin over 8 tasks with a line every 4 steps: the step on the line is always
    one of the same tasks, yet together the lines show every task's loss."""
    raw = {**world["raw"], "steps": 8, "log_every": 4, "sampling": "round_robin"}
    trainer = Trainer(parse_config(raw), tmp_path, show_progress=False)
    trainer.run()
    lines = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()
             if '"task_loss"' in line]
    assert [line["step"] for line in lines] == [4, 8]
    assert all(len(line["task_loss"]) == 4 for line in lines)
    assert set(lines[0]["task_loss"]) | set(lines[1]["task_loss"]) == set(TASKS)
    # Each task ran once per line here, so its mean is that step's loss.
    assert all(line["task_loss"][line["task"]] == line["loss"] for line in lines)


def test_runs_sharing_a_feature_cache_encode_each_image_once(world, tmp_path, monkeypatch):
    raw = {**world["raw"], "feature_cache": str(tmp_path / "shared")}
    Trainer(parse_config(raw), tmp_path / "first", show_progress=False)
    assert any((tmp_path / "shared").glob("features-*.safetensors"))
    assert not (tmp_path / "first" / "feature-cache").exists()
    assert not list((tmp_path / "shared").glob("*.tmp"))  # written aside, then renamed

    encoded = []
    monkeypatch.setattr(VisualFeatures, "_encode_images",
                        lambda self, folder, ids: encoded.extend(ids))
    monkeypatch.setattr(VisualFeatures, "_encode_video",
                        lambda self, paths: encoded.append(paths))
    second = Trainer(parse_config(raw), tmp_path / "second", show_progress=False)
    assert encoded == [] and all(state.features.table for state in second.tasks.values())


def test_a_run_on_option_texts_trains_on_them_and_its_artifact_records_it(world, tmp_path,
                                                                          monkeypatch):
    raw = {**world["raw"], "choice_answer": "text", "steps": 8, "sampling": "round_robin"}
    trainer = Trainer(parse_config(raw), tmp_path, show_progress=False)
    tvqa = trainer.tasks["tvqa"].train[0]
    rng = np.random.default_rng(0)
    assert batches.training_target(tvqa, rng, ChoiceAnswer.TEXT) == \
        (tvqa.choices[tvqa.label], 1.0)
    assert batches.training_target(tvqa, rng) == (f"a{tvqa.label}", 1.0)
    forms = set()
    target = batches.training_target

    def spy(example, rng, choice_answer=ChoiceAnswer.LABEL):
        forms.add(choice_answer)
        return target(example, rng, choice_answer)

    monkeypatch.setattr(batches, "training_target", spy)
    trainer.run()
    assert forms == {ChoiceAnswer.TEXT}
    tasks = json.loads((tmp_path / "artifact" / "manifest.json").read_text())["tasks"]
    assert tasks["tvqa"]["choice_answer"] == "text"
    assert "choice_answer" not in tasks["vqa"] and "choice_answer" not in tasks["nlvr2"]


def test_full_finetuning_writes_the_tuned_model_as_a_backbone_folder(world, tmp_path):
    raw = {**world["raw"], "steps": 1, "methods": [{"method": "full_finetuning"}],
           "tasks": {"vqa": world["raw"]["tasks"]["vqa"]}}
    trainer = Trainer(parse_config(raw), tmp_path, show_progress=False)
    trainer.run()
    check_tuned_backbone_written(tmp_path, trainer.full.model, trainer.backbone)
    assert list(trainer.outputs()) == ["backbone"]


def test_cli_names_what_a_full_finetuning_run_on_a_preset_wrote(world, tmp_path, capsys):
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({**world["raw"], "backbone": "tiny", "steps": 1,
                                      "methods": [{"method": "full_finetuning"}],
                                      "tasks": {"vqa": world["raw"]["tasks"]["vqa"]}}))
    assert main(["train", "--config", str(config), "--out", str(tmp_path / "out"),
                 "--quiet"]) == 0
    written = [line for line in capsys.readouterr().out.splitlines()
               if line.startswith(("artifact:", "backbone:"))]
    assert written == [f"backbone: {tmp_path / 'out' / 'backbone'} (fully fine-tuned tiny: "
                       "no adapter; use it as --backbone)"]
    tuned = families.load_backbone(tmp_path / "out" / "backbone")
    assert tuned.tokenizer is not None  # the run's tokenizer travels with it
    assert not (tmp_path / "out" / "artifact").exists()


def test_cli_trains_from_yaml_and_refuses_a_bad_config_in_one_line(world, tmp_path, capsys):
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({**world["raw"], "steps": 2}))
    assert main(["train", "--config", str(config), "--out", str(tmp_path / "out"),
                 "--quiet"]) == 0
    assert (tmp_path / "out" / "artifact" / "manifest.json").is_file()
    capsys.readouterr()
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({**world["raw"], "schedule": "exponential"}))
    assert main(["train", "--config", str(bad), "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "schedule: expected one of" in err


def test_missing_image_is_reported_with_its_id(world, tmp_path, capsys):
    raw = json.loads(json.dumps(world["raw"]))
    train = Path(raw["tasks"]["vqa"]["train"])
    records = json.loads(train.read_text())
    records[0]["img_id"] = "no_such_image"
    broken = tmp_path / "vqa.json"
    broken.write_text(json.dumps(records))
    raw["tasks"] = {"vqa": {**raw["tasks"]["vqa"], "train": str(broken)}}
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(raw))
    assert main(["train", "--config", str(config), "--out", str(tmp_path / "o")]) == 2
    assert "no_such_image" in capsys.readouterr().err


# Float32 roundoff of one step's gradient, bounded a priori (not measured on one machine).
# A sum of n float32 terms is off by at most n*u times the sum of their magnitudes,
# u = 2**-24 (Higham, Accuracy and Stability of Numerical Algorithms, Sec. 3.1); splitting a
# batch over ranks only reorders such sums. Forward and backward each chain at most a few
# reductions per sublayer (attention scores, softmax, values, output projection; two
# matmuls per FFN), none longer than the widest of vocabulary, FFN width and model width.
# Taken relative to the largest entry of each gradient tensor, this is ~2e-3 for the tiny
# backbone; observed deviations are ~1e-6, and a gradient that is not averaged is off by
# the difference between the ranks' half batches, of order 1.
REDUCTIONS_PER_SUBLAYER = 4


def roundoff_bound(lm: dict) -> float:
    """Worst-case relative float32 error of a gradient of the T5 backbone described by `lm`."""
    sublayers = 2 * lm["num_layers"] + 3 * lm["num_decoder_layers"]  # decoder: + cross-attn
    widest = max(lm["vocab_size"], lm["d_ff"], lm["d_model"])
    return 2 * REDUCTIONS_PER_SUBLAYER * sublayers * widest * 2.0**-24


def relative_deviation(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> float:
    """max over tensors of max|got - want| / max|want| (inf where want is 0 and got is not)."""
    assert got.keys() == want.keys()
    worst = 0.0
    for name, expected in want.items():
        error = (got[name] - expected).abs().max().item()
        scale = expected.abs().max().item()
        worst = max(worst, error / scale if scale else (0.0 if error == 0 else math.inf))
    return worst


def test_torchrun_with_two_gloo_processes_averages_gradients_and_keeps_replicas_equal(
        world, tmp_path):
    """DDP's promise: the all-reduced gradient is the whole batch's gradient (up to float32
    roundoff, whatever the CPU or thread count), and every rank holds the same weights.

    Both runs start from one checkpoint taken after step 1, so every tensor (adapter
    up-projections start at zero, which zeroes the down-projections' first gradient) has a
    gradient at step 2, and the two sides start from bit-identical weights.
    """
    # Three rows a batch: the ranks take two and one, so a rank's mean loss is not half the
    # batch's; VQA rows carry answer-score weights, so neither are the weight sums.
    raw = {**world["raw"], "steps": 3,
           "methods": [{"method": "adapter", "config": {"width": 8}}],
           "tasks": {t: {**world["raw"]["tasks"][t], "batch_size": 3} for t in ("vqa", "caption")}}
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(raw))
    single = Trainer(parse_config(raw), tmp_path / "single", show_progress=False)
    single.run(stop_after=1)
    shutil.copytree(tmp_path / "single" / "checkpoints", tmp_path / "ddp" / "run" / "checkpoints")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                    "--nproc_per_node", "2", str(Path(__file__).with_name("ddp_probe.py")),
                    str(config), str(tmp_path / "ddp")],
                   check=True, env=env, timeout=300, capture_output=True)
    single.backward()  # step 2 on the whole batch, in this process
    whole_batch = {n: p.grad for n, p in single.model.named_parameters() if p.grad is not None}
    assert len(whole_batch) == len(single.trainable())
    tolerance = roundoff_bound(single.backbone.config.lm)
    ranks = [{kind: load_file(tmp_path / "ddp" / f"{kind}-{rank}.safetensors")
              for kind in ("local", "averaged", "weights")} for rank in (0, 1)]
    for rank in ranks:
        assert relative_deviation(rank["averaged"], whole_batch) <= tolerance
        # The same comparison refuses a rank's own half-batch gradient, not averaged.
        assert relative_deviation(rank["local"], whole_batch) > tolerance
    assert all(torch.equal(ranks[0]["weights"][n], ranks[1]["weights"][n])
               for n in ranks[0]["weights"])


@pytest.mark.parametrize(("device", "env", "expected"), [
    ("cpu", {}, "cpu"),
    ("cuda", {}, "cuda"),
    ("cuda:1", {}, "cuda:1"),
    ("cpu", {"WORLD_SIZE": "2", "LOCAL_RANK": "1"}, "cpu"),
    ("cuda", {"WORLD_SIZE": "2", "LOCAL_RANK": "1"}, "cuda:1"),   # each rank its own GPU
    ("cuda:0", {"WORLD_SIZE": "2", "LOCAL_RANK": "1"}, "cuda:0"),  # as the config says
])
def test_a_process_trains_on_the_configured_device_and_a_rank_on_its_own_gpu(
        device, env, expected, monkeypatch):
    from training import distributed
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    made_current = []
    monkeypatch.setattr(torch.cuda, "set_device", made_current.append)
    assert distributed.process_device(device) == torch.device(expected)
    assert made_current == ([torch.device(expected)] if expected == "cuda:1" and env else [])
