"""`adapter-serve export-onnx`: write the backbone's vision tower to one ONNX file.

    adapter-serve export-onnx --backbone PATH|PRESET --out clip_vision.onnx [--opset N]
    python -m serving.onnx_export --backbone tiny --out clip_vision.onnx

The file computes pixels [batch, 3, H, W] -> features [batch, tokens_per_image, feat_dim]
(input "PIXELS", output "FEATURES", dynamic batch), the same as `encode_images`, for every
family: CLIP / SigLIP (tower, CLS dropped, max-pooled to the grid), Florence-2 (DaViT +
projector: its image tokens), BLIP (every ViT state). Serve it with `--vision-backend
onnxruntime --onnx-path FILE` or from a Triton model repository.
Exit codes: 0 written and checked, 2 a bad backbone or output path (one line on stderr).
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import TYPE_CHECKING

from modeling.cli_parser import OneLineParser

if TYPE_CHECKING:
    from modeling.backbone import VLBackbone


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="adapter-serve export-onnx",
        description="Export the frozen vision tower (what encode_images computes) to ONNX.")
    parser.add_argument("--backbone", required=True,
                        help="a backbone folder of any family (built, Florence-2, BLIP) or a "
                             "preset name")
    parser.add_argument("--out", required=True, help="the .onnx file to write")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of a preset backbone's random weights (as adapter-serve)")
    parser.add_argument("--opset", type=int, default=None, help="ONNX opset (exporter default)")
    return parser


def load_backbone(spec: str, seed: int = 0) -> VLBackbone:
    """A backbone folder, or a preset name (random weights, seeded); no tokenizer needed."""
    from modeling.families import load_backbone as load_any_backbone

    return load_any_backbone(spec, seed=seed)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from serving.vision_backends import export_vision_onnx  # torch after --help

    try:
        backbone = load_backbone(args.backbone, args.seed)
        out = export_vision_onnx(backbone, args.out, opset=args.opset)
    except (ValueError, OSError) as exc:
        print(f"adapter-serve export-onnx: error: {exc}", file=sys.stderr)
        return 2
    vision = backbone.config.vision
    print(f"wrote {out} ({out.stat().st_size / 2**20:.1f} MiB): PIXELS [batch, 3, "
          f"{vision.image_size}, {vision.image_size}] -> FEATURES [batch, "
          f"{backbone.tokens_per_image}, {backbone.config.feat_dim}]")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
