"""import-peft: Hugging Face PEFT LoRA and prompt-tuning folders become artifacts."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from adapters_registry import InvalidArtifact, Registry, import_peft, load_artifact
from adapters_registry.cli import main
from modeling.tasks import TASKS

FINGERPRINT = "sha256:" + "ab" * 32
Q = "encoder.block.0.layer.0.SelfAttention.q"
V = "encoder.block.0.layer.0.SelfAttention.v"
PROMPT_KEY = "prompt_tuning.shared.prompt.embedding.weight"


def our_key(module: str, part: str) -> str:
    """The train-form name `modeling.methods.lora` gives this PEFT module's A or B."""
    return f"lora.shared.lora_{part}.lm__{module.replace('.', '__')}"


def peft_folder(directory: Path, config: dict, tensors: dict[str, np.ndarray]) -> Path:
    directory.mkdir(parents=True)
    (directory / "adapter_config.json").write_text(json.dumps(config))
    save_file(tensors, str(directory / "adapter_model.safetensors"))
    return directory


def lora_folder(directory: Path, rank: int = 4, **config: object) -> Path:
    rng = np.random.default_rng(0)
    tensors = {}
    for module in (Q, V):
        tensors[f"base_model.model.{module}.lora_A.weight"] = rng.random((rank, 16), np.float32)
        tensors[f"base_model.model.{module}.lora_B.weight"] = rng.random((16, rank), np.float32)
    settings = {
        "peft_type": "LORA",
        "r": rank,
        "lora_alpha": 8,
        "lora_dropout": 0.1,
        "target_modules": ["q", "v"],
        "base_model_name_or_path": "t5-small",
        **config,
    }
    return peft_folder(directory, settings, tensors)


def prompt_folder(directory: Path, submodules: int) -> Path:
    config = {
        "peft_type": "PROMPT_TUNING",
        "num_virtual_tokens": 5,
        "token_dim": 8,
        "num_transformer_submodules": submodules,
    }
    vectors = np.arange(5 * submodules * 8, dtype=np.float32).reshape(5 * submodules, 8)
    return peft_folder(directory, config, {"prompt_embeddings": vectors})


def test_lora_folder_becomes_an_artifact_with_renamed_keys(tmp_path: Path) -> None:
    source = lora_folder(tmp_path / "peft")
    manifest = import_peft(source, tmp_path / "out", FINGERPRINT, tasks=("caption", "vqa"))
    load_artifact(tmp_path / "out")
    imported = load_file(str(tmp_path / "out" / "shared.safetensors"))
    original = load_file(str(source / "adapter_model.safetensors"))
    assert sorted(imported) == sorted(
        our_key(module, part) for module in (Q, V) for part in "AB"
    )
    for module in (Q, V):
        for part in "AB":
            np.testing.assert_array_equal(
                imported[our_key(module, part)],
                original[f"base_model.model.{module}.lora_{part}.weight"],
            )
    assert load_file(str(tmp_path / "out" / "tasks" / "vqa.safetensors")) == {}
    assert manifest["methods"] == [
        {
            "id": "lora",
            "method": "lora",
            "sharing": "single",
            "config": {"rank": 4, "alpha": 8, "dropout": 0.1, "targets": [f"lm.{Q}", f"lm.{V}"]},
        }
    ]
    assert manifest["base_model"]["fingerprint"] == FINGERPRINT
    assert manifest["parameters"]["trainable"] == 4 * (4 * 16)


def test_prompt_tuning_folder_becomes_prompt_vectors(tmp_path: Path) -> None:
    import_peft(prompt_folder(tmp_path / "peft", submodules=1), tmp_path / "out", FINGERPRINT)
    vectors = load_file(str(tmp_path / "out" / "shared.safetensors"))[PROMPT_KEY]
    np.testing.assert_array_equal(vectors, np.arange(40, dtype=np.float32).reshape(5, 8))


