"""Multi-task batches: per-task shuffled batches, tasks sampled round-robin or by size.

Stateless in the step number except for one counter per task, so a resumed run draws
exactly the batches an uninterrupted run would (the counters go into checkpoints).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from modeling.backbone import VLBatch
from modeling.config import MAX_TEXT_TOKENS
from modeling.inputs import TextBudget, make_batch
from modeling.tasks import DEFAULT_FAMILY, TASKS, ChoiceAnswer, TaskKind
from training.data.example import Example
from training.data.image_text import sample_vqa_target
from training.features import VisualFeatures


def training_target(example: Example, rng: np.random.Generator,
                    choice_answer: ChoiceAnswer = ChoiceAnswer.LABEL) -> tuple[str, float]:
    """The decoder target of one training example and its loss weight.

    VQA / GQA: an answer sampled in proportion to its score, weighted by the score
    (VL-Adapter); multiple choice: the right option's candidate label in `choice_answer`
    form (`a{label}`, or the option's text); NLVR2: `true` / `false`; captions: one
    reference at random.
    """
    spec = TASKS[example.task]
    if spec.kind is TaskKind.OPEN_QA and example.target_weights:
        return sample_vqa_target(example, rng)
    if spec.kind is TaskKind.MULTIPLE_CHOICE:
        return spec.candidate_labels(example.choices, choice_answer)[example.label], 1.0
    if not example.targets:
        raise ValueError(f"{example.task} example {example.example_id} has no target to train on")
    return example.targets[int(rng.integers(len(example.targets)))], 1.0


@dataclass
class TaskStream:
    """One task's examples served as shuffled batches, epoch after epoch."""

    task: str
    examples: list[Example]
    batch_size: int
    seed: int
    batches_drawn: int = 0

    def next_rows(self) -> list[Example]:
        per_epoch = max(1, len(self.examples) // self.batch_size)
        epoch, index = divmod(self.batches_drawn, per_epoch)
        order = np.random.default_rng([self.seed, epoch]).permutation(len(self.examples))
        rows = order[index * self.batch_size:(index + 1) * self.batch_size]
        self.batches_drawn += 1
        return [self.examples[i] for i in rows]


@dataclass
class MultiTaskSampler:
    streams: dict[str, TaskStream]
    sampling: str = "round_robin"
    seed: int = 0
    tasks: list[str] = field(init=False)

    def __post_init__(self) -> None:
        self.tasks = sorted(self.streams)
        sizes = np.array([len(self.streams[t].examples) for t in self.tasks], dtype=float)
        self.probabilities = sizes / sizes.sum()

    def task_at(self, step: int) -> str:
        if self.sampling == "round_robin":
            return self.tasks[step % len(self.tasks)]
        rng = np.random.default_rng([self.seed, step, 7])
        return self.tasks[int(rng.choice(len(self.tasks), p=self.probabilities))]

    def draw(self, step: int) -> tuple[str, list[Example]]:
        task = self.task_at(step)
        return task, self.streams[task].next_rows()

    def state(self) -> dict[str, int]:
        return {task: stream.batches_drawn for task, stream in self.streams.items()}

    def load_state(self, state: dict[str, int]) -> None:
        for task, drawn in state.items():
            self.streams[task].batches_drawn = int(drawn)


def training_batch(tokenizer, examples: list[Example], features: VisualFeatures, seed: int,
                   step: int, family: str = DEFAULT_FAMILY,
                   text_budget: TextBudget = MAX_TEXT_TOKENS,
                   max_decoder_tokens: int | None = None,
                   choice_answer: ChoiceAnswer = ChoiceAnswer.LABEL
                   ) -> tuple[VLBatch, list[float]]:
    """Tokenised batch with sampled targets, decoder prompts of a backbone of `family`,
    texts cut at its `text_budget` (`BackboneConfig.text_budget`: per row, what its visual
    tokens leave of the encoder's positions) and targets at its `max_decoder_tokens`
    (`VLBatch.answer_labels` is what the loss reads), multiple-choice targets in
    `choice_answer` form; returns (batch, per-row loss weights)."""
    rng = np.random.default_rng([seed, step, 11])
    targets, weights = zip(*(training_target(e, rng, choice_answer) for e in examples),
                           strict=True)
    batch = make_batch(tokenizer, [e.source_text for e in examples],
                       [features.tokens(e) for e in examples], list(targets),
                       text_budget=text_budget, max_decoder_tokens=max_decoder_tokens,
                       decoder_prompts=[TASKS[e.task].decoder_prompt_for(family)
                                        for e in examples])
    return batch, list(weights)
