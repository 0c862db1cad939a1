"""Predict a split with the adapters (or a fully fine-tuned model) and score it.

Open questions and captions are decoded greedily; NLVR2 and multiple choice score every
candidate label ("true"/"false", "a0".."a4") in one batched call, as the server does.
"""

from __future__ import annotations

from functools import partial

import torch

from modeling.backbone import VLBackbone
from modeling.bank import build_bank
from modeling.generation import greedy, score_candidates
from modeling.inputs import candidate_ids, make_batch
from modeling.kernels import RowIndex
from modeling.recipe import AdapterModel
from modeling.tasks import TASKS, ChoiceAnswer
from training.data.example import Example
from training.features import VisualFeatures
from training.metrics import evaluate

EVAL_BATCH = 64


@torch.no_grad()
def predict(backbone: VLBackbone, adapters: AdapterModel | None, task: str,
            examples: list[Example], features: VisualFeatures, max_new_tokens: int = 20,
            choice_answer: ChoiceAnswer = ChoiceAnswer.LABEL) -> dict[str, str]:
    """example id -> predicted text (the chosen label for scored tasks; multiple choice
    scored in `choice_answer` form)."""
    tokenizer = backbone.tokenizer
    bank, prompt_vectors = None, 0
    if adapters is not None:
        adapter_set = adapters.materialize(task)
        bank = build_bank([adapter_set], backbone.frozen_tensors(),
                                backbone.config.d_model, next(backbone.lm.parameters()))
        prompt_vectors = adapter_set.prompt_len()
    # Each text gets what its visual tokens and the prompt vectors leave of the positions.
    text_budget = partial(backbone.config.text_budget, prompt_vectors=prompt_vectors)
    predictions = {}
    scored = TASKS[task].is_scored
    device = next(backbone.parameters()).device
    for start in range(0, len(examples), EVAL_BATCH):
        chunk = examples[start:start + EVAL_BATCH]
        batch = make_batch(tokenizer, [e.source_text for e in chunk],
                           [features.tokens(e) for e in chunk],
                           text_budget=text_budget, decoder_prompts=[
                               TASKS[task].decoder_prompt_for(backbone.config.family)] * len(chunk)
                           ).to(device)
        index = None if bank is None else RowIndex.of([0] * len(chunk), device=device)
        if scored:
            labels = [TASKS[task].candidate_labels(e.choices, choice_answer) for e in chunk]
            scores = score_candidates(backbone, batch,
                                      candidate_ids(tokenizer, labels).to(device),
                                      bank, index,
                                      [ChoiceAnswer(choice_answer).per_token] * len(chunk))
            for e, row_labels, row in zip(chunk, labels, scores, strict=True):
                predictions[e.example_id] = row_labels[int(row[:len(row_labels)].argmax())]
        else:
            ids = greedy(backbone, batch, bank, index, max_new_tokens)
            for e, row in zip(chunk, ids, strict=True):
                predictions[e.example_id] = tokenizer.decode(row, skip_special_tokens=True)
    return predictions


def evaluate_task(backbone: VLBackbone, adapters: AdapterModel | None, task: str,
                  examples: list[Example], features: VisualFeatures,
                  max_new_tokens: int = 20, use_java: bool | None = None,
                  choice_answer: ChoiceAnswer = ChoiceAnswer.LABEL) -> dict[str, float]:
    """The task's metrics (percent) on `examples` (multiple choice scored in
    `choice_answer` form)."""
    predictions = predict(backbone, adapters, task, examples, features, max_new_tokens,
                          choice_answer)
    return evaluate(task, predictions, examples, use_java=use_java)
