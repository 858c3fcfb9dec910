#!/usr/bin/env python3
"""Seeded random square crops of a few photos, to get more evaluation images from them.

    python tools/make_eval_crops.py SRC_DIR OUT_DIR [--per-image 8] [--size 256] [--seed 0]

The validation set (docs/method.md, 'Data') has only six photos. For ``csa evaluate`` this writes
``--per-image`` crops of each: a square of side drawn uniformly from
[min(size, shorter side), shorter side] at a uniformly drawn position, resized (bicubic,
so only ever downscaled when the photo allows it) to ``size`` x ``size`` PNG, named
``<stem>_c<k>.png``. Crops of one photo overlap, so they are not independent samples:
say so next to any number measured on them. The same arguments give the same files.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from csa.imageio import read_image, save_image  # noqa: E402

SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff"}


def crops(img: Image.Image, n: int, size: int, rng: np.random.Generator) -> list[Image.Image]:
    w, h = img.size
    short = min(w, h)
    out = []
    for _ in range(n):
        side = int(rng.integers(min(size, short), short + 1))
        x = int(rng.integers(0, w - side + 1))
        y = int(rng.integers(0, h - side + 1))
        out.append(img.crop((x, y, x + side, y + side)).resize((size, size), Image.BICUBIC))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("src", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--per-image", type=int, default=8)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    files = sorted(p for p in a.src.iterdir() if p.suffix.lower() in SUFFIXES)
    if not files:
        sys.exit(f"no images in {a.src}")
    a.out.mkdir(parents=True, exist_ok=True)
    for i, f in enumerate(files):
        img = read_image(f).convert("RGB")
        rng = np.random.default_rng([a.seed, i])  # one stream per photo: adding one changes no other
        for k, crop in enumerate(crops(img, a.per_image, a.size, rng)):
            save_image(crop, a.out / f"{f.stem}_c{k}.png")
    print(f"wrote {len(files) * a.per_image} crops of {len(files)} photos to {a.out}")


if __name__ == "__main__":
    main()
