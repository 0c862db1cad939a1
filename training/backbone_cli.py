"""`train-adapter backbone build --from-vlt5 FILE.pth --lm DIR --out DIR`: a backbone folder
from a released VL-T5 / VL-BART checkpoint (`modeling.families.vlt5_import`).

The folder is written next to --out and renamed into place once complete, so an import
that fails leaves nothing behind; an existing non-empty --out is refused, never replaced.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

# Unused checkpoint keys listed by name on the report line; the rest are counted.
_LISTED_KEYS = 5


def add_backbone_commands(commands: argparse._SubParsersAction) -> None:
    """The `backbone` command group and its `build` subcommand."""
    backbone = commands.add_parser("backbone", help="build backbone folders")
    actions = backbone.add_subparsers(dest="backbone_command", required=True)
    build = actions.add_parser(
        "build", help="write a backbone folder (safetensors) from a released VL-T5 / VL-BART "
                      "checkpoint; prints its fingerprint")
    build.add_argument("--from-vlt5", dest="from_vlt5", metavar="FILE.pth",
                       help="VL-T5 / VL-BART state dict (.pth; loaded with weights_only=True)")
    build.add_argument("--lm", metavar="DIR", required=True,
                       help="Hugging Face folder of the checkpoint's LM (t5-base, bart-base): "
                            "its config and tokenizer")
    build.add_argument("--out", metavar="DIR", required=True, help="new backbone folder")
    build.set_defaults(run=build_command)


def build_command(args: argparse.Namespace) -> int:
    """Import the checkpoint, report what was used, write the folder, print the fingerprint."""
    from modeling.families.vlt5_import import import_vlt5

    if args.from_vlt5 is None:
        raise ValueError("backbone build needs --from-vlt5 FILE.pth")
    out = Path(args.out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ValueError(f"--out {out} exists and is not an empty folder; choose a new one")
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
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        backbone.save_pretrained(staging)
        if out.exists():
            out.rmdir()  # empty, checked above
        staging.rename(out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    print(f"wrote {out}")
    print(f"fingerprint {backbone.fingerprint()}")
    return 0
