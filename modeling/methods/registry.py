"""The only list of PEFT methods: name -> (config dataclass, train-form class).

Each method module calls `register_method` once at import; `modeling.methods` imports
them all. The types and bounds of every config field, checked before an artifact is built,
are declared in `adapters_registry.method_config` (the registry does not import torch);
tests/modeling/test_method_bounds.py keeps that table equal to the config dataclasses.
"""

from __future__ import annotations

from dataclasses import dataclass

from modeling.methods.base import PeftMethod


@dataclass(frozen=True)
class MethodSpec:
    name: str
    config_cls: type
    method_cls: type[PeftMethod]


METHODS: dict[str, MethodSpec] = {}


def register_method(name: str, config_cls: type, method_cls: type[PeftMethod]) -> None:
    if name in METHODS:
        raise ValueError(f"method {name!r} is registered twice")
    METHODS[name] = MethodSpec(name, config_cls, method_cls)


def get_method(name: str) -> MethodSpec:
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; expected one of {sorted(METHODS)}")
    return METHODS[name]
