"""The stacked adapter bank: serve-form tensors of many adapter sets, stacked per slot.

`build_bank` turns a list of `AdapterSet` (slot 0, 1, ...) into `AdapterBank`;
the backbone's hooks (`modeling.hooks`) read only these stacks and a per-row slot index,
so one forward pass can mix adapters, tasks and methods (the Punica / S-LoRA idea, for
all four serve forms). Stacking is differentiable: training materialises its train forms
into serve forms every step and runs through the same compute.

A slot without a given site holds zeros (LoRA, bottleneck: no change), length 0 (prompt,
prefix: masked out) or the frozen tensor (overrides), so every row computes exactly what
it would compute alone with its own adapter.

Each slot's scale (LoRA's alpha / r, a bottleneck's scale) is multiplied into its last
weights (`lora_b`; `up_weight` and `up_bias`) when the slot is stacked or written, so no
forward pays a per-row scale; `scale` keeps the value for reference.

Every LoRA site, bottleneck position, prefix site and overridden module records `used_by`:
the slots whose set has it. The hooks compute a site only for the rows of those slots (a batch
mixing serve forms pays each form on its own rows; a site no row's slot uses is
skipped). Equal `used_by` sets of one bank are one object, so looking up a step's row
subsets (`modeling.kernels.RowIndex.subset`) never compares sets element by element.

Every weight matrix is stored in the layout the gathered kernels multiply by
(`modeling.kernels`): the fields keep their documented shape `[slots, out, in]`, but as
a transposed view of contiguous `[slots, in, out]` memory, so gathering a row's slot is
one contiguous copy and no step transposes anything.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from modeling.serve_forms import AdapterSet, Bottleneck, LowRankDelta


@dataclass
class LoraBank:
    lora_a: torch.Tensor  # [slots, max_rank, in], kernel layout (`_stack_matrices`)
    lora_b: torch.Tensor  # [slots, out, max_rank], kernel layout, times the slot's scale
    scale: torch.Tensor  # [slots] (already in lora_b: the kernels read it from there)
    dropout: float = 0.0  # the largest of the slots' (training only)
    used_by: frozenset[int] = frozenset()  # slots whose set has this site (others: zeros)


@dataclass
class BottleneckBank:
    down_weight: torch.Tensor  # [slots, max_width, d], kernel layout (`_stack_matrices`)
    down_bias: torch.Tensor  # [slots, max_width]
    up_weight: torch.Tensor  # [slots, d, max_width], kernel layout, times the slot's scale
    up_bias: torch.Tensor  # [slots, d], times the slot's scale
    scale: torch.Tensor  # [slots] (already in up_weight and up_bias)
    parallel: torch.Tensor  # [slots] bool
    activations: str | list[str]  # one name for every slot, or one per slot
    any_parallel: bool
    used_by: frozenset[int] = frozenset()  # slots whose set has this position (others: zeros)


@dataclass
class PrefixBank:
    key: torch.Tensor  # [slots, heads, max_len, head_dim]
    value: torch.Tensor  # [slots, heads, max_len, head_dim]
    length: torch.Tensor  # [slots] long
    # slots with a prefix here (others: length 0); None: those of `length` (read back once)
    used_by: frozenset[int] | None = None

    def __post_init__(self) -> None:
        if self.used_by is None:
            self.used_by = frozenset(j for j, n in enumerate(self.length.tolist()) if n > 0)


@dataclass
class AdapterBank:
    slots: int
    lora: dict[str, LoraBank] = field(default_factory=dict)
    bottleneck: dict[str, BottleneckBank] = field(default_factory=dict)
    prompt: torch.Tensor | None = None  # [slots, max_len, d]
    prompt_length: torch.Tensor | None = None  # [slots] long
    prefix: dict[str, PrefixBank] = field(default_factory=dict)
    # name -> [slots, *shape]; matrices in kernel layout (`_stack_matrices`)
    overrides: dict[str, torch.Tensor] = field(default_factory=dict)
    # module name -> slots whose set overrides a tensor of it (others hold the frozen one)
    override_used_by: dict[str, frozenset[int]] = field(default_factory=dict)

    def used_by_sets(self) -> list[frozenset[int]]:
        """The distinct `used_by` sets of the bank's sites: the row subsets a forward cuts
        (`modeling.kernels.RowIndex.grouping` orders rows so that each is a span)."""
        stacks = (*self.lora.values(), *self.bottleneck.values(), *self.prefix.values())
        return list(dict.fromkeys((*(stack.used_by for stack in stacks),
                                   *self.override_used_by.values())))


def _stack_matrices(matrices: list[torch.Tensor]) -> torch.Tensor:
    """Stack matrices [out, in] into [slots, out, in] backed by [slots, in, out] memory.

    The kernels compute x @ W.T; `W.T` of one slot is then contiguous, which makes a
    per-row gather one copy of whole slots (a strided gather is several times slower).
    Other tensors (vectors) are stacked as they are.
    """
    if matrices[0].dim() != 2:
        return torch.stack(matrices)
    return torch.stack([m.T for m in matrices]).transpose(1, 2)


def _pad_to(t: torch.Tensor, dim: int, size: int) -> torch.Tensor:
    """Zero-pad `t` along `dim` (counted from the front) to `size`."""
    missing = size - t.shape[dim]
    if missing == 0:
        return t
    pad = [0, 0] * (t.dim() - dim - 1) + [0, missing]
    return F.pad(t, pad)


def _stack_lora(sets: list[AdapterSet], site: str, shapes: tuple[int, int], like) -> LoraBank:
    out_f, in_f = shapes
    rank = max(s.lora[site].lora_a.shape[0] for s in sets if site in s.lora)
    a, b, scale, dropout = [], [], [], 0.0
    for s in sets:
        delta = s.lora.get(site)
        if delta is None:
            a.append(like.new_zeros(rank, in_f))
            b.append(like.new_zeros(out_f, rank))
            scale.append(0.0)
        else:
            a.append(_pad_to(delta.lora_a.to(like), 0, rank))
            b.append(_pad_to(delta.lora_b.to(like) * delta.scale, 1, rank))
            scale.append(delta.scale)
            dropout = max(dropout, delta.dropout)
    return LoraBank(_stack_matrices(a), _stack_matrices(b), like.new_tensor(scale), dropout)


def _stack_bottleneck(sets: list[AdapterSet], pos: str, d_model: int, like) -> BottleneckBank:
    present = [s.bottleneck[pos] for s in sets if pos in s.bottleneck]
    width = max(b.down_weight.shape[0] for b in present)
    # A slot without this position has zero weights, and every activation maps 0 to 0, so
    # it borrows a real slot's activation: the common single-activation bank stays uniform.
    filler = present[0].activation
    dw, db, uw, ub, scale, parallel, acts = [], [], [], [], [], [], []
    for s in sets:
        b = s.bottleneck.get(pos)
        if b is None:
            dw.append(like.new_zeros(width, d_model))
            db.append(like.new_zeros(width))
            uw.append(like.new_zeros(d_model, width))
            ub.append(like.new_zeros(d_model))
            scale.append(0.0)
            parallel.append(False)
            acts.append(filler)
            continue
        dw.append(_pad_to(b.down_weight.to(like), 0, width))
        db.append(_pad_to(b.down_bias.to(like), 0, width))
        uw.append(_pad_to(b.up_weight.to(like) * b.scale, 1, width))
        ub.append(b.up_bias.to(like) * b.scale)
        scale.append(b.scale)
        parallel.append(b.parallel)
        acts.append(b.activation)
    return BottleneckBank(
        _stack_matrices(dw), torch.stack(db), _stack_matrices(uw), torch.stack(ub),
        like.new_tensor(scale), torch.tensor(parallel, device=like.device),
        acts[0] if len(set(acts)) == 1 else acts, any(parallel))


def _stack_sequences(seqs: list[torch.Tensor | None], template: torch.Tensor, seq_dim: int
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad variable-length tensors along `seq_dim`; None means length 0.

    template: a tensor of the per-slot shape with length 0 along `seq_dim`.
    Returns (stacked [slots, ...], lengths [slots]).
    """
    lengths = [0 if s is None else s.shape[seq_dim] for s in seqs]
    longest = max(lengths)
    padded = [_pad_to(template if s is None else s.to(template), seq_dim, longest) for s in seqs]
    return torch.stack(padded), torch.tensor(lengths, device=template.device)


