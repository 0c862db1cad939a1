"""Method configs in a manifest are typed and bounded before anything is built: at publish
(bounds from MAX_D_MODEL and MAX_VIRTUAL_TOKENS) and when the server reads a version
(bounds from its backbone's d_model). Refusals name the method, the field and the limit."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

import adapters_registry.artifact
from adapters_registry import InvalidArtifact, Registry
from adapters_registry.method_config import (
    MAX_D_MODEL,
    MAX_VIRTUAL_TOKENS,
    METHOD_FIELDS,
    Bound,
    Sizes,
    method_config_problem,
)


def set_methods(artifact: Path, methods: list[dict[str, Any]]) -> None:
    """Replace the manifest's methods (the tensor files and their hashes stay valid).

    An infinity is written as 1e999, which strict JSON parsers read as a float overflow."""
    manifest = json.loads((artifact / "manifest.json").read_text())
    manifest["methods"] = methods
    (artifact / "manifest.json").write_text(json.dumps(manifest).replace("Infinity", "1e999"))


def method(name: str, **config: Any) -> dict[str, Any]:
    return {"id": name, "method": name, "config": config, "sharing": "single"}


def test_publish_refuses_a_two_million_wide_prompt_mlp_naming_field_and_limit(
    registry: Registry, artifact: Path
) -> None:
    set_methods(artifact, [method("prompt_tuning", length=40, hidden_dim=2_000_000)])
    with pytest.raises(InvalidArtifact) as refused:
        registry.publish(artifact, "cap")
    message = str(refused.value)
    assert "methods[0] ('prompt_tuning'): config.hidden_dim is 2000000" in message
    assert f"limit {16 * MAX_D_MODEL} (16 x MAX_D_MODEL" in message
    assert registry.index() == []


def test_publish_refuses_a_rank_that_is_not_an_integer(registry: Registry, artifact: Path) -> None:
    set_methods(artifact, [method("lora", rank="four")])
    with pytest.raises(InvalidArtifact, match="config.rank must be an integer, got 'four'"):
        registry.publish(artifact, "cap")


BAD_CONFIGS = {
    "length above the cap": (method("prefix_tuning", length=MAX_VIRTUAL_TOKENS + 1),
                             r"config.length is 513, above the limit 512 \(MAX_VIRTUAL_TOKENS\)"),
    "zero width": (method("adapter", width=0), "config.width must be at least 1, got 0"),
    "negative rank": (method("lora", rank=-4), "config.rank must be at least 1, got -4"),
    "bool as size": (method("compacter", phm_dim=True), "config.phm_dim must be an integer"),
    "float as size": (method("hyperformer", projected_dim=8.0),
                      "config.projected_dim must be an integer"),
    "null size": (method("lora", rank=None), "config.rank must be an integer, got None"),
    "string flag": (method("prompt_tuning", reparameterize="no"),
                    "config.reparameterize must be true or false"),
    "infinite alpha": (method("lora", alpha=float("inf")), "config.alpha must be a finite"),
    "dropout of one": (method("lora", dropout=1.0), r"config.dropout must be a number in \[0, 1\)"),
    "placements as a string": (method("adapter", placements="encoder.ffn"),
                               "config.placements must be a list of strings"),
    "activation as a number": (method("parallel_adapter", activation=3),
                               "config.activation must be a string"),
    "unknown field": (method("lora", rnak=4),
                      r"config has unknown field\(s\) \['rnak'\]; expected some of"),
    "unknown method": (method("lokr"), "unknown method 'lokr'; expected one of"),
}


@pytest.mark.parametrize("case", sorted(BAD_CONFIGS))
def test_publish_refuses_each_bad_config_naming_the_field(
    case: str, registry: Registry, artifact: Path
) -> None:
    config, message = BAD_CONFIGS[case]
    set_methods(artifact, [method("trainable_tensors"), config])
    with pytest.raises(InvalidArtifact, match=rf"methods\[1\] \('\w+'\): {message}"):
        registry.publish(artifact, "cap")


def test_every_size_field_of_every_method_is_bounded_at_its_limit() -> None:
    sizes = Sizes.of_backbone(64)
    bounded = [(name, field, spec) for name, fields in METHOD_FIELDS.items()
               for field, spec in fields.items() if isinstance(spec, Bound)]
    assert {name for name, _, _ in bounded} >= {"adapter", "lora", "prompt_tuning"}
    for name, field, spec in bounded:
        limit = spec.factor * getattr(sizes, spec.of)
        assert method_config_problem(name, {field: limit}, sizes) is None
        problem = method_config_problem(name, {field: limit + 1}, sizes)
        assert problem == f"config.{field} is {limit + 1}, above the limit {limit} " \
                          f"({sizes.describe(spec.of, spec.factor)})", (name, field)


def test_reading_for_a_backbone_bounds_sizes_by_its_d_model(
    registry: Registry, artifact: Path
) -> None:
    set_methods(artifact, [method("lora", rank=100)])
    registry.publish(artifact, "cap")  # fits some backbone: at most MAX_D_MODEL
    assert registry.read_files("cap").info.version == 1
    assert registry.read_files("cap", d_model=128).info.version == 1
    limit = r"config.rank is 100, above the limit 64 \(d_model of this backbone\)"
    with pytest.raises(InvalidArtifact, match=limit):
        registry.read_files("cap", d_model=64)


def test_version_published_before_the_bounds_is_listed_but_refused_when_read(
    registry: Registry, artifact: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    set_methods(artifact, [method("prompt_tuning", hidden_dim=2_000_000)])
    with monkeypatch.context() as older_registry:
        older_registry.setattr(adapters_registry.artifact, "method_config_problem",
                               lambda *args: None)
        registry.publish(artifact, "cap")
    [info] = registry.index()
    assert info.problem == "" and info.manifest["methods"][0]["config"]["hidden_dim"] == 2_000_000
    assert registry.verify() == []  # the stored bytes are intact; the config is what is refused
    with pytest.raises(InvalidArtifact, match="config.hidden_dim is 2000000"):
        registry.read_files("cap", d_model=64)
    with pytest.raises(InvalidArtifact, match="config.hidden_dim is 2000000"):
        registry.pull("cap", tmp_path / "out")

