"""Check that an adapter set fits a backbone before it reaches the bank.

Every mismatch is a ValueError naming the site, the field and the expected value, so a
wrong artifact is refused at load time instead of failing inside a forward pass.
"""

from __future__ import annotations

from modeling.methods.base import BackboneFacts
from modeling.methods.lora import check_lora_rank
from modeling.serve_forms import AdapterSet
from modeling.tasks import TASKS

OVERRIDABLE_PREFIXES = ("visual.", "lm.")


def _shape(t) -> tuple[int, ...]:
    return tuple(t.shape)


def _check_lora(adapter_set: AdapterSet, facts: BackboneFacts) -> None:
    for site, delta in adapter_set.lora.items():
        if site not in facts.linear_shapes or not site.startswith("lm."):
            raise ValueError(f"lora site {site!r} is not a Linear layer of the LM")
        out_f, in_f = facts.linear_shapes[site]
        rank = delta.lora_a.shape[0]
        if _shape(delta.lora_a) != (rank, in_f) or _shape(delta.lora_b) != (out_f, rank):
            raise ValueError(
                f"lora {site}: lora_a {_shape(delta.lora_a)} / lora_b {_shape(delta.lora_b)} "
                f"do not fit; expected [rank, {in_f}] and [{out_f}, rank]")
        check_lora_rank(rank, site, (out_f, in_f))


def _check_bottleneck(adapter_set: AdapterSet, facts: BackboneFacts) -> None:
    d = facts.d_model
    for pos, b in adapter_set.bottleneck.items():
        if pos not in facts.positions:
            raise ValueError(f"bottleneck position {pos!r} does not exist; expected names like "
                             f"{next(iter(facts.positions))!r}")
        width = b.down_weight.shape[0]
        expected = {"down_weight": (width, d), "down_bias": (width,), "up_weight": (d, width),
                    "up_bias": (d,)}
        for field, shape in expected.items():
            if _shape(getattr(b, field)) != shape:
                raise ValueError(f"bottleneck {pos}.{field} has shape "
                                 f"{_shape(getattr(b, field))}; expected {list(shape)}")


def _check_prompt_and_prefix(adapter_set: AdapterSet, facts: BackboneFacts) -> None:
    prompt = adapter_set.prompt
    if prompt is not None and (prompt.dim() != 2 or prompt.shape[1] != facts.d_model):
        raise ValueError(f"prompt has shape {_shape(adapter_set.prompt)}; expected "
                         f"[length, {facts.d_model}]")
    for site, kv in adapter_set.prefix.items():
        if site not in facts.attention:
            raise ValueError(f"prefix site {site!r} is not an attention layer")
        for field in ("key", "value"):
            shape = _shape(getattr(kv, field))
            if len(shape) != 3 or (shape[0], shape[2]) != (facts.n_heads, facts.head_dim):
                raise ValueError(f"prefix {site}.{field} has shape {shape}; expected "
                                 f"[{facts.n_heads}, length, {facts.head_dim}]")
    adapter_set.prefix_len()


def _check_overrides(adapter_set: AdapterSet, facts: BackboneFacts) -> None:
    for name, tensor in adapter_set.overrides.items():
        if name not in facts.frozen or not name.startswith(OVERRIDABLE_PREFIXES):
            raise ValueError(f"override {name!r} names no LM or visual-projection tensor")
        if _shape(tensor) != _shape(facts.frozen[name]):
            raise ValueError(f"override {name} has shape {_shape(tensor)}; expected "
                             f"{_shape(facts.frozen[name])}")


def check_fits(adapter_set: AdapterSet, facts: BackboneFacts, task: str | None = None
               ) -> None:
    """Raise ValueError naming the first serve-form tensor that does not fit `facts`;
    with `task` (the set's), also `TaskDoesNotFit` when the task's visual tokens and the
    set's prompt vectors leave the backbone's encoder positions no room for text."""
    _check_lora(adapter_set, facts)
    _check_bottleneck(adapter_set, facts)
    _check_prompt_and_prefix(adapter_set, facts)
    _check_overrides(adapter_set, facts)
    if task in TASKS and facts.config is not None:
        facts.config.check_task_fits(TASKS[task], adapter_set.prompt_len())
