"""How strongly fills carry a periodic grid: spectral peaks at a grid's harmonics inside the hole.

A decoder built from stride-2 transposed convolutions can lay a faint pattern locked to the
pixel grid over what it paints (a checkerboard at period 2, and coarser ones at 4, 8, 16:
one per upsampling step). Texture spreads its power over neighbouring frequencies; a grid
puts it in a few bins. For every pair this script takes the box of the hole (``csa.losses.hole_box``,
the same box for every method) and measures, for each period P, ``csa.losses.grid_ratio``: with
the box's mean removed and a 2-D Hann window applied, the power at the harmonics
(a N/P, b N/P) (not both 0) over the power two bins beside them, summed over the harmonics,
per channel (the first of the views the training term ``loss.grid`` penalises above 2). It prints the
median over the pairs, for the ground truth and for each method: about 1 for photographs,
far above for a grid. A last column gives ``csa.losses.peak_excess`` (narrow peaks at any
frequency, what ``loss.peak`` penalises beyond the truth's): about 0.1 for photographs. Run it on square holes (``centre:128``); on thin strokes the box is mostly known
pixels and the figure says little.

    .venv/bin/python tools/grid_spectrum.py /work/data/eval-crops --method csa --method smooth \
        [--method model.safetensors ...] [--masks centre:128] [--limit 100]

Methods are those of ``csa evaluate --method``.
"""
from __future__ import annotations

import argparse
import sys

import numpy as np
import torch

from csa.data import EvalPairs
from csa.errors import CsaError
from csa.evaluate import resolve_methods
from csa.losses import grid_ratio, hole_box, peak_excess

PERIODS = (2, 4, 8, 16)


def peak_ratios(region: np.ndarray, periods=PERIODS) -> dict:
    """``region``: float H x W x C. Period -> :func:`csa.losses.grid_ratio`, and "peaks" ->
    :func:`csa.losses.peak_excess`, each the mean over channels."""
    x = torch.from_numpy(np.ascontiguousarray(region.transpose(2, 0, 1), dtype=np.float64))
    h, w = x.shape[-2:]
    ratios: dict = {p: float(grid_ratio(x, p).mean()) for p in periods if h % p == 0 and w % p == 0}
    return ratios | {"peaks": float(peak_excess(x).mean())}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("images", help="folder of ground-truth images")
    parser.add_argument("--method", action="append", required=True, help="as csa evaluate --method; repeat it")
    parser.add_argument("--masks", default="centre:128", help="mask kind (default centre:128)")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--limit", type=int, default=None)
    args = parser.parse_args(argv)
    try:
        methods = resolve_methods(args.method)
        pairs = EvalPairs(args.images, args.masks, size=args.size, seed=args.seed, limit=args.limit)
        ratios: dict[str, list[dict[int, float]]] = {"ground truth": []} | {m: [] for m in methods}
        for _, image, hole in pairs:
            box = hole_box(torch.from_numpy(hole))
            if box is None:
                continue
            ratios["ground truth"].append(peak_ratios(image[box].astype(np.float64)))
            for label, fn in methods.items():
                filled = np.where(hole[:, :, None], fn(image, hole), image)
                ratios[label].append(peak_ratios(filled[box].astype(np.float64)))
    except CsaError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    periods = sorted({p for r in ratios["ground truth"] for p in r if p != "peaks"})
    print(f"median over {len(ratios['ground truth'])} pairs of harmonic / neighbouring power in the hole's box")
    print("| method | " + " | ".join(f"period {p}" for p in periods) + " | peaks |")
    print("|---|" + "---:|" * (len(periods) + 1))
    for label, rs in ratios.items():
        cells = [f"{np.median([r[p] for r in rs if p in r]):.1f}" for p in periods]
        cells.append(f"{np.median([r['peaks'] for r in rs]):.2f}")
        print(f"| {label} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