def build_bank(
    sets: list[AdapterSet],
    frozen: dict[str, torch.Tensor],
    d_model: int,
    like: torch.Tensor,
) -> AdapterBank:
    """Stack adapter sets into per-slot tensors (slot i = sets[i]).

    frozen: the backbone's tensors by name (for overrides and Linear shapes).
    like: a tensor with the target device and dtype.
    """
    bank = AdapterBank(slots=len(sets))
    for site in sorted({k for s in sets for k in s.lora}):
        shape = tuple(frozen[f"{site}.weight"].shape)
        bank.lora[site] = _stack_lora(sets, site, shape, like)
    for pos in sorted({k for s in sets for k in s.bottleneck}):
        bank.bottleneck[pos] = _stack_bottleneck(sets, pos, d_model, like)
    if any(s.prompt is not None for s in sets):
        bank.prompt, bank.prompt_length = _stack_sequences(
            [s.prompt for s in sets], like.new_zeros(0, d_model), 0)
    for site in sorted({k for s in sets for k in s.prefix}):
        example = next(s.prefix[site] for s in sets if site in s.prefix)
        heads, _, head_dim = example.key.shape
        template = like.new_zeros(heads, 0, head_dim)
        keys, length = _stack_sequences(
            [s.prefix[site].key if site in s.prefix else None for s in sets], template, 1)
        values, _ = _stack_sequences(
            [s.prefix[site].value if site in s.prefix else None for s in sets], template, 1)
        bank.prefix[site] = PrefixBank(keys, values, length, used_by=frozenset())
    for name in sorted({k for s in sets for k in s.overrides}):
        base = frozen[name].to(like)
        bank.overrides[name] = _stack_matrices(
            [s.overrides[name].to(like) if name in s.overrides else base for s in sets])
    _record_used_by(bank, sets)
    return bank


