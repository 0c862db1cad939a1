"""`make demo`: what exists end to end, on the bundled tiny configs (minutes on 2 CPU cores).

1. The parameter report of VL-Adapter's presets on VL-BART-base (meta device, instant).
2. A tiny VL backbone, frozen; one adapter set per task trained for a few steps on a toy
   task whose answer is written in the visual features.
3. One mixed batch (two tasks' adapters and a prompt in one forward) checked against
   running each row alone.
"""

from __future__ import annotations

import time

import torch

from modeling.backbone import VLBackbone, VLBatch
from modeling.bank import stack_weights
from modeling.config import preset
from modeling.generation import greedy
from modeling.kernels import RowIndex
from modeling.methods.base import BackboneFacts
from modeling.params import report
from modeling.presets import METHOD_PRESETS
from modeling.recipe import AdapterModel, MethodEntry
from training.adapter_step import adapter_logits, sequence_loss

TASKS = ("vqa", "gqa")
ANSWER_IDS = (10, 11, 12, 13)  # the toy answer vocabulary


def toy_batch(size: int, generator: torch.Generator, prototypes: torch.Tensor) -> VLBatch:
    """Visual features near one of four prototypes; the target is that prototype's token."""
    answer = torch.randint(0, len(ANSWER_IDS), (size,), generator=generator)
    visual = prototypes[answer].unsqueeze(1) + 0.1 * torch.randn(size, 4, prototypes.shape[1],
                                                                 generator=generator)
    labels = torch.tensor([[ANSWER_IDS[a], 1] for a in answer.tolist()])
    return VLBatch(input_ids=torch.randint(20, 100, (size, 5), generator=generator),
                   text_mask=torch.ones(size, 5, dtype=torch.bool), visual=visual,
                   visual_mask=torch.ones(size, 4, dtype=torch.bool),
                   image_order=torch.zeros(size, 4, dtype=torch.long), labels=labels)


def print_parameter_table() -> None:
    print("== Parameter report: VL-BART-base, image-text tasks (VL-Adapter Table 1 column) ==")
    config = preset("vl-bart-base")
    for name, entries in METHOD_PRESETS.items():
        result = report(config, entries, ["vqa", "gqa", "nlvr2", "caption"])
        print(f"  {name:<28} trainable {result.trainable:>12,}  {result.percent:6.2f}%")


def train_toy(backbone: VLBackbone, steps: int) -> AdapterModel:
    facts = BackboneFacts.of(backbone)
    adapters = AdapterModel([MethodEntry("adapter", {"reduction_factor": 4}, "multiple"),
                             MethodEntry("trainable_tensors", {"layer_norms": True}, "single",
                                         "tensors")], facts, list(TASKS))
    print(f"== Training one adapter set per task on the tiny backbone "
          f"({adapters.trainable_count():,} trainable parameters) ==")
    optimizer = torch.optim.AdamW(adapters.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(0)
    prototypes = torch.randn(len(ANSWER_IDS), backbone.config.feat_dim, generator=generator)
    for step in range(1, steps + 1):
        batch = toy_batch(16, generator, prototypes)
        row_tasks = [TASKS[i % 2] for i in range(batch.size)]
        loss = sequence_loss(adapter_logits(backbone, adapters, batch, row_tasks), batch.labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % 25 == 0 or step == 1:
            print(f"  step {step:>4}  loss {loss.item():.3f}")
    test = toy_batch(64, generator, prototypes)
    with torch.no_grad():
        stacked = stack_weights([adapters.materialize("vqa")], backbone.frozen_tensors(),
                                backbone.config.d_model, test.visual)
        answers = greedy(backbone, test, stacked, RowIndex.of(torch.zeros(64, dtype=torch.long)),
                         max_new_tokens=2)
    correct = sum(a[:1] == [int(t)] for a, t in zip(answers, test.labels[:, 0], strict=True))
    print(f"  toy accuracy after training: {correct}/64 (chance 16/64)")
    return adapters


def check_mixed_batch(backbone: VLBackbone, adapters: AdapterModel) -> None:
    facts = BackboneFacts.of(backbone)
    prompt = AdapterModel([MethodEntry("prompt_tuning", {"length": 3, "hidden_dim": 32})],
                          facts, ["caption"])
    sets = [adapters.materialize("vqa"), adapters.materialize("gqa"),
            prompt.materialize("caption")]
    generator = torch.Generator().manual_seed(1)
    batch = toy_batch(3, generator, torch.randn(4, backbone.config.feat_dim,
                                                generator=generator))
    frozen, d = backbone.frozen_tensors(), backbone.config.d_model
    with torch.no_grad():
        mixed = backbone(batch, stack_weights(sets, frozen, d, batch.visual),
                         RowIndex.of(torch.arange(3)))
        worst = max(
            (mixed[i] - backbone(batch.select([i]), stack_weights([sets[i]], frozen, d,
                                                                  batch.visual),
                                 RowIndex.of(torch.zeros(1, dtype=torch.long)))[0]).abs().max()
            for i in range(3))
    print("== Mixed batch: adapter(vqa) | adapter(gqa) | prompt(caption) in one forward ==")
    print(f"  max |mixed - alone| over logits = {float(worst):.2e} (tolerance 1e-5)")


def main() -> None:
    start = time.time()
    torch.manual_seed(0)
    print_parameter_table()
    backbone = VLBackbone.from_config(preset("tiny"), seed=0)
    adapters = train_toy(backbone, steps=150)
    check_mixed_batch(backbone, adapters)
    print(f"demo finished in {time.time() - start:.0f}s")


if __name__ == "__main__":
    main()
