"""Benchmark: good requests' latency while another client sends huge texts (issue 10, item 4).

    python -m benchmarks.huge_text [--backbone tiny] [--clients 2] [--attackers 1]
                                   [--huge-mib 7.5] [--rounds 3] [--seconds 5]

Starts the real server on 127.0.0.1 serving one adapter. `clients` threads send VQA
requests back to back through phases of `seconds` each, repeated `rounds` times so every
phase sees the same machine:

- quiet: nothing else (the baseline);
- huge image: `attackers` threads of a second process (as another client would be;
  building such messages must not take this process's interpreter) send requests of
  `huge-mib` MiB whose bytes are an image, refused (INVALID_ARGUMENT, max_image_bytes)
  before any decoding: what moving that many bytes costs by itself;
- huge text: the same size as a text (under the 8 MiB message limit, far over
  max_text_bytes), refused with INVALID_ARGUMENT.

Prints p50 / p99 of the good requests per phase and each ratio to the quiet one (1.0 = no
slowdown; huge text near huge image = the text costs no more than its bytes), the
refusals and their latency, and the machine.
"""

from __future__ import annotations

import argparse
import multiprocessing
import tempfile
import threading
import time
from pathlib import Path

import grpc

from adapters_registry import Registry
from benchmarks.common import (
    MIXED_RECIPES,
    add_machine_options,
    machine_line,
    percentile,
    pin_threads,
    publish,
    serving_backbone,
    start_server,
)
from benchmarks.hot_swap import probe_image
from serving.client import Client, predict_request


class Senders:
    """Threads sending one message back to back while `on`; each outcome's latency (s) is
    kept with the phase its request started in. Events and counters may be a process's
    (`multiprocessing`), so senders can run in another process."""

    def __init__(self, target: str, message, threads: int, on=None, stop=None,
                 busy=None) -> None:
        self.on, self.stop = on or threading.Event(), stop or threading.Event()
        self.busy = busy or multiprocessing.Value("i", 0)  # requests in flight
        self.phase = ""
        self.ok: list[tuple[str, float]] = []
        self.refused: list[tuple[str, float]] = []
        self.errors: list[str] = []
        self._threads = [threading.Thread(target=self._loop, args=(target, message))
                         for _ in range(threads)]

    def _loop(self, target: str, message) -> None:
        with Client(target, timeout=120) as client:
            while not self.stop.is_set():
                if not self.on.wait(0.05):
                    continue
                phase, start = self.phase, time.perf_counter()
                with self.busy.get_lock():
                    self.busy.value += 1
                try:
                    client.predict(message)
                    self.ok.append((phase, time.perf_counter() - start))
                except grpc.RpcError as exc:
                    if exc.code() == grpc.StatusCode.INVALID_ARGUMENT:
                        self.refused.append((phase, time.perf_counter() - start))
                    else:
                        self.errors.append(f"{exc.code().name}: {exc.details()}")
                finally:
                    with self.busy.get_lock():
                        self.busy.value -= 1

    def latencies(self, phase: str) -> list[float]:
        return [seconds for started_in, seconds in self.ok if started_in == phase]

    def __enter__(self) -> Senders:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.on.clear()
        self.stop.set()
        for thread in self._threads:
            thread.join()


PHASES = ("quiet", "huge image", "huge text")