def _record_used_by(bank: AdapterBank, sets: list[AdapterSet]) -> None:
    """Each site's `used_by`: the slots (indices of `sets`) whose set has it."""
    for site, lora in bank.lora.items():
        lora.used_by = frozenset(j for j, s in enumerate(sets) if site in s.lora)
    for pos, bottleneck in bank.bottleneck.items():
        bottleneck.used_by = frozenset(j for j, s in enumerate(sets) if pos in s.bottleneck)
    for site, prefix in bank.prefix.items():
        prefix.used_by = frozenset(j for j, s in enumerate(sets) if site in s.prefix)
    overridden = [{_module_of(name) for name in s.overrides} for s in sets]
    for module in {_module_of(name) for name in bank.overrides}:
        bank.override_used_by[module] = frozenset(
            j for j, modules in enumerate(overridden) if module in modules)
    _share_used_by(bank)


def _module_of(tensor_name: str) -> str:
    return tensor_name.rsplit(".", 1)[0]


def _with_slot(used_by: frozenset[int], slot: int, used: bool) -> frozenset[int]:
    return used_by | {slot} if used else used_by - {slot}


def _share_used_by(bank: AdapterBank) -> None:
    """Make equal `used_by` sets of the bank one object (sites of one recipe share it)."""
    shared: dict[frozenset[int], frozenset[int]] = {}
    for stack in (*bank.lora.values(), *bank.bottleneck.values(), *bank.prefix.values()):
        stack.used_by = shared.setdefault(stack.used_by, stack.used_by)
    for module, used_by in bank.override_used_by.items():
        bank.override_used_by[module] = shared.setdefault(used_by, used_by)


