"""`train-adapter backbone build | info`: make a backbone folder from Hugging Face folders
of its parts, and report what a backbone holds.

    train-adapter backbone build --vision CLIP_DIR --lm T5_DIR --out BACKBONE_DIR
    train-adapter backbone info BACKBONE_DIR [--json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from modeling.families import vl
from modeling.families.info import describe, info_lines


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def build_command(args: argparse.Namespace) -> int:
    """Assemble, save to --out (which must not hold anything yet), print the fingerprint."""
    out = Path(args.out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ValueError(f"{out}: --out exists and is not an empty folder; nothing written")
    backbone = vl.build(Path(args.lm), vision=args.vision and Path(args.vision),
                        features=args.features, tokenizer=args.tokenizer and Path(args.tokenizer),
                        seed=args.seed, image_grid=args.image_grid, max_frames=args.max_frames)
    backbone.save_pretrained(out)
    print(f"backbone: {out}")
    print(f"fingerprint: {backbone.fingerprint()}")
    return 0


def info_command(args: argparse.Namespace) -> int:
    info = describe(args.backbone)
    print(json.dumps(info) if args.json else "\n".join(info_lines(info)))
    return 0


def add_backbone_commands(commands: argparse._SubParsersAction) -> None:
    """`backbone build` and `backbone info` under the train-adapter parser."""
    backbone = commands.add_parser("backbone", help="build a backbone from Hugging Face "
                                                    "folders; report what one holds")
    sub = backbone.add_subparsers(dest="backbone_command", required=True)
    build = sub.add_parser(
        "build", help="vision tower (or precomputed features) + new visual projection + LM")
    side = build.add_mutually_exclusive_group(required=True)
    side.add_argument("--vision", help="folder of a CLIPModel, CLIPVisionModel, SiglipModel "
                                       "or SiglipVisionModel")
    side.add_argument("--features", type=_positive,
                      help="width of precomputed features instead (VL-Adapter's CLIP RN101 "
                           "grid: 2048)")
    build.add_argument("--lm", required=True, help="folder of a T5, FLAN-T5 or BART model")
    build.add_argument("--out", required=True, help="the backbone folder to write (new)")
    build.add_argument("--tokenizer", help="tokenizer folder (default: the --lm folder)")
    build.add_argument("--seed", type=int, default=0, help="seed of the visual projection")
    build.add_argument("--image-grid", type=_positive,
                       help="pooled tokens per image side (default 6, VL-Adapter's 36 tokens; "
                            "at most the tower's patch grid)")
    build.add_argument("--max-frames", type=_positive, default=vl.DEFAULT_MAX_FRAMES,
                       help="video frames are pooled or padded to this many tokens")
    build.set_defaults(run=build_command)
    info = sub.add_parser("info", help="family, parts, tokenizer, parameters, fingerprint")
    info.add_argument("backbone", help="backbone folder or preset name")
    info.add_argument("--json", action="store_true", help="print one JSON object")
    info.set_defaults(run=info_command)
