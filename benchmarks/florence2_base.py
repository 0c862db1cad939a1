"""Write a Florence-2-base-sized model with random weights: a folder the benchmarks take.

    python -m benchmarks.florence2_base --out DIR [--size base|tiny] [--seed 0]
    python -m benchmarks.peft_baselines --backbone DIR --clock cpu

No weights can be downloaded here, and speed depends on the shapes, not the values: the
folder is `Florence2ForConditionalGeneration` built from `florence2_sizes.sized_config("base")`
(Florence-2-base's public config.json: DaViT widths 128/256/512/1024, depths 1/1/9/1,
projector to 768; BART-base, 6 + 6 layers of 768, 51289 tokens) at 768 px, seeded random
weights, saved as a fine-tuned checkpoint is (`florence2_sizes.write_random`: config.json,
model.safetensors, preprocessor_config.json; about 0.9 GB for base). `--size tiny` writes
the test size. Exit 2 with one line when DIR already holds files.
"""

from __future__ import annotations

import sys
from pathlib import Path

from modeling.cli_parser import OneLineParser

# The processors' image side per size (Florence-2-base: 768 px -> 577 image tokens).
IMAGE_SIZE = {"base": 768, "tiny": 32}


def main(argv: list[str] | None = None) -> int:
    parser = OneLineParser(prog="python -m benchmarks.florence2_base",
                           description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="the folder to write (new or empty)")
    parser.add_argument("--size", choices=sorted(IMAGE_SIZE), default="base")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    out = Path(args.out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        print(f"{parser.prog}: error: --out {out} already holds files", file=sys.stderr)
        return 2
    from benchmarks.florence2_sizes import sized_config, write_random  # torch after --help
    from modeling.families import florence2

    write_random(out, sized_config(args.size), IMAGE_SIZE[args.size], seed=args.seed)
    backbone = florence2.config(out)
    print(f"wrote {out}: Florence-2 {args.size} ({IMAGE_SIZE[args.size]} px), BART "
          f"d_model {backbone.d_model}, {backbone.lm['encoder_layers']} + "
          f"{backbone.lm['decoder_layers']} layers, vocabulary {backbone.lm['vocab_size']}")
    return 0


if __name__ == "__main__":
    from benchmarks.common import as_process

    raise SystemExit(as_process(main))