def write_slot(bank: AdapterBank, slot: int, adapter_set: AdapterSet,
               frozen: dict[str, torch.Tensor]) -> bool:
    """Overwrite slot `slot` of `bank` with `adapter_set` in place when they fit its shapes.

    They fit when every site of `adapter_set` already has a stack, no rank, width or length
    exceeds the stack's, and a bottleneck's activation matches a single-activation stack.
    Then only this slot's rows of each stack are written (what `build_bank` would put
    there) and True is returned; otherwise nothing changes and False is returned, and the
    caller restacks. Serving uses this so that a cache miss costs one slot's bytes, not
    the whole bank's; rows reading other slots are untouched.
    """
    if not _fits(bank, adapter_set):
        return False
    with torch.no_grad():
        for site, lora in bank.lora.items():
            _write_lora(lora, slot, adapter_set.lora.get(site))
        for pos, bottleneck in bank.bottleneck.items():
            _write_bottleneck(bottleneck, slot, adapter_set.bottleneck.get(pos))
        if bank.prompt is not None:
            _write_sequence(bank.prompt, bank.prompt_length, slot, adapter_set.prompt, 0)
        for site, prefix in bank.prefix.items():
            kv = adapter_set.prefix.get(site)
            prefix.used_by = _with_slot(prefix.used_by, slot, kv is not None)
            _write_sequence(prefix.key, prefix.length, slot, None if kv is None else kv.key, 1)
            _write_sequence(prefix.value, prefix.length, slot,
                            None if kv is None else kv.value, 1)
        for name, override in bank.overrides.items():
            override[slot].copy_(adapter_set.overrides.get(name, frozen[name]))
    overridden = {_module_of(name) for name in adapter_set.overrides}
    for module, used_by in bank.override_used_by.items():
        bank.override_used_by[module] = _with_slot(used_by, slot, module in overridden)
    _share_used_by(bank)
    return True


def _fits(bank: AdapterBank, adapter_set: AdapterSet) -> bool:
    for site, delta in adapter_set.lora.items():
        if site not in bank.lora or delta.lora_a.shape[0] > bank.lora[site].lora_a.shape[1]:
            return False
    for pos, b in adapter_set.bottleneck.items():
        stack = bank.bottleneck.get(pos)
        if stack is None or b.down_weight.shape[0] > stack.down_weight.shape[1]:
            return False
        if isinstance(stack.activations, str) and b.activation != stack.activations:
            return False
    if adapter_set.prompt is not None and (
            bank.prompt is None or adapter_set.prompt.shape[0] > bank.prompt.shape[1]):
        return False
    for site, kv in adapter_set.prefix.items():
        if site not in bank.prefix or kv.key.shape[1] > bank.prefix[site].key.shape[2]:
            return False
    return set(adapter_set.overrides) <= set(bank.overrides)


def _write_lora(stack: LoraBank, slot: int, delta: LowRankDelta | None) -> None:
    stack.used_by = _with_slot(stack.used_by, slot, delta is not None)
    stack.lora_a[slot].zero_()
    stack.lora_b[slot].zero_()
    stack.scale[slot] = 0.0 if delta is None else delta.scale
    if delta is not None:
        rank = delta.lora_a.shape[0]
        stack.lora_a[slot, :rank].copy_(delta.lora_a)
        stack.lora_b[slot, :, :rank].copy_(delta.lora_b * delta.scale)


def _write_bottleneck(stack: BottleneckBank, slot: int, b: Bottleneck | None) -> None:
    stack.used_by = _with_slot(stack.used_by, slot, b is not None)
    for tensor in (stack.down_weight, stack.down_bias, stack.up_weight, stack.up_bias):
        tensor[slot].zero_()
    stack.scale[slot] = 0.0 if b is None else b.scale
    stack.parallel[slot] = False if b is None else b.parallel
    stack.any_parallel = bool(stack.parallel.any())
    if b is None:
        return  # zero weights: any activation maps 0 to 0
    width = b.down_weight.shape[0]
    stack.down_weight[slot, :width].copy_(b.down_weight)
    stack.down_bias[slot, :width].copy_(b.down_bias)
    stack.up_weight[slot, :, :width].copy_(b.up_weight * b.scale)
    stack.up_bias[slot].copy_(b.up_bias * b.scale)
    if isinstance(stack.activations, list):
        stack.activations[slot] = b.activation


def _write_sequence(stack: torch.Tensor, lengths: torch.Tensor, slot: int,
                    value: torch.Tensor | None, seq_dim: int) -> None:
    """stack [slots, ...] padded along seq_dim (counted without the slot axis)."""
    stack[slot].zero_()
    length = 0 if value is None else value.shape[seq_dim]
    lengths[slot] = length
    if value is not None:
        stack[slot].narrow(seq_dim, 0, length).copy_(value)
