"""`train-adapter backbone build | info`: make a backbone folder from Hugging Face folders of
its parts or from a released VL-T5 / VL-BART checkpoint, and report what a backbone holds.

    train-adapter backbone build --vision CLIP_DIR --lm T5_DIR --out BACKBONE_DIR
    train-adapter backbone build --from-vlt5 FILE.pth --lm DIR --out BACKBONE_DIR
    train-adapter backbone info BACKBONE_DIR [--json]

The folder is written next to --out and renamed into place once complete, so a build that
fails leaves nothing behind; an existing non-empty --out is refused, never replaced.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

from modeling.backbone import VLBackbone
from modeling.cli_parser import positive_int
from modeling.families import vl
from modeling.families.info import describe, info_lines

# Unused checkpoint keys listed by name on the report line; the rest are counted.
_LISTED_KEYS = 5


def build_command(args: argparse.Namespace) -> int:
    """Assemble, save to --out (which must not hold anything yet), print the fingerprint."""
    out = Path(args.out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ValueError(f"{out}: --out exists and is not an empty folder; nothing written")
    if args.from_vlt5 is not None:
        backbone = _import_release(args)
    else:
        backbone = vl.build(Path(args.lm), vision=args.vision and Path(args.vision),
                            features=args.features,
                            tokenizer=args.tokenizer and Path(args.tokenizer), seed=args.seed,
                            image_grid=args.image_grid, max_frames=args.max_frames)
    _save_into_place(backbone, out)
    print(f"backbone: {out}")
    print(f"fingerprint: {backbone.fingerprint()}")
    return 0


def _import_release(args: argparse.Namespace) -> VLBackbone:
    """The backbone of a VL-T5 / VL-BART `.pth`, with a report of what was used."""
    from modeling.families.vlt5_import import import_vlt5

    backbone, report = import_vlt5(args.from_vlt5, args.lm)
    family = "VL-T5" if backbone.config.lm_type == "t5" else "VL-BART"
    print(f"imported {args.from_vlt5}: {family}, {report.mapped} tensors mapped")
    if report.unmapped:
        names = ", ".join(report.unmapped[:_LISTED_KEYS])
        more = len(report.unmapped) - _LISTED_KEYS
        print(f"unmapped: {len(report.unmapped)} checkpoint key(s) not used: {names}"
              + (f" and {more} more" if more > 0 else ""))
    if report.tokenizer:
        print(f"tokenizer: from {args.lm}, {report.added_tokens} VL-T5 tokens added")
    else:
        print(f"tokenizer: none in {args.lm}; the backbone has no tokenizer")
    return backbone


def _save_into_place(backbone: VLBackbone, out: Path) -> None:
    """save_pretrained into a fresh sibling folder, then rename it to `out` (empty or absent)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        backbone.save_pretrained(staging)
        if out.exists():
            out.rmdir()  # empty, checked by the caller
        staging.rename(out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def info_command(args: argparse.Namespace) -> int:
    info = describe(args.backbone)
    print(json.dumps(info) if args.json else "\n".join(info_lines(info)))
    return 0


def add_backbone_commands(commands: argparse._SubParsersAction) -> None:
    """`backbone build` and `backbone info` under the train-adapter parser."""
    backbone = commands.add_parser("backbone", help="build a backbone from Hugging Face "
                                                    "folders or a VL-T5 / VL-BART release; "
                                                    "report what one holds")
    sub = backbone.add_subparsers(dest="backbone_command", required=True)
    build = sub.add_parser(
        "build", help="vision tower (or precomputed features) + new visual projection + LM, "
                      "or a released VL-T5 / VL-BART checkpoint; prints its fingerprint")
    side = build.add_mutually_exclusive_group(required=True)
    side.add_argument("--vision", help="folder of a CLIPModel, CLIPVisionModel, SiglipModel "
                                       "or SiglipVisionModel")
    side.add_argument("--features", type=positive_int,
                      help="width of precomputed features instead (VL-Adapter's CLIP RN101 "
                           "grid: 2048)")
    side.add_argument("--from-vlt5", dest="from_vlt5", metavar="FILE.pth",
                      help="VL-T5 / VL-BART state dict (.pth; loaded with weights_only=True)")
    build.add_argument("--lm", required=True, help="folder of a T5, FLAN-T5 or BART model "
                                                   "(with --from-vlt5: the checkpoint's LM, "
                                                   "t5-base or bart-base)")
    build.add_argument("--out", required=True, help="the backbone folder to write (new)")
    build.add_argument("--tokenizer", help="tokenizer folder (default: the --lm folder)")
    build.add_argument("--seed", type=int, default=0, help="seed of the visual projection")
    build.add_argument("--image-grid", type=positive_int,
                       help="pooled tokens per image side (default 6, VL-Adapter's 36 tokens; "
                            "at most the tower's patch grid)")
    build.add_argument("--max-frames", type=positive_int, default=vl.DEFAULT_MAX_FRAMES,
                       help="video frames are pooled or padded to this many tokens")
    build.set_defaults(run=build_command)
    info = sub.add_parser("info", help="family, parts, tokenizer, parameters, fingerprint")
    info.add_argument("backbone", help="backbone folder or preset name")
    info.add_argument("--json", action="store_true", help="print one JSON object")
    info.set_defaults(run=info_command)