def attack(target: str, image, megabytes: float, threads: int, switches, stop, busy, ready,
           results) -> None:
    """The attacker process: per attacking phase, its senders while that phase's switch
    is on; puts per phase (answered, refused seconds, errors) on `results` at the end."""
    size = int(megabytes * 1024 * 1024)
    messages = {
        "huge image": predict_request("vqa", "demo", images=[b"\x89PNG" + bytes(size)],
                                      text="what colour is the circle", max_new_tokens=4),
        "huge text": predict_request("vqa", "demo", images=[image], text="what " * (size // 5),
                                     max_new_tokens=4),
    }
    senders = {phase: Senders(target, message, threads, switches[phase], stop, busy)
               for phase, message in messages.items()}
    for group in senders.values():
        group.__enter__()
    ready.set()
    stop.wait()
    for group in senders.values():
        group.__exit__(None, None, None)
    results.put({phase: (len(group.ok), [s for _, s in group.refused], group.errors)
                 for phase, group in senders.items()})


def phases(good: Senders, switches, busy, rounds: int, seconds: float) -> None:
    """Cycle through PHASES. Between phases every sender pauses until no request of either
    process is in flight, so each good request starts and ends beside one phase's traffic."""
    for _ in range(rounds):
        for phase in PHASES:
            good.phase = phase
            good.on.set()
            if phase in switches:
                switches[phase].set()
            time.sleep(seconds)
            good.on.clear()
            if phase in switches:
                switches[phase].clear()
            while busy.value or good.busy.value:
                time.sleep(0.01)


def report(good: Senders, attacks: dict) -> None:
    """Per phase: the good requests' p50 / p99 and ratios to quiet; the refusals."""
    quiet = good.latencies("quiet")
    for phase in PHASES:
        values = good.latencies(phase)
        ratios = "" if phase == "quiet" else "  ratio to quiet p50 {:5.2f} p99 {:5.2f}".format(
            *(percentile(values, q) / percentile(quiet, q) for q in (50, 99)))
        print(f"  good requests, {phase:10s} n {len(values):5d}  p50 "
              f"{1000 * percentile(values, 50):8.1f} ms  p99 "
              f"{1000 * percentile(values, 99):8.1f} ms{ratios}")
    errors = list(good.errors)
    for phase, (answered, refused, attack_errors) in attacks.items():
        errors += attack_errors
        print(f"  {phase} requests: refused (INVALID_ARGUMENT) {len(refused)}, p50 "
              f"{1000 * percentile(refused, 50):.1f} ms; answered {answered}")
    print(f"  other errors {len(errors)}" + (f" (first: {errors[0]})" if errors else ""))


def run(args: argparse.Namespace, workdir: Path) -> None:
    backbone = serving_backbone(args.backbone)
    registry = Registry(str(workdir / "store"))
    publish(registry, backbone, workdir, "demo", MIXED_RECIPES[0], ["vqa"], seed=1)
    server = start_server(backbone, str(workdir / "store"), ["demo"], max_queue_delay_ms=1.0)
    target = f"127.0.0.1:{server.port}"
    image = probe_image(backbone)
    good_message = predict_request("vqa", "demo", images=[image],
                                   text="what colour is the circle", max_new_tokens=4)
    limits = server.config.limits
    print(f"backbone {args.backbone}; {args.clients} good client(s); {args.attackers} "
          f"attacker(s) in another process sending {args.huge_mib} MiB messages; limits "
          f"max_text_tokens={limits.max_text_tokens}, max_text_bytes="
          f"{getattr(limits, 'max_text_bytes', 'none')}")
    spawn = multiprocessing.get_context("spawn")
    switches = {phase: spawn.Event() for phase in PHASES[1:]}
    stop, ready, busy, results = spawn.Event(), spawn.Event(), spawn.Value("i", 0), \
        spawn.Queue()
    attacker = spawn.Process(target=attack, args=(target, image, args.huge_mib, args.attackers,
                                                  switches, stop, busy, ready, results))
    attacker.start()
    try:
        if not ready.wait(300):
            raise RuntimeError("the attacker process did not start")
        with Senders(target, good_message, args.clients) as good:
            phases(good, switches, busy, args.rounds, args.seconds)
        stop.set()
        attacks = results.get(timeout=300)
        attacker.join()
    finally:
        stop.set()
        server.stop(grace=30)
    report(good, attacks)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="tiny")
    parser.add_argument("--clients", type=int, default=2)
    parser.add_argument("--attackers", type=int, default=1)
    parser.add_argument("--huge-mib", type=float, default=7.5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5.0)
    add_machine_options(parser, device=False)
    args = parser.parse_args(argv)
    pin_threads(args.threads)
    print(machine_line())
    with tempfile.TemporaryDirectory() as tmp:
        run(args, Path(tmp))
    print(machine_line())
    return 0


if __name__ == "__main__":
    from benchmarks.common import as_process

    raise SystemExit(as_process(main))
