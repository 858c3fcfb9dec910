#!/usr/bin/env python3
"""The model card's picture of validation pairs: input with hole | csa | PatchMatch | original.

    python tools/quality_picture.py CROPS_DIR -o docs/quality-pairs.png [--weights FILE]
        [--licences PHOTOSET/licences.csv] [--rows 6] [--size 256] [--seed 0]

CROPS_DIR is the evaluation folder (``tools/make_eval_crops.py``). The pairs are exactly the
ones ``csa evaluate --images CROPS_DIR --masks centre:128`` / ``--masks freeform`` with the same
``--size`` and ``--seed`` scores (the same :class:`csa.data.EvalPairs`), ``--rows`` of each kind,
one crop each of photos spread evenly over the sorted list. Left block: centre 128 holes;
right block: free-form strokes. With ``--licences`` (the photo set's ``licences.csv``) it also
writes ``<output stem>-credits.md``: the author, licence and source of every photo shown.
"""
from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

KINDS = (("centre:128", "centre 128 x 128"), ("freeform", "free-form strokes"))
COLUMNS = ("input with hole", "csa", "PatchMatch", "original")
GAP, CAPTION = 4, 18


def pick(names: list[str], rows: int) -> list[int]:
    """Indices of ``rows`` crops, each of a different photo, spread evenly over the sorted names."""
    photos: dict[str, int] = {}
    for i, name in enumerate(names):
        photos.setdefault(name.rsplit("_c", 1)[0], i)
    first = list(photos.values())
    step = len(first) / rows
    return [first[int(k * step)] for k in range(rows)]


def block(pairs, indices, methods, title: str, size: int) -> tuple[Image.Image, list[str]]:
    width = len(COLUMNS) * size + (len(COLUMNS) - 1) * GAP
    sheet = Image.new("RGB", (width, 2 * CAPTION + len(indices) * (size + GAP)), "white")
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default(size=13)  # the scalable default: the bitmap one drops spaces
    draw.text((4, 2), title, fill="black", font=font)
    for c, label in enumerate(COLUMNS):
        draw.text((c * (size + GAP) + 4, CAPTION + 2), label, fill="black", font=font)
    shown = []
    for r, i in enumerate(indices):
        name, image, mask = pairs[i]
        hole = mask.astype(bool)
        with_hole = image.copy()
        with_hole[hole] = 255
        panels = [with_hole] + [fn(image, hole) for fn in methods] + [image]
        for c, panel in enumerate(panels):
            sheet.paste(Image.fromarray(np.asarray(panel, np.uint8)), (c * (size + GAP), 2 * CAPTION + r * (size + GAP)))
        shown.append(name)
    return sheet, shown


def credits(names: list[str], licences: Path) -> str:
    rows = {}
    with open(licences, newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            rows[Path(row["file"]).stem] = row
    lines = ["| crop | photo | author / copyright | licence | source |", "|---|---|---|---|---|"]
    for name in names:
        photo = name.rsplit("_c", 1)[0]
        row = rows.get(photo)
        if row is None:
            sys.exit(f"error: {photo} is not in {licences}")
        source = row["url"] or f"{row['source']} {row['version']}: {row['original']}"
        lines.append(f"| {name} | {row['file']} | {row['copyright']} | {row['licence']} | {source} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("crops", type=Path)
    ap.add_argument("-o", "--output", type=Path, required=True)
    ap.add_argument("--weights", help="a csa model file; default: the bundled model")
    ap.add_argument("--licences", type=Path)
    ap.add_argument("--rows", type=int, default=6)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    from csa.data import EvalPairs
    from csa.evaluate import resolve_method

    methods = [resolve_method(args.weights or "csa")[1], resolve_method("patchmatch")[1]]
    sheets, names = [], []
    for kind, title in KINDS:
        pairs = EvalPairs(args.crops, kind, size=args.size, seed=args.seed)
        indices = pick(pairs.names, args.rows)
        sheet, shown = block(pairs, indices, methods, title, args.size)
        sheets.append(sheet)
        names += shown
    out = Image.new("RGB", (sum(s.width for s in sheets) + 4 * GAP, max(s.height for s in sheets)), "white")
    out.paste(sheets[0], (0, 0))
    out.paste(sheets[1], (sheets[0].width + 4 * GAP, 0))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.output.with_name(args.output.name + ".tmp")
    out.save(tmp, format="PNG", optimize=True)
    tmp.replace(args.output)
    print(f"wrote {args.output} ({len(names)} pairs)")
    if args.licences:
        path = args.output.with_name(args.output.stem + "-credits.md")
        path.write_text("# Photos in " + args.output.name + "\n\n" + credits(names, args.licences), encoding="utf-8")
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
