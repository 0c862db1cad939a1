"""Every serve form, through the real hooked backbone, against the papers' equations per row.

One teacher-forced forward of a batch where each row uses a different adapter set (LoRA
on every Linear, a serial and a parallel bottleneck at every position with biases, key /
value prefixes, encoder prompts, LayerNorm / bias / visual-projection / LM-head overrides,
no adapter) records every layer's and every Linear / LayerNorm's input and output. Each
row's outputs are then recomputed from its recorded inputs by `paper_reference`, a plain
per-row loop that shares nothing with `modeling.kernels` or `modeling.hooks`. Unlike the
mixed-vs-alone oracle, a wrong equation cannot hide here by being wrong on both sides.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field

import pytest
import torch
from modeling_helpers import on_t5_and_bart, random_batch
from paper_reference import RowReference
from torch import nn

from modeling import hooks, kernels
from modeling.bank import build_bank
from modeling.fit import check_fits
from modeling.kernels import RowIndex
from modeling.methods.base import BackboneFacts
from modeling.methods.trainable_tensors import TrainableTensorsConfig, selected_tensors
from modeling.serve_forms import ACTIVATIONS, AdapterSet, Bottleneck, LowRankDelta, PrefixKV
from modeling.sites import block_positions

# fp32 rounding of sums over <= 128 terms of O(1) values stays below ~1e-5 relative; the
# mistakes these tests exist for (a dropped bias, an adapter reading the wrong tensor)
# move outputs by more than 1e-2, since every adapter tensor below is O(0.1) or larger.
RELATIVE_TOLERANCE = 1e-4
# One row per set, the last set empty (a row with no adapter), then two repeated sets.
SLOTS = [0, 1, 2, 3, 4, 5, 6, 1, 5]
TEXT_LENGTHS = [5, 3, 7, 4, 6, 2, 5, 7, 3]
# (serial, parallel) activations: each activation once on each kind of bottleneck.
ACTIVATION_PAIRS = list(zip(ACTIVATIONS, ACTIVATIONS[1:] + ACTIVATIONS[:1], strict=True))


def _random(gen: torch.Generator, *shape: int, std: float = 0.2) -> torch.Tensor:
    return torch.randn(shape, generator=gen) * std


def _bottlenecks(facts, gen, width: int, parallel: bool, activation: str, scale: float,
                 positions) -> dict[str, Bottleneck]:
    d = facts.d_model
    return {pos: Bottleneck(_random(gen, width, d), _random(gen, width), _random(gen, d, width),
                            _random(gen, d), parallel=parallel, scale=scale,
                            activation=activation) for pos in positions}


def _prefixes(facts, gen, length: int) -> dict[str, PrefixKV]:
    shape = (facts.n_heads, length, facts.head_dim)
    return {site: PrefixKV(_random(gen, *shape, std=0.5), _random(gen, *shape, std=0.5))
            for site in facts.attention}


def reference_sets(backbone, serial: str, parallel: str, seed: int = 0) -> list[AdapterSet]:
    """Seven adapter sets covering every serve form; the last one is empty."""
    facts, gen = BackboneFacts.of(backbone), torch.Generator().manual_seed(seed)
    lm_linears = [name for name in facts.linear_shapes if name.startswith("lm.")]

    def delta(site: str, rank: int, scale: float) -> LowRankDelta:
        out_f, in_f = facts.linear_shapes[site]
        return LowRankDelta(_random(gen, rank, in_f), _random(gen, out_f, rank), scale)

    # Mixed ranks across sites and sets: the bank zero-pads the smaller ones.
    lora = {site: delta(site, 2 if i % 2 else 5, 0.5) for i, site in enumerate(lm_linears)}
    names = selected_tensors(TrainableTensorsConfig(layer_norms=True, biases=True,
                                                    visual_projection=True, lm_head=True), facts)
    overrides = {name: facts.frozen[name].detach() + _random(gen, *facts.frozen[name].shape)
                 for name in names}
    positions = list(facts.positions)
    sets = [
        AdapterSet(lora=lora),
        AdapterSet(bottleneck=_bottlenecks(facts, gen, 6, False, serial, 0.8, positions)),
        AdapterSet(bottleneck=_bottlenecks(facts, gen, 10, True, parallel, 1.3, positions)),
        AdapterSet(overrides=overrides),
        AdapterSet(prefix=_prefixes(facts, gen, 3)),
        AdapterSet(prompt=_random(gen, 4, facts.d_model, std=0.5),
                     prefix=_prefixes(facts, gen, 1),
                     bottleneck=_bottlenecks(facts, gen, 3, False, parallel, 1.0,
                                             positions[::2]),
                     lora={lm_linears[0]: delta(lm_linears[0], 3, 2.0)}),
        AdapterSet(),
    ]
    for s in sets:
        check_fits(s, facts)  # realistic sets: each would pass the server's load check
    return sets


@dataclass
class Trace:
    """What every traced module received and returned in one forward pass (by path)."""

    args: dict[str, tuple] = field(default_factory=dict)
    kwargs: dict[str, dict] = field(default_factory=dict)
    outputs: dict[str, object] = field(default_factory=dict)

    def first_input(self, path: str) -> torch.Tensor:
        args, kwargs = self.args[path], self.kwargs[path]
        return args[0] if args else kwargs["hidden_states"]

    def output(self, path: str) -> torch.Tensor:
        out = self.outputs[path]
        return out[0] if isinstance(out, tuple) else out


def layer_paths(backbone) -> dict[tuple[str, int], str]:
    """(stack, i) -> the module path of that transformer layer."""
    config, lm_type = backbone.lm.config, backbone.config.lm_type
    if lm_type == "t5":
        return {(stack, i): f"lm.{stack}.block.{i}" for stack in ("encoder", "decoder")
                for i in range(config.num_layers)}
    return {(stack, i): f"lm.model.{stack}.layers.{i}" for stack in ("encoder", "decoder")
            for i in range(getattr(config, f"{stack}_layers"))}


def _norms_and_linears(backbone) -> list[str]:
    return [name for name, module in backbone.named_modules()
            if name.startswith(("lm.", "visual.")) and (
                isinstance(module, nn.Linear | nn.LayerNorm)
                or type(module).__name__ == "T5LayerNorm")]


@contextmanager
def traced(backbone, paths: list[str]):
    """Record the inputs and (adapted) outputs of `paths`; our hooks run before these."""
    trace, handles = Trace(), []
    for path in paths:
        def record(module, args, kwargs, output, path=path):
            assert path not in trace.outputs, f"{path} ran twice in one forward"
            trace.args[path], trace.kwargs[path], trace.outputs[path] = args, kwargs, output
        handles.append(backbone.get_submodule(path).register_forward_hook(record,
                                                                          with_kwargs=True))
    try:
        yield trace
    finally:
        for handle in handles:
            handle.remove()


def encoder_path(backbone) -> str:
    return "lm.encoder" if backbone.config.lm_type == "t5" else "lm.model.encoder"


def run_traced(backbone, sets: list[AdapterSet], slots: list[int], lengths: list[int],
               grouped: bool = True):
    """One teacher-forced forward, row r with set slots[r] and text length lengths[r]
    -> (batch, trace, slots, lengths), the rows in the order the forward runs them:
    grouped by form (`RowIndex.grouping`, what `VLBackbone.forward` does: each site's
    rows a span), or, not grouped, as given (encode and decode called directly: the
    rows of a site scattered over the batch, as in a cached decode)."""
    bank = build_bank(sets, backbone.frozen_tensors(), backbone.config.d_model,
                         torch.zeros(()))
    order = RowIndex.of(slots).grouping(bank.used_by_sets()) if grouped else None
    order = order or range(len(slots))
    slots, lengths = [slots[r] for r in order], [lengths[r] for r in order]
    batch = random_batch(backbone, lengths, seed=3)
    paths = [*layer_paths(backbone).values(), encoder_path(backbone), "visual",
             *_norms_and_linears(backbone)]
    paths += sorted({source for _, source in sublayer_ends(backbone).values()} - {*paths})
    with torch.no_grad(), traced(backbone, paths) as trace:
        index = RowIndex.of(torch.tensor(slots))
        hidden, mask = backbone.encode(batch, bank, index)
        backbone.decode(hidden, mask, labels=batch.labels, bank=bank, index=index)
    return batch, trace, slots, lengths


def assert_close(actual: torch.Tensor, expected: torch.Tensor, what: str) -> None:
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    diff = float((actual - expected).abs().max())
    bound = RELATIVE_TOLERANCE * (1 + float(expected.abs().max()))
    assert diff <= bound, f"{what}: max |diff| {diff:.3g} exceeds {bound:.3g}"


def check_layers(backbone, trace: Trace, refs: list[RowReference], lengths: list[int]
                 ) -> None:
    """Every encoder and decoder layer of every row, from its recorded input.

    lengths: each row's text length (its prompt and text carry positions)."""
    encoder = trace.outputs[encoder_path(backbone)].last_hidden_state
    valid = trace.kwargs[encoder_path(backbone)]["attention_mask"].sum(1).tolist()
    for (stack, i), path in layer_paths(backbone).items():
        x, out = trace.first_input(path), trace.output(path)
        for row, ref in enumerate(refs):
            n = valid[row] if stack == "encoder" else x.shape[1]
            prompt = 0 if ref.weights.prompt is None else len(ref.weights.prompt)
            expected = ref.layer(stack, i, x[row, :n], encoder[row, :valid[row]],
                                 positional=prompt + lengths[row])
            assert_close(out[row, :n], expected, f"{path} row {row}")


