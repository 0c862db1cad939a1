"""`train-adapter`: train adapters, check their data, pre-train the benchmark backbone,
build a backbone from Hugging Face folders or a VL-T5 / VL-BART release
(`training.backbone_cli`), report parameters.

Every user error ends with one line `train-adapter: error: ...` and exit code 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from contextlib import nullcontext
from dataclasses import replace
from functools import partial
from pathlib import Path

from transformers.utils import logging as hf_logging

from modeling.cli_parser import OneLineParser, positive_int
from modeling.config import VIDEO_FEAT_DIM, TaskDoesNotFit
from modeling.families import backbone_config
from modeling.host_memory import keep_freed_memory
from modeling.params import report
from modeling.presets import METHOD_PRESETS, method_preset
from modeling.tasks import TASKS, VisualInput
from training.backbone_cli import add_backbone_commands
from training.config import RunConfig, TaskData, load_config

IMAGE_TASKS = tuple(n for n, t in TASKS.items() if t.visual_input != VisualInput.VIDEO_FRAMES)
VIDEO_TASKS = tuple(n for n, t in TASKS.items() if t.visual_input == VisualInput.VIDEO_FRAMES)


def _tasks(text: str) -> list[str]:
    tasks = [t.strip() for t in text.split(",") if t.strip()]
    unknown = sorted(set(tasks) - set(IMAGE_TASKS + VIDEO_TASKS))
    if not tasks or unknown:
        raise argparse.ArgumentTypeError(
            f"unknown task(s) {unknown or text!r}; expected a comma list of "
            f"{', '.join(IMAGE_TASKS + VIDEO_TASKS)}"
        )
    return tasks


def params_command(args: argparse.Namespace) -> int:
    """Trainable / total / percent, as VL-Adapter counts them (CLIP not counted), for a
    preset or a backbone folder."""
    config = backbone_config(args.backbone)
    video = [t for t in args.tasks if t in VIDEO_TASKS]
    if video and len(video) != len(args.tasks):
        raise ValueError(
            "image-text and video-text tasks use different visual features: report them separately"
        )
    if video:  # VL-Adapter's video-text models read one 512-d CLIP feature per frame
        config = config.with_features(VIDEO_FEAT_DIM)
    result = report(config, method_preset(args.preset), args.tasks)
    if args.json:
        print(json.dumps(result.to_dict()))
    else:
        print(f"backbone {args.backbone}, preset {args.preset}, tasks {','.join(args.tasks)}")
        print(f"trainable {result.trainable:,} / total {result.total:,} = {result.percent:.2f}%")
    return 0


def _run_config(args: argparse.Namespace) -> RunConfig:
    """The run config of ``--config``, with ``--steps`` in place of its steps when given."""
    config = load_config(args.config)
    return config if args.steps is None else replace(config, steps=args.steps)


def train_command(args: argparse.Namespace) -> int:
    """Train a run config; resumes from OUT/checkpoints/last when present."""
    from training.distributed import distributed_context
    from training.trainer import Trainer

    config = _run_config(args)
    with distributed_context(config.device):
        trainer = Trainer(config, args.out, show_progress=not args.quiet)
        results = trainer.run()
    for task, metrics in sorted(results.items()):
        shown = ", ".join(f"{k} {v:.2f}" for k, v in metrics.items() if "/" not in k)
        print(f"{task}: {shown}")
    for label, (path, what) in trainer.outputs().items():
        print(f"{label}: {path} ({what})")
    return 0


def _numbers(text: str, kind=float) -> list:
    try:
        values = [kind(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a comma list of numbers, got {text!r}") \
            from None
    if not values:
        raise argparse.ArgumentTypeError("expected at least one number")
    return values


def sweep_command(args: argparse.Namespace) -> int:
    """Data ratio x trainable-parameter size grid -> results.csv and PNG plots."""
    from training.sweep import DEFAULT_SIZES, run_sweep

    config = _run_config(args)
    sizes = {m: args.sizes or DEFAULT_SIZES.get(m, []) for m in args.methods}
    rows = run_sweep(config, args.out, args.methods, args.ratios, sizes)
    print(f"{len(rows)} runs; results in {Path(args.out) / 'results.csv'}")
    return 0


def _check_task(task: str, data: TaskData) -> int:
    """Print the findings of every split of one task; the number of problems."""
    from training.config import read_task_split
    from training.data.check import check_split, open_source

    source, reason = open_source(task, data.visual)
    shown = [f"{task}: visual: {reason}"] if reason is not None else []
    problems = len(shown)
    train_answers = None
    with source if source is not None else nullcontext():
        for split in ("train", "val", "test"):
            if getattr(data, split) is None:
                continue
            read = partial(read_task_split, task, data, split, one_per_caption=False)
            check = check_split(task, split, read, source, train_answers,
                                with_subtitles=data.subtitles is not None)
            if split == "train":
                train_answers = check.answers
            print(check.summary())
            shown += [f"{task}/{split}: {problem}" for problem in check.first_problems()]
            problems += len(check.problems)
    for problem in shown:
        print(f"train-adapter: error: {problem}", file=sys.stderr)
    return problems


def _unfit_tasks(config: RunConfig) -> int:
    """Print a line per task the run's backbone cannot run (`BackboneConfig.check_task_fits`:
    what `train` refuses first); the count. A backbone that cannot be read is `train`'s to
    report (this check reads its config alone)."""
    try:
        backbone = backbone_config(config.backbone)
    except (ValueError, OSError):
        return 0
    problems = 0
    for task in config.tasks:
        try:
            backbone.check_task_fits(TASKS[task])
        except TaskDoesNotFit as err:
            print(f"train-adapter: error: {task}: {err}", file=sys.stderr)
            problems += 1
    return problems


def data_check_command(args: argparse.Namespace) -> int:
    """Per task and split: records and format, visual ids found / missing, answer coverage;
    then the tasks the backbone cannot run; each problem one line on stderr, exit 2 when
    there is one."""
    config = load_config(args.config)
    problems = sum(_check_task(task, data) for task, data in config.tasks.items())
    problems += _unfit_tasks(config)
    print(f"data check: {problems} problem(s)" if problems else "data check: everything found")
    return 2 if problems else 0


def pretrain_settings(args: argparse.Namespace):
    """The `PretrainSettings` of a parsed `train-adapter pretrain` command line: its
    defaults where an option is not given."""
    from training.pretrain import PretrainSettings

    given = {"steps": args.steps, "batch_size": args.batch_size, "lr": args.lr,
             "seed": args.seed}
    return PretrainSettings(**{name: value for name, value in given.items() if value is not None})


def pretrain_command(args: argparse.Namespace) -> int:
    """Pre-train the benchmark backbone on a separate synthetic world (cached)."""
    from training.pretrain import pretrain, pretrain_command_line

    settings = pretrain_settings(args)
    pretrain(args.out, args.data, settings, show_progress=not args.quiet,
             command=pretrain_command_line(args.out, args.data, settings))
    print(f"backbone: {args.out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="train-adapter",
        description="Train parameter-efficient adapters on a frozen VL backbone.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    params = commands.add_parser("params", help="print trainable / total parameters")
    params.add_argument(
        "--backbone",
        default="vl-bart-base",
        help="backbone folder, or preset (tiny, tiny-bart, small, vl-t5-base, vl-bart-base)",
    )
    params.add_argument(
        "--preset",
        default="single_adapter",
        choices=sorted(METHOD_PRESETS),
        help="method preset (VL-Adapter's settings)",
    )
    params.add_argument(
        "--tasks", type=_tasks, default=list(IMAGE_TASKS), help="comma-separated tasks"
    )
    params.add_argument("--json", action="store_true", help="print one JSON object")
    params.set_defaults(run=params_command)
    train = commands.add_parser("train", help="train adapters from a YAML run config")
    train.add_argument("--config", required=True, help="run config (YAML)")
    train.add_argument("--out", required=True, help="output folder (resumes if it holds a run)")
    train.add_argument("--steps", type=positive_int, help="override the config's steps")
    train.add_argument("--quiet", action="store_true", help="no progress bar")
    train.set_defaults(run=train_command)
    sweep = commands.add_parser("sweep", help="data ratio x parameter size grid, CSV + plots")
    sweep.add_argument("--config", required=True, help="base run config (YAML)")
    sweep.add_argument("--out", required=True)
    sweep.add_argument("--methods", type=lambda t: [m for m in t.split(",") if m],
                       default=["prompt_tuning", "prefix_tuning", "lora", "adapter",
                                "parallel_adapter"])
    sweep.add_argument("--ratios", type=_numbers, default=[0.1, 0.4, 1.0])
    sweep.add_argument("--sizes", type=lambda t: _numbers(t, int),
                       help="one size grid for every method (default: per method)")
    sweep.add_argument("--steps", type=positive_int, help="override the config's steps")
    sweep.set_defaults(run=sweep_command)
    data = commands.add_parser("data", help="inspect a run config's data")
    data_commands = data.add_subparsers(dest="data_command", required=True)
    check = data_commands.add_parser(
        "check", help="per task and split: records, format, images / frames / features found "
                      "and missing, answer coverage; exit 2 when something is missing")
    check.add_argument("--config", required=True, help="run config (YAML)")
    check.set_defaults(run=data_check_command)
    pre = commands.add_parser("pretrain", help="pre-train the synthetic benchmark's backbone")
    pre.add_argument("--out", default="runs/backbone-small", help="backbone folder (reused)")
    pre.add_argument("--data", default="runs/data", help="where the synthetic worlds go")
    defaults = "default: training.pretrain.PretrainSettings"
    pre.add_argument("--steps", type=positive_int, help=defaults)
    pre.add_argument("--batch-size", type=positive_int, help=defaults)
    pre.add_argument("--lr", type=float, help=defaults)
    pre.add_argument("--seed", type=int, help=defaults)
    pre.add_argument("--quiet", action="store_true")
    pre.set_defaults(run=pretrain_command)
    add_backbone_commands(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    # Loading a local backbone is instant; Hugging Face's per-load progress bars are noise.
    hf_logging.disable_progress_bar()
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except (ValueError, FileNotFoundError, LookupError, NotADirectoryError) as err:
        print(f"train-adapter: error: {err}", file=sys.stderr)
        return 2


def process_main() -> int:
    """The `train-adapter` process: freed memory kept (each step's activations reused by
    the next, `modeling.host_memory`), then `main`. Tests call `main` and leave their own
    process as it is."""
    keep_freed_memory()
    return main()


if __name__ == "__main__":
    raise SystemExit(process_main())
