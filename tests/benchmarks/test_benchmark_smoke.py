"""The newest benchmarks run end to end on the tiny preset and their built-in checks hold:
the cached decode gives the recomputed tokens, an in-place slot write the restacked values;
the four-form figure prints its ratio, merged LoRA agrees with the two products, and a
benchmark reruns itself on an older commit."""

from __future__ import annotations

import platform
import re

import pytest
import torch

from benchmarks import decode_cache, merged_lora, mixed_adapters, peft_baselines, slot_write
from benchmarks.common import run_at_ref


@pytest.fixture(autouse=True)
def torch_threads():
    """Benchmarks pin torch to one thread; the rest of the suite keeps its own count."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize(("module", "argv", "check"), [
    (decode_cache, ["--preset", "tiny", "--rows", "3", "--tokens", "5", "--repeats", "1"],
     "same tokens: True"),
    (slot_write, ["--preset", "tiny", "--slots", "3", "--repeats", "1"], "same values: True"),
    (mixed_adapters, ["--preset", "tiny-bart", "--methods", "forms", "--rows", "8", "--adapters",
                      "4", "--repeats", "1", "--out", "{tmp}"], "four forms / LoRA only"),
    (merged_lora, ["--widths", "64", "--tokens", "16,256", "--repeats", "2"],
     "the rule picks the faster path (or one within 5%) in"),
])
def test_benchmark_runs_and_its_check_holds(module, argv, check, capsys, tmp_path):
    argv = [arg.format(tmp=tmp_path) for arg in argv]  # results go to tmp, not the repo
    assert module.main([*argv, "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert check in out and "machine:" in out


def test_a_benchmark_runs_again_on_an_older_commit_and_prints_before_and_after(tmp_path,
                                                                            capsys):
    """Both processes time by the thread's CPU time (the older code runs this checkout's
    script with the same `--clock`); both ratios, mixed / uniform (LoRA) and four forms /
    LoRA only, get a before and after."""
    argv = ["--preset", "tiny-bart", "--methods", "lora,forms", "--rows", "8", "--adapters",
            "4", "--repeats", "1", "--decode", "2", "--device", "cpu", "--out", str(tmp_path)]
    assert mixed_adapters.main([*argv, "--baseline", "HEAD", "--clock", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "  before | lora     N=   4" in out and "  before | forms    N=   4" in out
    assert "  before | lora     N=   4  decode 2 tokens/row" in out
    assert re.search(r"decode, mixed / uniform \(2 tokens per row\): before \(HEAD\)[^\n]*\n"
                     r"  lora 4 +\d\.\d\d -> +\d\.\d\d", out)
    assert "mixed / uniform: before (HEAD) -> after (this code)" in out
    assert re.search(r"  lora 4 +\d\.\d\d -> +\d\.\d\d", out)
    assert "four forms / LoRA only: before (HEAD) -> after (this code)" in out
    assert re.search(r"  forms 4 +\d\.\d\d -> +\d\.\d\d", out)


def test_a_baseline_at_an_unknown_commit_is_one_line_on_stderr_and_status_2(capsys):
    with pytest.raises(SystemExit) as exit_info:
        run_at_ref("no-such-commit", "mixed_adapters", [])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("--baseline no-such-commit: git archive")


def test_the_adapter_benchmarks_take_a_backbone_folder(tmp_path, capsys):
    from benchmarks import peft_baselines
    from modeling.backbone import VLBackbone
    from modeling.config import preset

    folder = tmp_path / "my-backbone"
    VLBackbone.from_config(preset("tiny-bart"), seed=4).save_pretrained(folder)
    assert peft_baselines.main(["--backbone", str(folder), "--adapters", "2", "--rows", "4",
                                "--repeats", "1"]) == 0
    out = capsys.readouterr().out
    assert re.search(rf"{re.escape(str(folder))}\s+N=\s*2 rows 4: .* ours/backbone", out)
    assert mixed_adapters.main(["--backbone", str(folder), "--methods", "lora", "--rows", "4",
                                "--adapters", "2", "--repeats", "1", "--device", "cpu",
                                "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert f"backbone {folder}, batch 4 rows" in out
    assert re.search(r"lora\s+N=\s*2 .* admitted/uniform \d", out)  # the engine's row order
    assert (tmp_path / "mixed_adapters_my-backbone_cpu.json").is_file()


def test_prefix_attention_benchmark_checks_both_paths_equal_and_prints_the_ratio(capsys):
    from benchmarks import prefix_attention
    assert prefix_attention.main(["--repeats", "1"]) == 0
    out = capsys.readouterr().out
    assert out.count("widened / apart") == len(prefix_attention.CASES) and "machine:" in out


def test_a_negative_decode_length_is_refused_before_any_model_is_built(capsys):
    with pytest.raises(SystemExit) as exit_info:
        mixed_adapters.main(["--decode", "-1"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "--decode: expected a number of tokens >= 0, got -1" in err


def test_a_ratio_is_taken_round_by_round_with_its_quartiles():
    from benchmarks.common import Ratio, paired_ratio
    # round 2 ran on a machine twice as slow for both: its ratio is still 2
    times = {"ours": [1.0, 2.0, 1.0, 4.0, 1.0], "bare": [2.0, 4.0, 1.0, 2.0, 3.0]}
    ratio = paired_ratio(times, "ours", "bare")  # per round: 2, 2, 1, 0.5, 3
    assert ratio == Ratio(median=2.0, low=1.0, high=2.0)
    assert str(ratio) == "2.00 (1.00-2.00)"


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's malloc only")
def test_host_memory_benchmark_compares_fresh_processes_of_each_side(capsys):
    from benchmarks import host_memory
    assert host_memory.main(["--preset", "tiny", "--rows", "4", "--adapters", "2", "--decode",
                             "2", "--repeats", "1", "--processes", "1"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"forward +default .* page faults per call \| kept .* kept / default "
                     r"\d+\.\d\d \(", out)
    assert re.search(r"decode +default .* tokens/s", out) and "machine:" in out



@pytest.mark.parametrize("module", [mixed_adapters, peft_baselines])
def test_the_cpu_clock_is_refused_on_a_gpu_before_any_model_is_built(module, capsys):
    """The thread's CPU time leaves out the kernels' time on the GPU."""
    with pytest.raises(SystemExit) as exit_info:
        module.main(["--device", "cuda", "--clock", "cpu"])
    assert exit_info.value.code == 2
    assert "--clock cpu times CPU work only: use --clock wall on --device cuda" in \
        capsys.readouterr().err


def test_a_launch_count_leaves_out_views_and_counts_reads_back_to_the_host():
    from benchmarks.launches import counted
    x = torch.ones(4)
    count = counted(lambda: (x.view(2, 2).t() + x.view(2, 2)).sum().item())
    assert dict(count.by_name) == {"add": 1, "sum": 1, "_local_scalar_dense": 1}
    assert (count.launches, count.syncs) == (3, 1)


def test_launches_benchmark_counts_what_each_form_adds(capsys):
    from benchmarks import launches
    assert launches.main(["--preset", "tiny", "--rows", "8", "--adapters", "4",
                          "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    count = {(kind, name.strip()): int(n) for kind, name, n in re.findall(
        r"^(forward|decode step) +(\D+?) +(\d+) \(\d+\)", out, re.MULTILINE)}
    assert len(count) == 9
    for kind in ("forward", "decode step"):
        assert count[(kind, "backbone")] < count[(kind, "LoRA mixed")]
        assert count[(kind, "backbone")] < count[(kind, "bottleneck mixed")]
    assert count[("forward", "LoRA uniform")] < count[("forward", "LoRA mixed")]
    assert count[("forward", "LoRA only")] < count[("forward", "four forms")]
    assert re.search(r"LoRA only / four forms 0\.\d\d", out) and "machine:" in out


def test_the_launches_benchmark_needs_a_bank_of_every_form(capsys):
    from benchmarks import launches
    with pytest.raises(SystemExit) as exit_info:
        launches.main(["--adapters", "3"])
    assert exit_info.value.code == 2
    assert "--adapters: the four-form bank needs at least 4 sets, got 3" in \
        capsys.readouterr().err


def test_the_adapter_benchmarks_run_in_bfloat16_and_peft_still_agrees(capsys, tmp_path):
    """--dtype bfloat16 (the server's type on CUDA): the backbone, the banks and the visual
    features in bf16; PEFT's logits must still agree with ours within bf16's rounding and
    the adapters move them by more than that."""
    from benchmarks import peft_baselines
    assert peft_baselines.main(["--presets", "tiny", "--adapters", "2", "--rows", "4",
                                "--repeats", "1", "--dtype", "bfloat16"]) == 0
    assert mixed_adapters.main(["--preset", "tiny", "--methods", "lora,forms", "--rows", "8",
                                "--adapters", "4", "--repeats", "1", "--dtype", "bfloat16",
                                "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert out.count("bfloat16") == 2
    assert re.search(r"tiny +N= +2 rows 4: .* ours/backbone \d\.\d\d", out)
    assert re.search(r"four forms / LoRA only \d\.\d\d", out)
    assert (tmp_path / "mixed_adapters_tiny_cpu_bfloat16.json").is_file()
