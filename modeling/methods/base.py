"""What every PEFT method shares: the backbone facts it builds from, sharing, the registry.

A method is a train form (`PeftMethod`, an nn.Module holding its own parameterisation)
that materialises, per task, into serve forms (`AdapterSet`). Parameters live in
groups; the sharing mode decides whether a group exists once (`shared.<group>`) or once
per task (`tasks.<task>.<group>`) — VL-Adapter's "single", "multiple" and "half-shared"
(up-projection shared, down-projection per task) schemes (Sung et al., Sec. 3.3).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

from modeling.config import BackboneConfig
from modeling.serve_forms import AdapterSet
from modeling.sites import ATTENTION_SHAPE, attention_sites, block_positions, layer_norm_names

if TYPE_CHECKING:
    from modeling.backbone import VLBackbone

SHARING_MODES = ("single", "multiple", "half_shared")


@dataclass(frozen=True)
class BackboneFacts:
    """Shapes and site names of a backbone: all a method needs to build itself.

    Built from a backbone (possibly on the meta device) by `BackboneFacts.of`.
    """

    lm_type: str
    d_model: int
    n_heads: int
    head_dim: int
    positions: dict[str, str]  # block position -> kind ("self_attn" | "cross_attn" | "ffn")
    attention: tuple[str, ...]  # prefix-tuning sites
    linear_shapes: dict[str, tuple[int, int]]  # module path -> (out, in)
    layer_norms: tuple[str, ...]
    frozen: dict[str, torch.Tensor]  # every backbone tensor by name (may be on meta)
    config: BackboneConfig | None = None  # the tasks it can run (`modeling.fit.check_fits`)

    @classmethod
    def of(cls, backbone: VLBackbone) -> BackboneFacts:
        lm_type = backbone.config.lm_type
        heads, head_dim = ATTENTION_SHAPE[lm_type](backbone.lm.config)
        positions = block_positions(lm_type, backbone.lm)
        linears = {name: tuple(m.weight.shape) for name, m in backbone.named_modules()
                   if isinstance(m, nn.Linear) and not name.startswith("vision.")}
        return cls(
            lm_type=lm_type, d_model=backbone.config.d_model, n_heads=heads, head_dim=head_dim,
            positions={name: pos.kind for name, pos in positions.items()},
            attention=tuple(attention_sites(lm_type, backbone.lm)),
            linear_shapes=linears, layer_norms=tuple(layer_norm_names(backbone)),
            frozen=backbone.frozen_tensors(), config=backbone.config,
        )


class PeftMethod(nn.Module):
    """Base train form. Subclasses define `build_group` and `materialize`.

    Args:
        config: the method's config dataclass.
        facts: backbone shapes and sites.
        tasks: task names this run trains.
        sharing: "single" | "multiple" | "half_shared".
    """

    groups: ClassVar[tuple[str, ...]] = ()
    # Groups shared under "half_shared" (the up-projections).
    half_shared_groups: ClassVar[tuple[str, ...]] = ()
    serveable: ClassVar[bool] = True

    def __init__(self, config: Any, facts: BackboneFacts, tasks: list[str], sharing: str):
        super().__init__()
        if sharing not in SHARING_MODES:
            raise ValueError(f"sharing must be one of {SHARING_MODES}, got {sharing!r}")
        if sharing == "half_shared" and not self.half_shared_groups:
            raise ValueError(f"{type(self).__name__} has no up-projection to share: "
                             "use sharing 'single' or 'multiple'")
        self.config, self.facts, self.sharing = config, facts, sharing
        self.task_names = list(tasks)
        self.shared = nn.ModuleDict()
        self.tasks = nn.ModuleDict({task: nn.ModuleDict() for task in tasks})
        for group in self.groups:
            if self.is_shared(group):
                self.shared[group] = self.build_group(group)
            else:
                for task in tasks:
                    self.tasks[task][group] = self.build_group(group)

    def is_shared(self, group: str) -> bool:
        if self.sharing == "single":
            return True
        if self.sharing == "multiple":
            return False
        return group in self.half_shared_groups

    def group(self, name: str, task: str) -> nn.Module:
        """The module holding group `name` as seen by `task`."""
        if self.is_shared(name):
            return self.shared[name]
        if task not in self.tasks:
            raise KeyError(f"unknown task {task!r}; this adapter has {self.task_names}")
        return self.tasks[task][name]

    def build_group(self, group: str) -> nn.Module:
        raise NotImplementedError

    def materialize(self, task: str) -> AdapterSet:
        raise NotImplementedError


def config_from_dict(config_cls: type, data: dict[str, Any] | None) -> Any:
    """Build a config dataclass, naming any unknown field and the accepted ones."""
    data = dict(data or {})
    names = {f.name for f in fields(config_cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"unknown {config_cls.__name__} field(s) {unknown}; "
                         f"expected some of {sorted(names)}")
    for key, value in data.items():
        if isinstance(value, list):
            data[key] = tuple(value)
    return config_cls(**data)


def manifest_config(config_cls: type, data: dict[str, Any] | None) -> dict[str, Any]:
    """A method config as an artifact's manifest states it, completed for `config_from_dict`.

    Manifests are written from resolved configs and so state every field; a field one lacks
    was added to the method after the artifact was written, and takes the value that
    describes such artifacts (`config_cls.FIELDS_ADDED_LATER`), not today's default.
    """
    return {**getattr(config_cls, "FIELDS_ADDED_LATER", {}), **(data or {})}


def config_to_dict(config: Any) -> dict[str, Any]:
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(config).items()}
