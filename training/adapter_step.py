"""One forward pass of a recipe's adapters over a batch whose rows may belong to any task.

Training runs through the same compute as serving: every step materialises the train
forms of the tasks in the batch into serve forms, stacks them (one slot per task) and
runs the frozen backbone with each row's slot. Gradients flow back through the stack.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from modeling.backbone import VLBackbone, VLBatch
from modeling.bank import build_bank
from modeling.kernels import RowIndex
from modeling.recipe import AdapterModel


def adapter_logits(
    backbone: VLBackbone, adapters: AdapterModel, batch: VLBatch, row_tasks: list[str]
) -> torch.Tensor:
    """Teacher-forced logits [b, y, vocab]; row i uses the adapter set of row_tasks[i]."""
    tasks = sorted(set(row_tasks))
    like = next(backbone.lm.parameters())
    bank = build_bank(
        [adapters.materialize(t) for t in tasks],
        backbone.frozen_tensors(),
        backbone.config.d_model,
        like,
    )
    slots = torch.tensor([tasks.index(t) for t in row_tasks], device=like.device)
    return backbone(batch, bank, RowIndex.of(slots))


def sequence_loss(
    logits: torch.Tensor, labels: torch.Tensor, row_weights: torch.Tensor | None = None
) -> torch.Tensor:
    """Token cross-entropy averaged per row, then (optionally weighted) over rows.

    logits [b, y, vocab], labels [b, y] (-100 = padding), row_weights [b] (VQA scores).
    """
    token_loss = F.cross_entropy(
        logits.transpose(1, 2).float(), labels, ignore_index=-100, reduction="none"
    )  # [b, y]
    valid = (labels != -100).float()
    per_row = (token_loss * valid).sum(1) / valid.sum(1).clamp(min=1)
    if row_weights is None:
        return per_row.mean()
    return (per_row * row_weights).sum() / row_weights.sum().clamp(min=1e-8)
