"""`train-adapter`: parameter reports now; training, sweeps and pre-training come next.

Every user error ends with one line `train-adapter: error: ...` and exit code 2.
"""

from __future__ import annotations

import argparse
import json
import sys

from modeling.config import VIDEO_FEAT_DIM, preset
from modeling.params import report
from modeling.presets import METHOD_PRESETS, method_preset
from training.tasks import TASKS, VisualInput

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
    """Trainable / total / percent, as VL-Adapter counts them (CLIP not counted)."""
    config = preset(args.backbone)
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="train-adapter",
        description="Train parameter-efficient adapters on a frozen VL backbone.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    params = commands.add_parser("params", help="print trainable / total parameters")
    params.add_argument(
        "--backbone",
        default="vl-bart-base",
        help="backbone preset (tiny, tiny-bart, small, vl-t5-base, vl-bart-base)",
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
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except ValueError as err:
        print(f"train-adapter: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