def test_seq2seq_prompt_keeps_the_encoder_rows_peft_prepends(tmp_path: Path) -> None:
    import_peft(prompt_folder(tmp_path / "peft", submodules=2), tmp_path / "out", FINGERPRINT)
    vectors = load_file(str(tmp_path / "out" / "shared.safetensors"))[PROMPT_KEY]
    np.testing.assert_array_equal(vectors, np.arange(40, dtype=np.float32).reshape(5, 8))


def test_layers_with_other_rank_or_scale_become_their_own_lora_method(tmp_path: Path) -> None:
    """rank_pattern / alpha_pattern / rsLoRA: each (rank, scale) group is a method whose
    alpha gives PEFT's scale (alpha_pattern / r, or lora_alpha / sqrt(r) with rsLoRA)."""
    source = lora_folder(tmp_path / "peft", rank=4, use_rslora=True,
                         alpha_pattern={"SelfAttention.v": 2})
    manifest = import_peft(source, tmp_path / "out", FINGERPRINT)
    configs = {m["id"]: m["config"] for m in manifest["methods"]}
    assert configs == {
        "lora": {"rank": 4, "alpha": 16, "dropout": 0.1, "targets": [f"lm.{Q}"]},
        "lora_2": {"rank": 4, "alpha": 4, "dropout": 0.1, "targets": [f"lm.{V}"]},
    }
    imported = load_file(str(tmp_path / "out" / "shared.safetensors"))
    assert sorted(imported) == sorted(
        [our_key(Q, "A"), our_key(Q, "B")]
        + [f"lora_2.shared.lora_{part}.lm__{V.replace('.', '__')}" for part in "AB"]
    )


def test_imported_task_prompts_come_from_the_one_task_definition(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No prompt table of its own: the import records `modeling.tasks`' prompts (a changed
    definition shows up), and `<task>: ` for a task outside the eight, as training does."""
    monkeypatch.setitem(TASKS, "vqa", replace(TASKS["vqa"], prompt="question: "))
    manifest = import_peft(lora_folder(tmp_path / "peft"), tmp_path / "out", FINGERPRINT,
                           tasks=("vqa", "nlvr2", "refcoco"))
    assert manifest["tasks"] == {"vqa": {"prompt": "question: "}, "nlvr2": {"prompt": "nlvr: "},
                                 "refcoco": {"prompt": "refcoco: "}}


def test_import_for_a_florence2_backbone_records_its_prompts_and_family(tmp_path: Path) -> None:
    """`--family florence2`: the manifest holds the prompts a Florence-2 run trains with (its
    task tags), not VL-Adapter's; without it the VL-T5 / VL-BART prompts stay as they were."""
    source = lora_folder(tmp_path / "peft")
    argv = ["import-peft", str(source), "--fingerprint", FINGERPRINT, "--task", "vqa",
            "--task", "caption", "--task", "nlvr2"]
    assert main([*argv, "--out", str(tmp_path / "florence2"), "--family", "florence2"]) == 0
    assert main([*argv, "--out", str(tmp_path / "vl")]) == 0
    florence2 = load_artifact(tmp_path / "florence2").manifest
    assert florence2["tasks"] == {"vqa": {"prompt": "<VQA>"},
                                  "caption": {"prompt": "What does the image describe?"},
                                  "nlvr2": {"prompt": "nlvr: "}}
    assert florence2["base_model"]["family"] == "florence2"
    vl = load_artifact(tmp_path / "vl").manifest
    assert vl["tasks"] == {"vqa": {"prompt": "vqa: "}, "caption": {"prompt": "caption: "},
                           "nlvr2": {"prompt": "nlvr: "}}
    assert vl["base_model"]["family"] == "vl"


