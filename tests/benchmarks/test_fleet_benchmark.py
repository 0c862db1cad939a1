"""The fleet benchmark's arithmetic (the run itself needs a Ray cluster: benchmarks/README):
power-law workload, fleet-wide device counters, hit rate, bank writes and registry loads
(on demand) per request."""

from __future__ import annotations

from collections import Counter

import pytest

from benchmarks.fleet import device_counts, summarize, workload


def test_workload_draws_adapters_by_power_law():
    names = [f"lora-{i:04d}" for i in range(50)]
    requests = workload(names, 2000, alpha=1.0, seed=3)
    counts = Counter(r.adapter.name for r in requests).most_common()
    assert len(requests) == 2000 and {r.task for r in requests} == {"vqa"}
    # rank 1 against rank 10: about 10x under alpha = 1
    assert 5 < counts[0][1] / counts[9][1] < 20
    assert workload(names, 2000, alpha=1.0, seed=3) == requests  # seeded
    uniform = Counter(r.adapter.name for r in workload(names, 2000, alpha=0.0))
    assert max(uniform.values()) < 3 * 2000 / 50


def test_device_counts_sum_replicas_and_summary_ratios():
    def report(hit, miss, restack, answered, loads):
        return {"stats": {"answered": {"Predict": answered, "Load": 3},
                          "cache": {"device": {"hit": hit, "miss": miss, "restack": restack,
                                               "eviction": 9.0}},
                          "on_demand_loads": loads}}
    snapshot = {"replicas": {"a": report(30.0, 10.0, 1.0, 40, 6.0),
                             "b": report(5.0, 15.0, 0.0, 20, 3.0)}}
    assert device_counts(snapshot) == {"hit": 35.0, "miss": 25.0, "restack": 1.0,
                                       "loads": 9.0, "answered": 60.0}
    phases = [{"latencies": [0.1, 0.2, 0.3], "wall": 1.5, "failures": []}]
    summary = summarize("affinity", phases, [device_counts(snapshot)])
    assert summary["hit_rate"] == pytest.approx(35 / 60)
    assert summary["writes"] == pytest.approx(26 / 60)  # slot writes + whole-bank restacks
    assert summary["loads"] == pytest.approx(9 / 60)  # registry -> host, on demand
    assert (summary["requests"], summary["rps"]) == (3, pytest.approx(2.0))
    assert summary["p50"] == pytest.approx(200.0)
