"""`make loadtest`: a server on 127.0.0.1 with N adapters, Locust headless at several loads.

    python -m benchmarks.loadtest [--backbone tiny] [--adapters 32] [--alpha 1.0]
                                  [--users 1,4,16] [--duration 20] [--threads 1]

Publishes N random adapters (all eight tasks each; adapter, LoRA, prompt and prefix
recipes in turn) to a temporary registry, starts the real gRPC server in this process with
all of them loaded, and for each user count runs
`locust -f benchmarks/locustfile.py --headless -u U -r U -t T --json-file ...` in a
subprocess. Figures come from Locust's `--json-file` (its CSV undercounts the last
window); the server-side split (queue, vision, encode, decode) is the difference of the
metrics endpoint's `vladapter_latency_seconds` sums and counts before and after each run.
Writes `benchmarks/results/loadtest.md` and `loadtest.png` (latency percentiles vs load).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from adapters_registry import Registry
from benchmarks.common import (
    RESULTS,
    add_machine_options,
    machine_line,
    percentile,
    pin_threads,
    publish_mixed,
    serving_backbone,
    start_server,
)
from training.synthetic.generate import SplitSizes, generate

LOCUSTFILE = Path(__file__).resolve().with_name("locustfile.py")
STAGES = ("queue", "vision", "encode", "decode", "total")


@dataclass
class LevelResult:
    """One Locust run: client-side figures from its JSON, server-side means in ms."""

    users: int
    requests: int
    failures: int
    rps: float
    p50: float
    p90: float
    p95: float
    p99: float
    server_ms: dict[str, float]
    batch_rows: float
    batch_adapters: float


def scrape(url: str) -> dict[str, float]:
    """Sums and counts of the latency stages and batch histograms from /metrics."""
    text = urllib.request.urlopen(url, timeout=10).read().decode()
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if not sample.name.endswith(("_sum", "_count")):
                continue
            stage = sample.labels.get("stage", "")
            key = f"{sample.name}:{stage}"
            out[key] = out.get(key, 0.0) + sample.value
    return out


def server_split(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """Mean milliseconds per request of each stage between two scrapes."""
    split = {}
    for stage in STAGES:
        base = f"vladapter_latency_seconds_{{}}:{stage}"
        count = after.get(base.format("count"), 0) - before.get(base.format("count"), 0)
        total = after.get(base.format("sum"), 0) - before.get(base.format("sum"), 0)
        split[stage] = 1000 * total / count if count else float("nan")
    return split


def _histogram_mean(name: str, before: dict[str, float], after: dict[str, float]) -> float:
    count = after.get(f"{name}_count:", 0) - before.get(f"{name}_count:", 0)
    total = after.get(f"{name}_sum:", 0) - before.get(f"{name}_sum:", 0)
    return total / count if count else float("nan")


def locust_figures(entries: list[dict]) -> tuple[int, int, float, list[float]]:
    """(requests, failures, requests/s, [p50, p90, p95, p99] ms) over every entry."""
    requests = sum(e["num_requests"] for e in entries)
    failures = sum(e["num_failures"] for e in entries)
    times: list[float] = []
    for entry in entries:
        for value, count in entry["response_times"].items():
            times.extend([float(value)] * int(count))
    start = min((e["start_time"] for e in entries), default=0.0)
    end = max((e["last_request_timestamp"] or start for e in entries), default=start)
    rps = requests / (end - start) if end > start else float("nan")
    return requests, failures, rps, [percentile(times, q) for q in (50, 90, 95, 99)]


def run_level(host: str, metrics_url: str, users: int, args: argparse.Namespace,
              world: Path, workdir: Path) -> LevelResult:
    """One headless Locust run at `users` concurrent users."""
    stats = workdir / f"users-{users}"
    command = [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless",
               "-u", str(users), "-r", str(users), "-t", f"{args.duration}s",
               "--stop-timeout", "30", "--host", host, "--world", str(world),
               "--alpha", str(args.alpha), "--max-new-tokens", str(args.max_new_tokens),
               "--json-file", str(stats), "--skip-log", "--loglevel", "WARNING"]
    before = scrape(metrics_url)
    subprocess.run(command, check=True, timeout=args.duration + 120)
    after = scrape(metrics_url)
    entries = json.loads(stats.with_suffix(".json").read_text())
    requests, failures, rps, pcts = locust_figures(entries)
    return LevelResult(users, requests, failures, rps, *pcts, server_split(before, after),
                       _histogram_mean("vladapter_batch_size", before, after),
                       _histogram_mean("vladapter_batch_distinct_adapters", before, after))


def report(results: list[LevelResult], args: argparse.Namespace, machine: str,
           command: str) -> str:
    """The Markdown report: one row per load level."""
    lines = [f"# Load test ({time.strftime('%Y-%m-%d %H:%M')})", "", f"`{command}`", "",
             machine, "",
             f"backbone `{args.backbone}`, {args.adapters} adapters (all eight tasks each), "
             f"popularity alpha {args.alpha}, {args.duration} s per level, max_new_tokens "
             f"{args.max_new_tokens}, max_batch {args.max_batch}, device_slots "
             f"{args.device_slots}, server torch threads {args.threads}. Locust and the server "
             "share the machine's cores.", "",
             "| users | requests | failures | req/s | p50 ms | p90 ms | p95 ms | p99 ms | "
             "server queue / vision / encode / decode / total ms | rows/batch | "
             "adapters/batch |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        split = " / ".join(f"{r.server_ms[s]:.1f}" for s in STAGES)
        lines.append(f"| {r.users} | {r.requests} | {r.failures} | {r.rps:.1f} | {r.p50:.0f} | "
                     f"{r.p90:.0f} | {r.p95:.0f} | {r.p99:.0f} | {split} | "
                     f"{r.batch_rows:.1f} | {r.batch_adapters:.1f} |")
    lines += ["", "Server split: mean per request from `vladapter_latency_seconds` (vision and "
              "encode are per batch, shared by its rows; decode is the row's whole decode).",
              "Percentiles from Locust's response-time histogram (rounded buckets)."]
    return "\n".join(lines) + "\n"


def plot(results: list[LevelResult], path: Path) -> None:
    """Latency percentiles and throughput against the number of users."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    figure, left = plt.subplots(figsize=(6, 4))
    users = [r.users for r in results]
    for name in ("p50", "p90", "p95", "p99"):
        left.plot(users, [getattr(r, name) for r in results], marker="o", label=name)
    left.set_xscale("log", base=2)
    left.set_xlabel("concurrent users (closed loop)")
    left.set_ylabel("latency (ms)")
    right = left.twinx()
    right.plot(users, [r.rps for r in results], color="black", linestyle="--", marker="s",
               label="req/s")
    right.set_ylabel("requests / s")
    left.legend(loc="upper left")
    right.legend(loc="lower right")
    left.set_title("adapter-serve under Locust: latency percentiles vs load")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="tiny")
    parser.add_argument("--adapters", type=int, default=32)
    parser.add_argument("--alpha", type=float, default=1.0)
    parser.add_argument("--users", default="1,4,16")
    parser.add_argument("--duration", type=int, default=20, help="seconds per level")
    parser.add_argument("--max-new-tokens", type=int, default=8)
    parser.add_argument("--max-batch", type=int, default=16)
    parser.add_argument("--device-slots", type=int, default=64)
    add_machine_options(parser, device=False)
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args(argv)
    pin_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    command = "python -m benchmarks.loadtest " + " ".join(argv if argv is not None
                                                           else sys.argv[1:])
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        backbone = serving_backbone(args.backbone)
        registry = Registry(str(workdir / "store"))
        names = publish_mixed(registry, backbone, workdir, args.adapters)
        generate(workdir / "world", seed=0, sizes=SplitSizes(0, 0, 8))
        server = start_server(backbone, str(workdir / "store"), names,
                              max_batch=args.max_batch, device_slots=args.device_slots,
                              max_queue=1024)
        try:
            metrics_port = server.metrics.start_http(0, addr="127.0.0.1")
            metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
            results = []
            for users in (int(u) for u in args.users.split(",")):
                results.append(run_level(f"127.0.0.1:{server.port}", metrics_url, users, args,
                                         workdir / "world", workdir))
                print(f"users {users}: {results[-1]}", flush=True)
        finally:
            server.metrics.stop_http()
            server.stop(grace=10)
    text = report(results, args, machine_line(), command)
    (out / "loadtest.md").write_text(text)
    plot(results, out / "loadtest.png")
    print(text)
    return 0


if __name__ == "__main__":
    from benchmarks.common import as_process

    raise SystemExit(as_process(main))
