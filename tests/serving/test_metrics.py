"""ServerMetrics: recorded events appear, with their names and labels, in an HTTP scrape."""

from __future__ import annotations

import urllib.request
from collections.abc import Iterator

import pytest
from prometheus_client.parser import text_string_to_metric_families
from serving_helpers import metrics_text

from serving.metrics import ServerMetrics


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """{(sample name, sorted labels): value} of a text exposition."""
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


@pytest.fixture
def metrics() -> Iterator[ServerMetrics]:
    server_metrics = ServerMetrics()
    yield server_metrics
    server_metrics.stop_http()


def record_some_events(metrics: ServerMetrics) -> None:
    metrics.queue_depth(7)
    metrics.batch(size=4, distinct_adapters=3)
    metrics.batch(size=1, distinct_adapters=1)
    metrics.latency("vqa", "queue", 0.002)
    metrics.latency("vqa", "total", 0.120)
    metrics.latency("caption", "decode", 0.300)
    for tier, event in [("device", "hit"), ("device", "hit"), ("host", "miss"),
                        ("registry", "eviction")]:
        metrics.cache_event(tier, event)
    metrics.adapter_load(0.75)
    metrics.error("NOT_FOUND")
    metrics.error("NOT_FOUND")
    metrics.error("RESOURCE_EXHAUSTED")


def test_scrape_over_http_has_every_metric_with_its_labels(metrics):
    record_some_events(metrics)
    port = metrics.start_http(0, addr="127.0.0.1")
    assert port > 0
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
        assert reply.status == 200
        values = samples(reply.read().decode("utf-8"))
    assert values[("vladapter_queue_depth", ())] == 7
    assert values[("vladapter_batch_size_count", ())] == 2
    assert values[("vladapter_batch_size_sum", ())] == 5
    assert values[("vladapter_batch_size_bucket", (("le", "2.0"),))] == 1
    assert values[("vladapter_batch_distinct_adapters_sum", ())] == 4
    assert values[("vladapter_latency_seconds_count", (("stage", "total"), ("task", "vqa")))] == 1
    assert values[("vladapter_latency_seconds_sum", (("stage", "decode"),
                                                     ("task", "caption")))] == pytest.approx(0.3)
    assert values[("vladapter_cache_events_total", (("event", "hit"), ("tier", "device")))] == 2
    assert values[("vladapter_cache_events_total", (("event", "miss"), ("tier", "host")))] == 1
    assert values[("vladapter_cache_events_total",
                   (("event", "eviction"), ("tier", "registry")))] == 1
    assert values[("vladapter_adapter_load_seconds_sum", ())] == pytest.approx(0.75)
    assert values[("vladapter_errors_total", (("code", "NOT_FOUND"),))] == 2
    assert values[("vladapter_errors_total", (("code", "RESOURCE_EXHAUSTED"),))] == 1
    assert all(name.startswith("vladapter_") for name, _ in values)


def test_servers_do_not_share_metrics(metrics):
    metrics.queue_depth(3)
    other = ServerMetrics()
    other.queue_depth(11)
    assert samples(metrics_text(metrics))[("vladapter_queue_depth", ())] == 3
    assert samples(metrics_text(other))[("vladapter_queue_depth", ())] == 11


def test_unknown_label_values_are_refused(metrics):
    with pytest.raises(ValueError, match="stage"):
        metrics.latency("vqa", "sleep", 1.0)
    with pytest.raises(ValueError, match="tier"):
        metrics.cache_event("disk", "hit")
    with pytest.raises(ValueError, match="cache event"):
        metrics.cache_event("host", "miss-ish")


def test_http_endpoint_starts_once_and_stops(metrics):
    port = metrics.start_http(0, addr="127.0.0.1")
    with pytest.raises(RuntimeError, match="already running"):
        metrics.start_http(0, addr="127.0.0.1")
    metrics.stop_http()
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2)
    assert metrics.start_http(0, addr="127.0.0.1") > 0
