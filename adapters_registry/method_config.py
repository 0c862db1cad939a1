"""The declared type and bound of every method config field a manifest may hold.

``manifest.methods[i].config`` decides how large the modules built at load are (a 10 KB
artifact could ask for a prompt MLP two million wide), so it is checked before anything is
built, at publish and when a server reads a version. Every integer size is
``1 <= value <= factor * sizes.<of>``: ``of`` is the backbone's ``d_model`` (at publish, where
the backbone is unknown, ``MAX_D_MODEL``) or ``virtual_tokens`` (``MAX_VIRTUAL_TOKENS``, the
documented cap on prompt and prefix lengths). Other fields have a declared kind.

The table mirrors the config dataclasses of ``modeling.methods`` (this package does not import
torch); ``tests/modeling/test_methods.py`` keeps the two equal. See docs/artifact-format.md.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

MAX_D_MODEL = 16_384  # no backbone family the project builds is wider
MAX_VIRTUAL_TOKENS = 512  # prompt / prefix vectors; the papers use 2 - 128


@dataclass(frozen=True)
class Sizes:
    """What bounds refer to: ``d_model`` of the backbone (when known) and the documented caps."""

    d_model: int = MAX_D_MODEL
    virtual_tokens: int = MAX_VIRTUAL_TOKENS
    backbone_known: bool = False

    @classmethod
    def of_backbone(cls, d_model: int) -> Sizes:
        """The sizes of a backbone whose model width is ``d_model``."""
        return cls(d_model=d_model, backbone_known=True)

    def describe(self, of: str, factor: int) -> str:
        """How a limit was derived, for refusal messages."""
        times = f"{factor} x " if factor != 1 else ""
        if of == "virtual_tokens":
            return f"{times}MAX_VIRTUAL_TOKENS"
        if self.backbone_known:
            return f"{times}d_model of this backbone"
        return f"{times}MAX_D_MODEL, as the backbone is not known at publish"


PUBLISH_SIZES = Sizes()


@dataclass(frozen=True)
class Bound:
    """An integer size: ``1 <= value <= factor * sizes.<of>``; ``optional``: may be null."""

    of: str = "d_model"
    factor: int = 1
    optional: bool = False


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


# kind -> (accepts the value, what it must be)
KINDS = {
    "flag": (lambda v: isinstance(v, bool), "true or false"),
    "text": (lambda v: isinstance(v, str), "a string"),
    "texts": (lambda v: isinstance(v, list) and all(isinstance(t, str) for t in v),
              "a list of strings"),
    "number": (_is_number, "a finite number"),
    "probability": (lambda v: _is_number(v) and 0 <= v < 1, "a number in [0, 1)"),
}

# An adapter may be wider than the model (the PEFT study sweeps widths past d_model), up to the
# width of a transformer FFN; reparameterisation MLPs and hypernetwork embeddings likewise.
WIDTH = Bound(factor=4, optional=True)
REDUCTION = Bound()  # width = d_model // reduction_factor >= 1
HIDDEN = Bound(factor=16)  # VL-Adapter: 800 for d_model 768; Hyperformer: 512 embeddings
LENGTH = Bound(of="virtual_tokens")
BOTTLENECK = {"reduction_factor": REDUCTION, "width": WIDTH, "activation": "text",
              "placements": "texts"}

METHOD_FIELDS: dict[str, dict[str, Bound | str]] = {
    "adapter": {**BOTTLENECK, "scale": "number"},
    "parallel_adapter": {**BOTTLENECK, "scale": "number"},
    "compacter": {**BOTTLENECK, "phm_dim": Bound(), "shared_phm_rule": "flag",
                  "low_rank": "flag", "phm_rank": Bound()},
    "hyperformer": {"reduction_factor": REDUCTION, "width": WIDTH, "placements": "texts",
                    "task_embedding_dim": HIDDEN, "layer_embedding_dim": HIDDEN,
                    "hidden_dim": HIDDEN, "projected_dim": HIDDEN, "layout": "text"},
    "lora": {"rank": Bound(), "alpha": "number", "dropout": "probability", "targets": "texts"},
    "prefix_tuning": {"length": LENGTH, "hidden_dim": HIDDEN},
    "prompt_tuning": {"length": LENGTH, "hidden_dim": HIDDEN, "reparameterize": "flag"},
    "trainable_tensors": {"layer_norms": "flag", "biases": "flag", "layer_norm_biases": "flag",
                          "visual_projection": "flag", "lm_head": "flag"},
    "full_finetuning": {},
}


def _bound_problem(bound: Bound, value: Any, sizes: Sizes) -> str | None:
    if value is None and bound.optional:
        return None
    if not isinstance(value, int) or isinstance(value, bool):
        return f"must be an integer{' or null' if bound.optional else ''}, got {value!r}"
    limit = bound.factor * getattr(sizes, bound.of)
    if value < 1:
        return f"must be at least 1, got {value}"
    if value > limit:
        return f"is {value}, above the limit {limit} ({sizes.describe(bound.of, bound.factor)})"
    return None


def field_problem(spec: Bound | str, value: Any, sizes: Sizes) -> str | None:
    """What is wrong with one field's value (None if nothing)."""
    if isinstance(spec, Bound):
        return _bound_problem(spec, value, sizes)
    accepts, expected = KINDS[spec]
    return None if accepts(value) else f"must be {expected}, got {value!r}"


def method_config_problem(method: str, config: dict[str, Any], sizes: Sizes) -> str | None:
    """The first thing wrong with a method's config, as ``config.<field> ...``; None if none.

    An unknown method or field is a problem; a missing field takes the method's default.
    """
    fields = METHOD_FIELDS.get(method)
    if fields is None:
        return f"unknown method {method!r}; expected one of {sorted(METHOD_FIELDS)}"
    unknown = sorted(set(config) - set(fields))
    if unknown:
        return f"config has unknown field(s) {unknown}; expected some of {sorted(fields)}"
    for name, value in config.items():
        problem = field_problem(fields[name], value, sizes)
        if problem is not None:
            return f"config.{name} {problem}"
    return None
