"""The locustfile drives the real server: locust headless for ~5 s over a localhost channel,
every task and adapter mixed; some requests made, none failed, and the process exits.

Bounded: the run is 5 s plus locust's start (~11 s in all on two shared cores); the
subprocess is killed after 50 s so a hang fails the test instead of stalling the suite.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from training.synthetic.generate import SplitSizes, generate

LOCUSTFILE = Path(__file__).resolve().parents[2] / "benchmarks" / "locustfile.py"


def test_locust_headless_run_has_requests_and_no_failures(server, tmp_path: Path) -> None:
    world = tmp_path / "world"
    generate(world, seed=0, sizes=SplitSizes(0, 0, 2))
    stats = tmp_path / "stats"
    command = [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless",
               "-u", "3", "-r", "3", "-t", "5s", "--stop-timeout", "10",
               "--host", f"127.0.0.1:{server.port}", "--world", str(world),
               "--max-new-tokens", "3", "--alpha", "1.0", "--json-file", str(stats),
               "--csv", str(stats), "--loglevel", "WARNING"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=50)
    errors = Path(f"{stats}_failures.csv")  # locust's json holds counts, not the errors
    why = (errors.read_text() if errors.exists() else "") + done.stderr[-2000:]
    assert done.returncode == 0, why
    entries = json.loads((tmp_path / "stats.json").read_text())
    requests = sum(e["num_requests"] for e in entries)
    failures = sum(e["num_failures"] for e in entries)
    assert requests > 0, why
    assert failures == 0, why
    assert all(e["name"].startswith("Predict/") for e in entries)
