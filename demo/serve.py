"""The end of `make demo`: publish the trained adapter, serve it over gRPC, ask every task.

A real server on 127.0.0.1 (the same `Server` as `adapter-serve`), a real client; one
test example per task is sent with its image / frames as encoded PNG bytes, and the
answer is printed beside the ground truth.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from adapters_registry import Registry
from modeling.tasks import TASKS, TaskKind, VisualInput
from serving.client import Client
from serving.config import ServeConfig
from serving.server import Server
from training.config import TaskData
from training.data.example import Example
from training.data.visual_stores import ImageFolder, VideoFrameFolder
from training.metrics import answer_score
from training.synthetic_run import synthetic_tasks
from training.trainer import load_task_split

ADAPTER = "demo"


def ask(client: Client, task: str, example: Example, world: Path) -> str:
    """Send one example through the client's task method; returns the answer text."""
    spec = TASKS[task]
    question = example.text
    if spec.visual_input is VisualInput.VIDEO_FRAMES:
        frames = [p.read_bytes() for p in
                  VideoFrameFolder(world / "videos").frame_paths(example.visual_ids[0])]
        if spec.kind is TaskKind.MULTIPLE_CHOICE:
            reply = client.video_qa(frames, question, list(example.choices), ADAPTER,
                                    task=task, subtitles=example.subtitles)
        else:
            reply = client.video_caption(frames, ADAPTER, task=task,
                                         subtitles=example.subtitles)
        return reply.text  # a multiple-choice reply's text is the chosen option, in either form
    images = [ImageFolder(world / "images").image_path(v).read_bytes()
              for v in example.visual_ids]
    if task == "nlvr2":
        return client.nlvr2(images[0], images[1], question, ADAPTER).label
    if task == "caption":
        return client.caption(images[0], ADAPTER).text
    method = client.vqa if task == "vqa" else client.gqa
    return method(images[0], question, ADAPTER).text


def truth(example: Example) -> str:
    if TASKS[example.task].kind is TaskKind.MULTIPLE_CHOICE:
        return example.choices[example.label]
    return example.targets[0]


def exact(answer: str, example: Example) -> bool:
    """Whether `answer` scores in full by its task's metric (`answer_score`): the right
    option, VQA's best-scored answer (not another annotator's 0.3), or a caption repeating
    one of its references."""
    return answer_score(answer, example) == 1.0


def serve_and_ask(artifact: Path, backbone: Path, world: Path) -> None:
    """Publish `artifact`, start a server over `backbone`, answer one test example of each
    task the artifact has."""
    order = list(TASKS).index
    with tempfile.TemporaryDirectory() as registry_root:
        version = Registry(registry_root).publish(artifact, ADAPTER)
        config = ServeConfig(registry=registry_root, backbone=str(backbone), host="127.0.0.1",
                             port=0, load=(ADAPTER,))
        server = Server(config).start()
        print(f"== Serving adapter {ADAPTER}:{version} on 127.0.0.1:{server.port} ==")
        try:
            with Client(f"127.0.0.1:{server.port}") as client:
                right = 0
                tasks = json.loads((artifact / "manifest.json").read_text())["tasks"]
                for task, entry in synthetic_tasks(world, sorted(tasks, key=order)).items():
                    example = load_task_split(task, TaskData(**entry), "test")[0]
                    answer = ask(client, task, example, world)
                    right += exact(answer, example)
                    print(f"  [{task}] {example.source_text[:70]}")
                    print(f"      answer: {answer!r}   truth: {truth(example)!r}")
                print(f"  exact answers: {right}/{len(tasks)}")
        finally:
            server.stop(grace=5)
