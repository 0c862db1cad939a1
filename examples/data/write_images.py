"""Write the tiny images and video frames the example data files name, in the folder
structures of the datasets' releases (nothing binary is committed).

    python examples/data/write_images.py [OUT]     # OUT: default examples/data
    train-adapter data check --config examples/data/official.yaml
"""

from __future__ import annotations

import sys
from pathlib import Path

from PIL import Image

IMAGES = (
    # COCO: Karpathy's `filepath` folders, VQAv2's COCO_<subtype>_<image_id:012d>.jpg
    "official/coco/train2014/COCO_train2014_000000000009.jpg",
    "official/coco/train2014/COCO_train2014_000000000025.jpg",
    "official/coco/val2014/COCO_val2014_000000000042.jpg",
    "official/coco/val2014/COCO_val2014_000000000073.jpg",
    # GQA: one flat images/ folder
    "official/gqa/images/2354786.jpg",
    "official/gqa/images/n161313.jpg",
    # NLVR2: train images in numbered sub-folders, <identifier minus its last part>-img0/1
    "official/nlvr2/images/train/41/train-10171-0-img0.png",
    "official/nlvr2/images/train/41/train-10171-0-img1.png",
    "official/nlvr2/images/train/7/train-2-1-img0.png",
    "official/nlvr2/images/train/7/train-2-1-img1.png",
    # TVQA (and TVC): frames_hq/<show>_frames/<clip>/<frame>.jpg
    "official/tvqa/frames_hq/bbt_frames/s01e01_seg02_clip_17/00001.jpg",
    "official/tvqa/frames_hq/bbt_frames/s01e01_seg02_clip_17/00002.jpg",
    "official/tvqa/frames_hq/castle_frames/castle_s01e01_seg01_clip_00/00001.jpg",
    # How2QA: one frame folder per clip
    "official/how2qa/frames/-0BZvlfRf1M_52_112/0001.jpg",
    "official/how2qa/frames/zzH3AvVxM2s_0_60/0001.jpg",
    # YouCook2: frames extracted as raw_videos/ lays the videos out, <subset>/<recipe>/<video>/
    "official/yc2c/frames/training/113/GLd3aX16zBg/0001.jpg",
    "official/yc2c/frames/validation/201/xHr8X2Wpmno/0001.jpg",
)


def write_images(out: Path) -> list[Path]:
    """Write every file of ``IMAGES`` under ``out`` as an 8x8 image; the paths written."""
    written = []
    for number, relative in enumerate(IMAGES):
        path = out / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8), (40 * number % 256, 120, 200)).save(path)
        written.append(path)
    return written


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent
    print(f"{len(write_images(target))} images written under {target}")