@pytest.mark.parametrize("grouped", [True, False], ids=["rows_grouped", "rows_scattered"])
@pytest.mark.parametrize(("serial", "parallel"), ACTIVATION_PAIRS)
def test_every_layer_of_a_mixed_batch_computes_the_papers_equations_per_row(
        backbone, serial, parallel, grouped):
    sets = reference_sets(backbone, serial, parallel)
    _, trace, slots, lengths = run_traced(backbone, sets, SLOTS, TEXT_LENGTHS, grouped)
    check_layers(backbone, trace, [RowReference(backbone, sets[slot]) for slot in slots],
                 lengths)


@pytest.mark.parametrize("slot", range(6))
def test_each_set_alone_in_a_uniform_batch_computes_the_papers_equations(backbone, slot):
    """A uniform batch takes the kernels' dense path (one matmul, no gather)."""
    sets = reference_sets(backbone, "gelu", "tanh", seed=slot)
    _, trace, _, _ = run_traced(backbone, [sets[slot]], [0, 0], [4, 6])
    check_layers(backbone, trace, [RowReference(backbone, sets[slot])] * 2, [4, 6])


def sublayer_ends(backbone) -> dict[str, tuple[str, str]]:
    """Each sublayer's last Linear, where its bottleneck is added (`BlockPosition`): the
    Linear's path -> (position, path of the module whose input is the sublayer's)."""
    paths = {module: name for name, module in backbone.named_modules()}
    positions = block_positions(backbone.config.lm_type, backbone.lm)
    return {paths[p.output_module]: (name, paths[p.input_module])
            for name, p in positions.items()}


