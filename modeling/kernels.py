"""Gathered compute over stacked adapter weights: one row of a batch, one adapter slot.

Every kernel takes `index [batch]` (the slot each row uses) and weights stacked over slots
(`[slots, ...]`). When every row uses the same slot the kernel runs one dense matmul
instead of a gather, so a uniform batch pays nothing for the mixed-batch machinery.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from modeling.serve_forms import ACTIVATION_FUNCTIONS


@dataclass(frozen=True)
class RowIndex:
    """The slot of every row, computed once per forward pass (one host sync, not one per layer).

    slots [b] long on the compute device; rows: the same as a list; uniform: the slot
    shared by every row, or None.
    """

    slots: torch.Tensor
    rows: tuple[int, ...]
    uniform: int | None

    @classmethod
    def of(cls, slots: torch.Tensor) -> RowIndex:
        rows = tuple(int(s) for s in slots.tolist())
        uniform = rows[0] if rows and all(r == rows[0] for r in rows) else None
        return cls(slots=slots, rows=rows, uniform=uniform)

    def check(self, rows: int | None, slots: int) -> None:
        """Refuse an index that does not fit a batch of `rows` rows and a bank of `slots`.

        Reads only the host copy (`rows`), so it costs no device sync; run it once per
        forward, before any compute: a wrong index would otherwise gather silently (a short
        uniform index broadcasts over the batch; a negative slot wraps around the bank).
        rows None: the caller does not know the batch size, only the slots are checked.
        """
        if rows is not None and len(self.rows) != rows:
            raise ValueError(f"adapter index has {len(self.rows)} row(s) but the batch has "
                             f"{rows}; expected one slot per row")
        bad = sorted({r for r in self.rows if not 0 <= r < slots})
        if bad:
            raise ValueError(f"adapter index names slot(s) {bad[:5]} but the bank holds "
                             f"{slots} slot(s); expected slots in [0, {slots})")

    def repeat_interleave(self, repeats: int) -> RowIndex:
        """Each row repeated `repeats` times in place (beam search: one row per beam)."""
        return RowIndex.of(self.slots.repeat_interleave(repeats))


def gathered_matmul(x: torch.Tensor, weight: torch.Tensor, index: RowIndex) -> torch.Tensor:
    """Semantics: y[i] = x[i] @ weight[index[i]].T

    x [b, s, in], weight [slots, out, in], index [b] -> [b, s, out].
    """
    if index.uniform is not None:
        return x @ weight[index.uniform].T
    return torch.bmm(x, weight[index.slots].transpose(1, 2))


def gathered_lora(
    x: torch.Tensor,
    lora_a: torch.Tensor,
    lora_b: torch.Tensor,
    scale: torch.Tensor,
    index: RowIndex,
) -> torch.Tensor:
    """Semantics: y[i] = scale[index[i]] * (x[i] @ A[index[i]].T) @ B[index[i]].T

    x [b, s, in], lora_a [slots, rank, in], lora_b [slots, out, rank], scale [slots],
    index [b] -> delta [b, s, out]. Slots of smaller rank are zero-padded (exact).
    """
    shrunk = gathered_matmul(x, lora_a, index)  # [b, s, rank]
    expanded = gathered_matmul(shrunk, lora_b, index)  # [b, s, out]
    return expanded * scale[index.slots].view(-1, 1, 1).to(expanded.dtype)


def gathered_bottleneck(
    z: torch.Tensor,
    down_weight: torch.Tensor,
    down_bias: torch.Tensor,
    up_weight: torch.Tensor,
    up_bias: torch.Tensor,
    scale: torch.Tensor,
    activations: str | list[str],
    index: RowIndex,
) -> torch.Tensor:
    """Semantics: y[i] = scale[j] * (act_j(z[i] @ Wd[j].T + bd[j]) @ Wu[j].T + bu[j]), j = index[i]

    z [b, s, d], down_weight [slots, width, d], down_bias [slots, width],
    up_weight [slots, d, width], up_bias [slots, d], scale [slots],
    activations: the one name every slot uses, or one name per slot -> delta [b, s, d].
    """
    hidden = gathered_matmul(z, down_weight, index) + down_bias[index.slots].unsqueeze(1)
    if isinstance(activations, str):
        hidden = ACTIVATION_FUNCTIONS[activations](hidden)
    else:
        row_acts = [activations[i] for i in index.rows]
        per_act = {name: ACTIVATION_FUNCTIONS[name](hidden) for name in set(row_acts)}
        hidden = torch.stack([per_act[name][i] for i, name in enumerate(row_acts)])
    out = gathered_matmul(hidden, up_weight, index) + up_bias[index.slots].unsqueeze(1)
    return out * scale[index.slots].view(-1, 1, 1).to(out.dtype)


def gathered_rows(table: torch.Tensor, index: RowIndex) -> torch.Tensor:
    """Semantics: y[i] = table[index[i]]  (table [slots, ...] -> [b, ...])."""
    if index.uniform is not None:
        return table[index.uniform].expand(len(index.rows), *table.shape[1:])
    return table[index.slots]
