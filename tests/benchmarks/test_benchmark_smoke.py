"""The newest benchmarks run end to end on the tiny preset and their built-in checks hold:
the cached decode gives the recomputed tokens, an in-place slot write the restacked values."""

from __future__ import annotations

import pytest
import torch

from benchmarks import decode_cache, slot_write


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
])
def test_benchmark_runs_and_its_check_holds(module, argv, check, capsys):
    assert module.main([*argv, "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert check in out and "machine:" in out
