"""Gathered compute over an adapter bank: one row of a batch, one adapter slot.

Every kernel takes a `RowIndex` (the slot each row uses) and weights stacked over slots
(`[slots, ...]`). When every row uses the same slot the kernel runs one dense matmul
instead of a gather, so a uniform batch pays nothing for the mixed-batch machinery.

A mixed batch gathers each row's weights with `index_select` over the slot axis and runs
a batched matmul. The gather reads whole contiguous slots when the bank stores each
weight in the layout the matmul consumes (`modeling.bank` stores `[slots, in, out]`
and hands out `[slots, out, in]` views of it), so it is one memory copy per site; adds
are fused into the matmul (`baddbmm`) where the equation allows it.

On CPU a mixed product avoids that copy where it pays (`_uncopied_path`): a row's
weights can outweigh its activations (a decode step has one position per row), so copying
them per row cost more than the product itself. Rows in runs sharing a slot
(`RowIndex.grouping` sorts them so) run one grouped matmul (`F.grouped_mm`: one dense
product per run); rows of one or two positions in short runs sum their products straight
from the bank (`F.embedding_bag` over the bank seen as a table of weight rows).

Rows on one slot or in long runs may skip LoRA's rank-wide products altogether:
`merged_lora` folds each run's delta into the frozen weight for the call (float32
inference, where `merge_pays`; the hooked Linear's own forward calls it).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property, lru_cache

import torch
import torch.nn.functional as F

from modeling.serve_forms import ACTIVATION_FUNCTIONS


@dataclass(frozen=True)
class RowIndex:
    """The slot of every row of one forward pass, built once (per decode step) from slot
    numbers the host already holds; the hooks read it, no layer rebuilds or reads it back.

    slots [b] long on the compute device (what the gathers read); host_slots: the same
    slot numbers as Python ints (what checks and per-slot choices read, no device sync);
    uniform: the slot shared by every row, or None.
    """

    slots: torch.Tensor
    host_slots: tuple[int, ...]
    uniform: int | None
    # set of slots -> the rows using them (`subset`), found once per index
    _subsets: dict[frozenset[int], RowSubset | None] = field(
        default_factory=dict, init=False, repr=False, compare=False)
    # the tensors a product of one shape reads (`run_offsets`, `bags`), built once per index
    _per_shape: dict[tuple[int, ...], tuple[torch.Tensor, ...]] = field(
        default_factory=dict, init=False, repr=False, compare=False)

    @classmethod
    def of(cls, slots: Sequence[int] | torch.Tensor,
           device: torch.device | str | None = None) -> RowIndex:
        """From each row's slot: Python ints (serving and decoding: one host -> device copy,
        nothing read back) or a tensor (read back once; offline callers and tests).

        device: where `slots` lives (default: the tensor's device, or the CPU for ints).
        """
        if isinstance(slots, torch.Tensor):
            host = tuple(slots.tolist())
            tensor = slots.to(device=device or slots.device, dtype=torch.long)
        else:
            host = tuple(slots)
            tensor = torch.tensor(host, dtype=torch.long, device=device)
        uniform = host[0] if host and host.count(host[0]) == len(host) else None
        return cls(slots=tensor, host_slots=host, uniform=uniform)

    def __len__(self) -> int:
        return len(self.host_slots)

    @cached_property
    def runs(self) -> tuple[torch.Tensor, tuple[int, ...]]:
        """The runs of consecutive rows sharing a slot: each run's slot [runs] long on the
        device and each run's end row (what a grouped matmul reads), found once per index."""
        slots: list[int] = []
        ends: list[int] = []
        for row, slot in enumerate(self.host_slots):
            if slots and slots[-1] == slot:
                ends[-1] = row + 1
            else:
                slots.append(slot)
                ends.append(row + 1)
        return torch.tensor(slots, dtype=torch.long, device=self.slots.device), tuple(ends)

    def check(self, rows: int, slots: int) -> None:
        """Refuse an index that does not fit a batch of `rows` rows and a bank of `slots`.

        Reads only the host copy, so it costs no device sync; run it once per forward,
        before any compute: a wrong index would otherwise gather silently (a short uniform
        index broadcasts over the batch; a negative slot wraps around the bank).
        """
        if len(self.host_slots) != rows:
            raise ValueError(f"adapter index has {len(self.host_slots)} row(s) but the batch "
                             f"has {rows}; expected one slot per row")
        if self.host_slots and not 0 <= min(self.host_slots) <= max(self.host_slots) < slots:
            bad = sorted({s for s in self.host_slots if not 0 <= s < slots})
            raise ValueError(f"adapter index names slot(s) {bad[:5]} but the bank holds "
                             f"{slots} slot(s); expected slots in [0, {slots})")

    def select(self, rows: Sequence[int]) -> RowIndex:
        """The index of rows `rows` of this batch, in that order (rows leaving a decode)."""
        return RowIndex.of([self.host_slots[r] for r in rows], device=self.slots.device)

    def repeat_interleave(self, repeats: int) -> RowIndex:
        """Each row repeated `repeats` times in place (beam search: one row per beam)."""
        return RowIndex.of([s for s in self.host_slots for _ in range(repeats)],
                           device=self.slots.device)

    def subset(self, used_by: frozenset[int]) -> RowSubset | None:
        """The rows whose slot is in `used_by` (a site's slots, `modeling.bank`), or None
        when every row's is. Found from the host copy once per index and set: a bank's
        sites share few distinct sets, so a forward computes a handful, not one per layer.
        """
        cached = self._subsets.get(used_by, self)  # self: not looked up yet
        if cached is not self:
            return cached
        positions = [row for row, slot in enumerate(self.host_slots) if slot in used_by]
        subset = None
        if len(positions) < len(self.host_slots):
            device = self.slots.device
            span = (positions[0], positions[-1] + 1) \
                if positions and _consecutive(positions) else None
            subset = RowSubset(torch.tensor(positions, dtype=torch.long, device=device),
                               RowIndex.of([self.host_slots[r] for r in positions], device),
                               tuple(positions), span)
        self._subsets[used_by] = subset
        return subset

    def run_offsets(self, positions: int) -> torch.Tensor:
        """Where each run ends in x [b * positions, in] (int32, what `F.grouped_mm` reads
        as `offs`), for rows of `positions` positions. Built once per index and length."""
        key = (positions,)
        if key not in self._per_shape:
            self._per_shape[key] = (torch.tensor([end * positions for end in self.runs[1]],
                                                 dtype=torch.int32),)
        return self._per_shape[key][0]

    def bags(self, width: int, positions: int) -> tuple[torch.Tensor, torch.Tensor]:
        """For products read straight from a bank [slots, width, out] seen as a table of
        weight rows [slots * width, out]: the table rows each (row, position) sums, in x's
        order [b * positions * width], and where each of those sums starts [b * positions].
        Built once per index, width and positions (a forward's sites share a few)."""
        key = (width, positions)
        if key not in self._per_shape:
            device = self.slots.device
            first = (self.slots * width).view(-1, 1, 1)  # each row's first table row
            ids = (first + torch.arange(width, device=device)).expand(-1, positions, -1)
            self._per_shape[key] = (ids.reshape(-1), torch.arange(
                0, len(self) * positions * width, width, device=device))
        ids, offsets = self._per_shape[key]
        return ids, offsets

    def grouping(self, used_by_sets: Sequence[frozenset[int]], runs: bool = True
                 ) -> tuple[int, ...] | None:
        """An order of the rows in which the rows of each set in `used_by_sets` (a bank's
        sites' slots) are consecutive and each slot's rows one run, or None when they
        already are (or the index is uniform). Rows are ordered by which sets hold their
        slot, then by slot, keeping their order otherwise: every set's rows are consecutive
        when the sets are disjoint (each slot one serve form, the common case) and many are
        otherwise.

        In such an order a site's row subset is a span of the batch (`RowSubset.span`):
        the hooks compute it on a view instead of gathering its rows and scattering them
        back; and its products run one grouped matmul over the runs (`_times`).
        runs=False: None as long as every set's rows are consecutive, for a caller whose
        reordering costs more than runs alone save.
        """
        if self.uniform is not None:
            return None
        slots = self.host_slots
        if not runs and all(_is_span(self.subset(used_by)) for used_by in used_by_sets):
            return None  # the subsets are the hooks' own (`subset` caches them)
        # per distinct slot: outside each set? (False sorts first: a set's members lead)
        outside = {slot: tuple(slot not in used_by for used_by in used_by_sets)
                   for slot in set(slots)}
        order = tuple(sorted(range(len(slots)), key=lambda row: (outside[slots[row]],
                                                                 slots[row])))
        return None if order == all_rows(len(order)) else order


@lru_cache(maxsize=64)
def all_rows(batch: int) -> tuple[int, ...]:
    """(0, 1, ..., batch - 1): every row of a batch, in order."""
    return tuple(range(batch))


def _is_span(subset: RowSubset | None) -> bool:
    """Whether a `subset`'s rows are consecutive: every row (None), none, or one span."""
    return subset is None or not subset.rows or subset.span is not None


def _consecutive(positions: Sequence[int]) -> bool:
    """Whether ascending row positions form one unbroken run (an empty list does)."""
    return not positions or positions[-1] - positions[0] + 1 == len(positions)


@dataclass(frozen=True)
class RowSubset:
    """Some rows of a batch: positions [k] long on the device (their rows in the batch),
    their own index (row i of the subset is row positions[i] of the batch), rows (the
    same positions as Python ints) and span: (start, stop) when the rows are consecutive
    (`RowIndex.grouping`), else None."""

    positions: torch.Tensor
    index: RowIndex
    rows: tuple[int, ...]
    span: tuple[int, int] | None

    def of(self, t: torch.Tensor) -> torch.Tensor:
        """The subset's rows of t [batch, ...]: a view for a span, else a gathered copy."""
        if self.span is not None:
            return t[self.span[0]:self.span[1]]
        return t.index_select(0, self.positions)


def gathered_rows(table: torch.Tensor, index: RowIndex) -> torch.Tensor:
    """Semantics: y[i] = table[index[i]]  (table [slots, ...] -> [b, ...]).

    A uniform index returns a broadcast view of one slot (no copy).
    """
    if index.uniform is not None:
        return table[index.uniform].expand(len(index), *table.shape[1:])
    return table.index_select(0, index.slots)


def row_vectors(table: torch.Tensor, index: RowIndex) -> torch.Tensor:
    """table [slots, d] -> each row's vector [b, 1, d], or the one slot's [d] for a uniform
    index (no copy); both broadcast against activations [b, s, d]."""
    if index.uniform is not None:
        return table[index.uniform]
    return table.index_select(0, index.slots).unsqueeze(1)


def _row_scale(scale: torch.Tensor, index: RowIndex) -> torch.Tensor:
    """scale [slots] -> per row [b, 1, 1] (a 0-dim tensor for a uniform index)."""
    if index.uniform is not None:
        return scale[index.uniform]
    return scale.index_select(0, index.slots).view(-1, 1, 1)


# How a mixed product reads each row's weights without copying them per row (CPU, no
# autograd), measured in benchmarks/README.md ("Rows in runs by slot"):
# - RUNS: one grouped matmul over runs of rows sharing a slot, once the runs average 2
#   rows or more (one-row runs are a loop of matmuls) and each run saves the copy of at
#   least RUN_WEIGHTS weight elements (rows x in x out); below that its call per run costs
#   more than the copies it saves.
# - BAGS: rows of at most BAG_POSITIONS positions (decode steps) sum their products
#   straight from the bank (`embedding_bag` over the bank seen as a table of weight rows:
#   each weight read once, no copy), unless their runs average BAG_RUN_ROWS rows or more,
#   where one matmul per run is cheaper still.
RUNS, BAGS = "runs", "bags"
RUN_WEIGHTS = 8192
BAG_POSITIONS = 2
BAG_RUN_ROWS = 32
_GROUPED_DTYPES = (torch.float32, torch.bfloat16, torch.float16)  # what F.grouped_mm takes


def _uncopied_path(x: torch.Tensor, weight_t: torch.Tensor, index: RowIndex,
                   into_base: bool) -> str | None:
    """How `_times` multiplies x [b, s, in] by each row's weight_t [slots, in, out] for a
    mixed index: RUNS, BAGS or None (a batched matmul over per-row copies of the weights)."""
    positions, width, out = x.shape[1], x.shape[2], weight_t.shape[-1]
    if (x.device.type != "cpu" or torch.is_grad_enabled() or x.dtype != weight_t.dtype
            # a sum into base is then a pass of its own over [b, s, out], where the batched
            # matmul fuses it: dearer than the weights' copy [b, in, out] when s > in
            or (into_base and positions > width)):
        return None  # on CUDA F.grouped_mm's float32 path syncs per run; no backward
    runs, rows = len(index.runs[1]), len(index)
    bags = positions <= BAG_POSITIONS and weight_t.is_contiguous()
    if bags and runs * BAG_RUN_ROWS > rows:
        return BAGS
    if 2 * runs <= rows and runs * RUN_WEIGHTS <= rows * width * out \
            and _grouped_mm_takes(x, width, out):
        return RUNS
    return BAGS if bags else None


def _grouped_mm_takes(x: torch.Tensor, width: int, out: int) -> bool:
    """Whether `F.grouped_mm` multiplies x [..., width] by weights [runs, width, out]: its
    dtypes, and rows of a multiple of 16 bytes."""
    return x.dtype in _GROUPED_DTYPES and all(n * x.element_size() % 16 == 0
                                              for n in (width, out))


def _times(x: torch.Tensor, weight_t: torch.Tensor, index: RowIndex,
           base: torch.Tensor | None = None, into_base: bool = False) -> torch.Tensor:
    """y[i] = base[i] + x[i] @ weight_t[index[i]]; x [b, s, in], weight_t [slots, in, out],
    base broadcastable to [b, s, out] or None (0). into_base: base is the caller's own
    [b, s, out] tensor, which y may be written into (one large allocation fewer; the
    in-place kernels compute the same bits)."""
    if into_base and (base is None or base.shape != (*x.shape[:-1], weight_t.shape[-1])
                      or not base.is_contiguous()):
        into_base = False
    if index.uniform is not None:
        weight = weight_t[index.uniform]  # [in, out]
        if base is None:
            return x @ weight
        out_shape = (*x.shape[:-1], weight.shape[-1])
        if into_base:
            base.view(-1, out_shape[-1]).addmm_(x.reshape(-1, x.shape[-1]), weight)
            return base
        if base.dim() == 1 or base.shape == out_shape:  # fuse the add into the matmul
            base = base if base.dim() == 1 else base.reshape(-1, out_shape[-1])
            return torch.addmm(base, x.reshape(-1, x.shape[-1]), weight).view(out_shape)
        return x @ weight + base
    path = _uncopied_path(x, weight_t, index, into_base)
    if path is not None:
        out = weight_t.shape[-1]
        if path == RUNS:
            y = F.grouped_mm(x.reshape(-1, x.shape[-1]),
                             weight_t.index_select(0, index.runs[0]),
                             offs=index.run_offsets(x.shape[1]))
        else:
            ids, offsets = index.bags(x.shape[-1], x.shape[1])
            y = F.embedding_bag(ids, weight_t.view(-1, out), offsets, mode="sum",
                                per_sample_weights=x.reshape(-1))
        y = y.view(*x.shape[:-1], out)
        if base is None:
            return y
        return base.add_(y) if into_base else y.add_(base)
    rows = weight_t.index_select(0, index.slots)  # [b, in, out]
    if base is None:
        return torch.bmm(x, rows)
    return base.baddbmm_(x, rows) if into_base else torch.baddbmm(base, x, rows)


def gathered_matmul(x: torch.Tensor, weight: torch.Tensor, index: RowIndex,
                    base: torch.Tensor | None = None) -> torch.Tensor:
    """Semantics: y[i] = base[i] + x[i] @ weight[index[i]].T

    x [b, s, in], weight [slots, out, in], index [b], base broadcastable to [b, s, out]
    or None (0) -> [b, s, out].
    """
    return _times(x, weight.transpose(1, 2), index, base)


def gathered_lora(
    x: torch.Tensor,
    lora_a: torch.Tensor,
    lora_b: torch.Tensor,
    scale: torch.Tensor | None,
    index: RowIndex,
    base: torch.Tensor | None = None,
    into_base: bool = False,
) -> torch.Tensor:
    """Semantics: y[i] = base[i] + scale[j] * (x[i] @ A[j].T) @ B[j].T,  j = index[i]

    x [b, s, in], lora_a [slots, rank, in], lora_b [slots, out, rank], scale [slots] or
    None (1: the bank has multiplied it into lora_b), base [b, s, out] (the frozen
    layer's output) or None (0) -> [b, s, out]. Slots of smaller rank are zero-padded
    (exact). The scale multiplies the rank-wide intermediate; the add is fused into the
    second matmul. into_base: base is the caller's to overwrite (the result is written
    into it: no copy of the layer's output).
    """
    shrunk = _times(x, lora_a.transpose(1, 2), index)  # [b, s, rank]
    if scale is not None:
        shrunk = shrunk * _row_scale(scale, index).to(shrunk.dtype)
    return _times(shrunk, lora_b.transpose(1, 2), index, base, into_base)


# Rows on one slot, or in long runs sharing a slot (`RowIndex.grouping` orders them so), may
# fold each slot's LoRA delta into the frozen weight for the call (`merged_lora`: W + B A,
# one [in, out] product per run's slot) and multiply once per run: no rank-wide products,
# whose narrow matmuls run at a fraction of a dense one's rate. Merging costs in x out x
# rank per run and saves rank x (in + out) per token; measured on one CPU thread
# (benchmarks/README.md, "13. LoRA merged for the call") it wins once the tokens times
# (in + out) reach MERGE_RATIO x runs x in x out: ~130 tokens per run at d 64, ~1 500 at
# d 768. Short runs (8 rows of 28 positions at d 128) measured no faster merged.
MERGE_RATIO = 4


def merge_pays(x: torch.Tensor, lora_a: torch.Tensor, lora_b: torch.Tensor,
               index: RowIndex) -> bool:
    """Whether `merged_lora` computes x [b, ..., in] times the frozen weight plus each row's
    LoRA delta (lora_a [slots, rank, in], lora_b [slots, out, rank]) cheaper than the
    frozen product plus `gathered_lora`: enough tokens per run, float32 (a bf16 or fp16
    weight would round most of a small delta away) and no autograd (training keeps the two
    products PEFT's gradients are taken through). A mixed index only on CPU (on CUDA
    `F.grouped_mm`'s float32 path syncs per run), in runs of two rows or more on average,
    of widths `F.grouped_mm` takes. The bound keeps the merged weights [runs, in, out]
    under half the size of the product's input or output.
    """
    if torch.is_grad_enabled() or x.dtype != torch.float32:
        return False
    width, out = lora_a.shape[-1], lora_b.shape[1]
    runs = 1
    if index.uniform is None:
        runs = len(index.runs[1])
        if x.device.type != "cpu" or 2 * runs > len(index) \
                or not _grouped_mm_takes(x, width, out):
            return False
    return x.numel() // width * (width + out) >= MERGE_RATIO * runs * width * out


def merged_lora(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                lora_a: torch.Tensor, lora_b: torch.Tensor, index: RowIndex) -> torch.Tensor:
    """Semantics: y[i] = x[i] @ (W + B[j] @ A[j]).T + bias,  j = index[i]

    The frozen Linear and each row's LoRA delta in one product: the slot of each run of
    rows (`RowIndex.runs`; a uniform index is one run) merged into the weight for this
    call, then one matmul per run. x [b, ..., in], weight [out, in] (the frozen Linear's),
    bias [out] or None, lora_a [slots, rank, in], lora_b [slots, out, rank] (scale
    multiplied in) -> [b, ..., out]. Equal to the frozen output plus `gathered_lora` up
    to float rounding (the sums run in another order).
    """
    flat = x.reshape(-1, x.shape[-1])
    if index.uniform is not None:
        slot = index.uniform
        merged = torch.addmm(weight.t(), lora_a[slot].t(), lora_b[slot].t())  # [in, out]
        y = flat @ merged if bias is None else torch.addmm(bias, flat, merged)
    else:
        slots = index.runs[0]
        merged = torch.baddbmm(weight.t(), lora_a.index_select(0, slots).transpose(1, 2),
                               lora_b.index_select(0, slots).transpose(1, 2))  # [runs, in, out]
        positions = flat.shape[0] // len(index)
        y = F.grouped_mm(flat, merged, offs=index.run_offsets(positions))
        if bias is not None:
            y.add_(bias)
    return y.view(*x.shape[:-1], weight.shape[0])


def _activate(hidden: torch.Tensor, activations: str | list[str], index: RowIndex
              ) -> torch.Tensor:
    """One activation for every slot, or each row its slot's (hidden [b, s, width])."""
    if isinstance(activations, str):
        return ACTIVATION_FUNCTIONS[activations](hidden)
    row_acts = [activations[s] for s in index.host_slots]
    names = sorted(set(row_acts))
    out = ACTIVATION_FUNCTIONS[names[0]](hidden)
    for name in names[1:]:
        rows = torch.tensor([a == name for a in row_acts], device=hidden.device)
        out = torch.where(rows.view(-1, 1, 1), ACTIVATION_FUNCTIONS[name](hidden), out)
    return out


def gathered_bottleneck(
    z: torch.Tensor,
    down_weight: torch.Tensor,
    down_bias: torch.Tensor,
    up_weight: torch.Tensor,
    up_bias: torch.Tensor,
    scale: torch.Tensor | None,
    activations: str | list[str],
    index: RowIndex,
    base: torch.Tensor | None = None,
) -> torch.Tensor:
    """Semantics: y[i] = base[i] + scale[j] * (act_j(z[i] @ Wd[j].T + bd[j]) @ Wu[j].T + bu[j]),
    j = index[i]

    z [b, s, d], down_weight [slots, width, d], down_bias [slots, width],
    up_weight [slots, d, width], up_bias [slots, d], scale [slots] or None (1: the bank
    has multiplied it into up_weight and up_bias), activations: the one name every slot
    uses, or one name per slot; base [b, s, d] (the sublayer's output) or None (0)
    -> [b, s, d]. The scale multiplies the width-wide hidden and the up bias; the
    biases ride in the matmuls.
    """
    down_b = row_vectors(down_bias, index)  # [b, 1, width] or [width]
    hidden = _activate(_times(z, down_weight.transpose(1, 2), index, down_b), activations,
                       index)
    up_b = row_vectors(up_bias, index)  # [b, 1, d] or [d]
    if scale is not None:
        row_scale = _row_scale(scale, index).to(z.dtype)
        hidden, up_b = hidden * row_scale, up_b * row_scale
    delta = _times(hidden, up_weight.transpose(1, 2), index, up_b)  # a fresh tensor
    if base is None:
        return delta
    # delta + base is base + delta bit for bit; added into delta, no third tensor is made.
    fits = delta.shape == base.shape and delta.dtype == base.dtype
    return delta.add_(base) if fits else base + delta
