"""``python -m training.synthetic OUT_DIR [--seed N] [--train N --val N --test N]
[--extra-video-train N]``."""

from __future__ import annotations

import sys
import time
from dataclasses import replace

from modeling.cli_parser import OneLineParser
from training.synthetic.generate import DEFAULT_SIZES, SplitSizes, generate


def main(argv: list[str] | None = None) -> int:
    """Generate the world and print one line per task file; returns the exit code (a bad
    size or an unwritable folder: one line on stderr and exit 2, as every CLI here)."""
    parser = OneLineParser(prog="python -m training.synthetic", description=__doc__)
    parser.add_argument("out_dir", help="folder to write the synthetic data into")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--train", type=int, help="scenes in train for every source (images, nlvr2, videos)"
    )
    parser.add_argument("--val", type=int, help="scenes per source in val")
    parser.add_argument("--test", type=int, help="scenes per source in test")
    parser.add_argument("--extra-video-train", type=int, default=0,
                        help="more train clips for the video tasks, drawn after the others: "
                        "every clip of the world without them stays as it is")
    args = parser.parse_args(argv)
    default = DEFAULT_SIZES["images"]
    started = time.perf_counter()
    try:
        sizes = SplitSizes(
            train=default.train if args.train is None else args.train,
            val=default.val if args.val is None else args.val,
            test=default.test if args.test is None else args.test,
        )
        uses_defaults = all(value is None for value in (args.train, args.val, args.test))
        per_source = dict(DEFAULT_SIZES) if uses_defaults else dict.fromkeys(DEFAULT_SIZES, sizes)
        per_source["videos"] = replace(per_source["videos"], extra_train=args.extra_video_train)
        paths = generate(args.out_dir, seed=args.seed, sizes=per_source)
    except (ValueError, OSError) as error:  # a size or the folder: the user's input
        parser.error(str(error))
    for task, split_paths in paths.items():
        print(f"{task:8s} " + "  ".join(f"{split}={path}" for split, path in split_paths.items()))
    print(f"done in {time.perf_counter() - started:.1f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