def test_import_refuses_an_unknown_family_naming_the_known_ones(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = lora_folder(tmp_path / "peft")
    with pytest.raises(InvalidArtifact, match="family 'llava' .* vl, florence2, blip"):
        import_peft(source, tmp_path / "out", FINGERPRINT, family="llava")
    assert not (tmp_path / "out").exists()
    code = main(["import-peft", str(source), "--out", str(tmp_path / "out"),
                 "--fingerprint", FINGERPRINT, "--family", "llava"])
    err = capsys.readouterr().err
    assert code == 2 and "--family" in err and "llava" in err and "Traceback" not in err


def test_registry_imports_no_torch() -> None:
    """The PEFT policy it shares with modeling is plain Python: the registry stays torch-free."""
    code = (
        "import sys, adapters_registry.cli\n"
        "print(sorted({'torch', 'transformers'} & set(sys.modules)))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True, timeout=120)
    assert result.stdout.strip() == "[]"


def test_pickled_peft_weights_are_refused(tmp_path: Path) -> None:
    source = tmp_path / "peft"
    source.mkdir()
    (source / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 4}))
    (source / "adapter_model.bin").write_bytes(pickle.dumps({"w": 1}))
    with pytest.raises(InvalidArtifact, match="adapter_model.bin is a pickle"):
        import_peft(source, tmp_path / "out", FINGERPRINT)


def test_unknown_peft_tensor_is_refused(tmp_path: Path) -> None:
    tensors = {"base_model.model.lm_head.weight": np.zeros((2, 2), np.float32)}
    source = peft_folder(tmp_path / "peft", {"peft_type": "LORA", "r": 2, "lora_alpha": 4}, tensors)
    with pytest.raises(InvalidArtifact, match="unexpected tensor 'base_model.model.lm_head"):
        import_peft(source, tmp_path / "out", FINGERPRINT)


def test_import_requires_a_valid_fingerprint_and_task_names(tmp_path: Path) -> None:
    source = lora_folder(tmp_path / "peft")
    with pytest.raises(InvalidArtifact, match="fingerprint"):
        import_peft(source, tmp_path / "out", "sha256:short")
    with pytest.raises(InvalidArtifact, match="invalid task name"):
        import_peft(source, tmp_path / "out", FINGERPRINT, tasks=("../x",))


def test_cli_import_peft_can_publish(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = lora_folder(tmp_path / "peft")
    argv = [
        "--root",
        str(tmp_path / "registry"),
        "import-peft",
        str(source),
        "--out",
        str(tmp_path / "out"),
        "--fingerprint",
        FINGERPRINT,
        "--task",
        "vqa",
        "--name",
        "t5-lora",
        "--alias",
        "prod",
    ]
    assert main(argv) == 0
    assert capsys.readouterr().out.endswith("t5-lora:1\n")
    info = Registry(tmp_path / "registry").resolve("t5-lora@prod")
    assert list(info.manifest["tasks"]) == ["vqa"]


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_folder_saved_by_peft_imports_every_lora_weight(tmp_path: Path) -> None:
    peft = pytest.importorskip("peft")
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    config = transformers.T5Config(
        vocab_size=32, d_model=16, d_kv=8, d_ff=32, num_layers=1, num_decoder_layers=1, num_heads=2
    )
    torch.manual_seed(0)
    lora = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q", "v"], init_lora_weights=False)
    model = peft.get_peft_model(transformers.T5ForConditionalGeneration(config), lora)
    model.save_pretrained(tmp_path / "peft")
    import_peft(tmp_path / "peft", tmp_path / "out", FINGERPRINT)
    imported = load_file(str(tmp_path / "out" / "shared.safetensors"))
    expected = {}
    for name, tensor in model.state_dict().items():
        if ".lora_" in name:
            module, part = name.removeprefix("base_model.model.").split(".lora_")
            expected[our_key(module, part[0])] = tensor
    assert sorted(imported) == sorted(expected)
    for key, tensor in expected.items():
        np.testing.assert_array_equal(imported[key], tensor.numpy())
