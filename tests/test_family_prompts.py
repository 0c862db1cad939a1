"""Task prompts per backbone family: a Florence-2 backbone trains and serves captioning on
Florence-2's own caption prompt and VQA on a tagged question, and training's batches and
the server's requests get their text from the same function (`TaskSpec.format_source`):
an adapter is never served with another prompt than it was trained with."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from adapters_registry import import_peft
from benchmarks.florence2_sizes import sized_config, write_random
from modeling.families import load_backbone
from modeling.families.info import describe as backbone_info
from modeling.tasks import TASKS, TaskSpec
from serving.config import ServeConfig
from serving.protos import inference_pb2
from serving.stack import build_stack
from training.batches import training_batch
from training.config import load_task_split, parse_config
from training.synthetic import generate
from training.synthetic.generate import SplitSizes
from training.synthetic_run import synthetic_tasks
from training.text import corpus_tokenizer
from training.trainer import Trainer

FLORENCE2_CAPTION = "What does the image describe?"  # Florence2Processor's "<CAPTION>"


class _Context:
    """What `InferenceServicer.prepare` reads of a gRPC context: no deadline."""

    def time_remaining(self) -> None:
        return None

    def add_callback(self, callback) -> None:
        pass


@pytest.fixture(scope="module")
def florence_run(tmp_path_factory):
    """(trainer, serving stack) on one tiny Florence-2 folder over a synthetic world;
    every text `TaskSpec.format_source` returned meanwhile is in the recorded list."""
    root = tmp_path_factory.mktemp("florence2-prompts")
    generate(root / "data", seed=0, sizes=SplitSizes(4, 2, 2))
    tasks = synthetic_tasks(root / "data", ["vqa", "caption"], batch_size=2)
    raw = {"backbone": str(root / "florence2"), "tasks": tasks, "steps": 1,
           "methods": [{"method": "lora", "config": {"rank": 2}}], "java_metrics": False}
    examples = [e for t, d in parse_config({**raw, "backbone": "tiny"}).tasks.items()
                for e in load_task_split(t, d, "train")]
    config = sized_config("tiny")
    config.text_config.vocab_size = 512
    tokenizer = corpus_tokenizer(examples, "bart", 512)
    write_random(root / "florence2", config, 32, tokenizer)
    backbone = load_backbone(root / "florence2")
    recorded: list[str] = []
    original = TaskSpec.format_source

    def spy(spec: TaskSpec, body: str, *args) -> str:
        recorded.append(original(spec, body, *args))
        return recorded[-1]

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(TaskSpec, "format_source", spy)
        trainer = Trainer(parse_config(raw), root / "run", backbone=backbone,
                          show_progress=False)
        stack = build_stack(ServeConfig(registry=str(root / "store")), backbone)
        yield trainer, stack, recorded


def _served_source(stack, task: str, text: str) -> str:
    message = inference_pb2.PredictRequest(task=task, text=text)
    message.adapter.name = "any"
    message.images.add().features.CopyFrom(inference_pb2.Features(
        data=torch.zeros(2, stack.backbone.config.feat_dim).numpy().tobytes(), tokens=2,
        feat_dim=stack.backbone.config.feat_dim))
    return stack.inference.prepare(message, _Context(), stream=False).source_text


@pytest.mark.parametrize("task", ["caption", "vqa"])
def test_florence2_training_batches_and_served_requests_share_one_prompted_text(
        florence_run, task):
    trainer, stack, recorded = florence_run
    state = trainer.tasks[task]
    example = state.train[0]
    batch, _ = training_batch(trainer.backbone.tokenizer, [example], state.features,
                              seed=0, step=0)
    served = _served_source(stack, task, example.text)
    assert example.source_text == served
    assert example.source_text in recorded[:-1] and recorded[-1] == served  # one function
    served_ids = trainer.backbone.tokenizer([served], return_tensors="pt")["input_ids"]
    assert torch.equal(batch.input_ids, served_ids)  # what the model reads in both
    expected = FLORENCE2_CAPTION if task == "caption" else f"<VQA>{example.text}"
    assert served == expected
    assert not served.startswith(TASKS[task].prompt)  # not VL-Adapter's prompt


def test_florence2_artifact_records_the_prompts_it_was_trained_with(florence_run, tmp_path):
    trainer, _, _ = florence_run
    trainer.out = tmp_path
    trainer.write_outputs({})
    manifest = json.loads((tmp_path / "artifact" / "manifest.json").read_text())
    assert manifest["tasks"] == {"caption": {"prompt": FLORENCE2_CAPTION},
                                 "vqa": {"prompt": "<VQA>"}}


def test_peft_import_for_a_florence2_backbone_records_the_prompts_training_does(
        florence_run, tmp_path):
    """`import-peft` given the family and fingerprint `backbone info` prints for a Florence-2
    folder writes the prompts a run trained on that folder records."""
    trainer, _, _ = florence_run
    info = backbone_info(trainer.config.backbone)
    peft = tmp_path / "peft"
    peft.mkdir()
    (peft / "adapter_config.json").write_text(json.dumps({
        "peft_type": "PROMPT_TUNING", "num_virtual_tokens": 2, "token_dim": 32,
        "num_transformer_submodules": 1}))
    save_file({"prompt_embeddings": torch.zeros(2, 32)}, peft / "adapter_model.safetensors")
    manifest = import_peft(peft, tmp_path / "imported", info["fingerprint"],
                           tasks=("caption", "vqa"), family=info["family"])
    assert manifest["tasks"] == {"caption": {"prompt": FLORENCE2_CAPTION},
                                 "vqa": {"prompt": "<VQA>"}}
