"""Locust load test of adapter-serve over gRPC: eight tasks, many adapters, power-law use.

    locust -f benchmarks/locustfile.py --headless -u 16 -r 16 -t 30s --host 127.0.0.1:50051 \
        [--world DIR] [--alpha 1.0] [--adapter-names a,b] [--max-new-tokens 8]

The adapters are those the server has loaded (`Repository.Status`), or `--adapter-names`.
Popularity follows S-LoRA's workload: the adapter of rank k (1-based, in a shuffled order
fixed by `--workload-seed`) is drawn with probability proportional to k**-alpha; the task
is then drawn uniformly among the tasks that adapter serves. Inputs are the test split of
the bundled synthetic benchmark (`--world`, or a small world generated into a temporary
folder): its images, NLVR2 pairs and video frames, with their questions and choices.

`GrpcUser` is a plain Locust `User` that reports every call through `events.request`
(name `Predict/<task>`, response time in ms, failures as the gRPC error). It closes its
channel in `on_stop`: an open channel keeps a gevent-patched process from exiting.
"""

from __future__ import annotations

import random
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import grpc
import grpc.experimental.gevent as grpc_gevent
from locust import User, constant, events, task
from locust.env import Environment

from modeling.tasks import TASKS, VisualInput
from serving.client import predict_request
from serving.protos import inference_pb2, inference_pb2_grpc, repository_pb2, repository_pb2_grpc
from training.data.registry import load_split
from training.data.visual_stores import ImageFolder, VideoFrameFolder

grpc_gevent.init_gevent()  # grpc's blocking calls must yield to other greenlets

# task -> (data file relative to the world, split argument of the reader)
WORLD_FILES = {
    "vqa": ("vqa/test.json", None), "gqa": ("gqa/test.json", None),
    "nlvr2": ("nlvr2/test.json", None), "caption": ("coco/dataset_coco.json", "test"),
    "tvqa": ("tvqa/test.jsonl", None), "how2qa": ("how2qa/test.jsonl", None),
    "tvc": ("tvc/test.jsonl", None), "yc2c": ("yc2c/test.jsonl", None),
}


@events.init_command_line_parser.add_listener
def _arguments(parser) -> None:
    parser.add_argument("--world", default="", help="synthetic world folder (default: "
                        "generate a small one)")
    parser.add_argument("--alpha", type=float, default=1.0,
                        help="power-law exponent of adapter popularity (0: uniform)")
    parser.add_argument("--adapter-names", default="",
                        help="comma-separated adapters (default: all the server has loaded)")
    parser.add_argument("--max-new-tokens", type=int, default=8)
    parser.add_argument("--workload-seed", type=int, default=0)
    parser.add_argument("--request-timeout", type=float, default=60.0,
                        help="deadline of each call in seconds")


def example_request(example, world: Path, max_new_tokens: int) -> inference_pb2.PredictRequest:
    """A `PredictRequest` (adapter left empty) from one synthetic-world example."""
    spec = TASKS[example.task]
    text = "" if spec.is_captioning else example.text
    if spec.visual_input is VisualInput.VIDEO_FRAMES:
        frames = [p.read_bytes() for p in
                  VideoFrameFolder(world / "videos").frame_paths(example.visual_ids[0])]
        return predict_request(example.task, "", frames=frames, subtitles=example.subtitles,
                               text=text, choices=example.choices,
                               max_new_tokens=max_new_tokens)
    images = [ImageFolder(world / "images").image_path(v).read_bytes()
              for v in example.visual_ids]
    return predict_request(example.task, "", images=images, text=text,
                           max_new_tokens=max_new_tokens)


def world_requests(world: Path, max_new_tokens: int) -> dict[str, list]:
    """task -> ready requests built from the world's test split."""
    out = {}
    for name, (relative, split) in WORLD_FILES.items():
        examples = load_split(name, world / relative, split=split,
                              subtitles_path=world / "subtitles.jsonl")
        out[name] = [example_request(e, world, max_new_tokens) for e in examples[:16]]
    return out


@dataclass
class Workload:
    """Adapters with their tasks and power-law weights, and the request pool per task."""

    adapters: list[tuple[str, tuple[str, ...]]]  # in popularity order
    weights: list[float]
    requests: dict[str, list[inference_pb2.PredictRequest]]

    def draw(self, rng: random.Random) -> inference_pb2.PredictRequest:
        """One request: an adapter by popularity, a task it serves, an input of that task."""
        name, tasks = rng.choices(self.adapters, weights=self.weights)[0]
        template = rng.choice(self.requests[rng.choice(tasks)])
        message = inference_pb2.PredictRequest()
        message.CopyFrom(template)
        message.adapter.name = name
        return message


def _loaded_adapters(host: str, wanted: list[str]) -> list[tuple[str, tuple[str, ...]]]:
    """(name, tasks) of every adapter the server has in service, optionally filtered."""
    with grpc.insecure_channel(host) as channel:
        stub = repository_pb2_grpc.RepositoryStub(channel)
        states = stub.Status(repository_pb2.StatusRequest(name=""), timeout=30).adapters
    found = {s.name: tuple(t for t in s.tasks if t in TASKS) for s in states}
    names = wanted or sorted(found)
    missing = [n for n in names if n not in found]
    if missing or not names:
        raise RuntimeError(f"adapters not loaded on {host}: {missing or 'none at all'}")
    return [(n, found[n]) for n in names if found[n]]


def build_workload(environment: Environment) -> Workload:
    """Discover the adapters, order them by a seeded shuffle, read or generate the world."""
    options = environment.parsed_options
    wanted = [n.strip() for n in options.adapter_names.split(",") if n.strip()]
    adapters = _loaded_adapters(environment.host, wanted)
    random.Random(options.workload_seed).shuffle(adapters)
    weights = [(rank + 1) ** -options.alpha for rank in range(len(adapters))]
    world = Path(options.world) if options.world else None
    if world is None:
        from training.synthetic.generate import SplitSizes, generate
        world = Path(tempfile.mkdtemp(prefix="locust-world-"))
        generate(world, seed=options.workload_seed, sizes=SplitSizes(0, 0, 8))
    return Workload(adapters, weights, world_requests(world, options.max_new_tokens))


_WORKLOADS: dict[int, Workload] = {}


def workload_of(environment: Environment) -> Workload:
    """One workload per environment, built by the first user that asks."""
    key = id(environment)
    if key not in _WORKLOADS:
        _WORKLOADS[key] = build_workload(environment)
    return _WORKLOADS[key]


class GrpcUser(User):
    """Sends `Predict` calls back to back over its own channel (closed loop)."""

    wait_time = constant(0)

    def on_start(self) -> None:
        self.workload = workload_of(self.environment)
        self.timeout = self.environment.parsed_options.request_timeout
        self.rng = random.Random(f"{self.environment.parsed_options.workload_seed}-{id(self)}")
        self.channel = grpc.insecure_channel(self.host)
        self.stub = inference_pb2_grpc.InferenceStub(self.channel)

    def on_stop(self) -> None:
        self.channel.close()

    @task
    def predict(self) -> None:
        message = self.workload.draw(self.rng)
        start = time.perf_counter()
        length, error = 0, None
        try:
            length = self.stub.Predict(message, timeout=self.timeout).ByteSize()
        except grpc.RpcError as exc:
            error = exc
        self.environment.events.request.fire(
            request_type="grpc", name=f"Predict/{message.task}",
            response_time=(time.perf_counter() - start) * 1000, response_length=length,
            exception=error, context={"adapter": message.adapter.name})