def test_every_linear_and_layer_norm_computes_lora_biases_and_overrides_per_row(backbone):
    sets = reference_sets(backbone, "relu", "silu")
    _, trace, slots, _ = run_traced(backbone, sets, SLOTS, TEXT_LENGTHS)
    check_linears_and_norms(backbone, trace, [RowReference(backbone, sets[s]) for s in slots])


@pytest.mark.parametrize("slots", [[0, 0], [5, 5], [5, 0, 0, 5, 5]],
                         ids=["lora_everywhere", "lora_and_more", "runs_of_both"])
def test_lora_merged_into_the_frozen_weight_computes_the_papers_equations(
        backbone, slots, monkeypatch):
    """Merging forced at every size (`kernels.merge_pays`) wherever every row has LoRA:
    uniform batches, and rows in runs of two sets that share one LoRA site (their other
    sites keep the two products)."""
    monkeypatch.setattr(kernels, "MERGE_RATIO", 0)
    merged, merged_lora = [], hooks.merged_lora
    monkeypatch.setattr(hooks, "merged_lora",
                        lambda *args: merged.append(args[-1].uniform) or merged_lora(*args))
    sets = reference_sets(backbone, "gelu", "tanh")
    _, trace, slots, lengths = run_traced(backbone, sets, slots, [4, 6, 5, 3, 7][:len(slots)])
    refs = [RowReference(backbone, sets[slot]) for slot in slots]
    check_layers(backbone, trace, refs, lengths)
    check_linears_and_norms(backbone, trace, refs)
    # each product merged the batch's one slot, or ran per run (index not uniform)
    assert merged and set(merged) == ({slots[0]} if len(set(slots)) == 1 else {None})


def check_linears_and_norms(backbone, trace: Trace, refs: list[RowReference]) -> None:
    """Every Linear and LayerNorm of every row, from its recorded input; a sublayer's
    last Linear carries that sublayer's bottleneck."""
    ends = sublayer_ends(backbone)
    for path in _norms_and_linears(backbone):
        module = backbone.get_submodule(path)
        x, out = trace.first_input(path), trace.output(path)
        for row, ref in enumerate(refs):
            compute = ref.linear if isinstance(module, nn.Linear) else ref.layer_norm
            expected = compute(path, x[row])
            if path in ends:  # a sublayer's bottleneck is added at its last Linear
                position, source = ends[path]
                expected = ref.adapter(position, trace.first_input(source)[row], expected)
            assert_close(out[row], expected, f"{path} row {row}")


@on_t5_and_bart
def test_encoder_input_is_each_rows_prompt_then_text_then_visual_tokens(backbone):
    sets = reference_sets(backbone, "relu", "silu")
    batch, trace, slots, lengths = run_traced(backbone, sets, SLOTS, TEXT_LENGTHS)
    embeds = trace.kwargs[encoder_path(backbone)]["inputs_embeds"]
    mask = trace.kwargs[encoder_path(backbone)]["attention_mask"]
    embed_text = backbone.lm.get_input_embeddings()
    for row, slot in enumerate(slots):
        ref = RowReference(backbone, sets[slot])
        visual = ref.visual(batch.visual[row], batch.image_order[row])
        assert_close(trace.output("visual")[row], visual, f"visual projection row {row}")
        with torch.no_grad():
            text = embed_text(batch.input_ids[row, :lengths[row]])
        expected = ref.encoder_input(text, visual)
        assert int(mask[row].sum()) == expected.shape[0]
        assert_close(embeds[row, :expected.shape[0]], expected, f"encoder input row {row}")
