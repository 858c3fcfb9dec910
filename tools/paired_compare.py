#!/usr/bin/env python3
"""Paired comparison of two methods from a ``csa evaluate`` run's ``per_image.csv``.

    python tools/paired_compare.py RUN/per_image.csv --method csa --against ns [--metric l1_hole]
        [--group-sep _c] [--draws 2000] [--seed 0] [--features RUN/features.npz]

Prints, per metric: both means, the mean difference (method - against), on how many pairs
the method is better (lower for L1/L2/LPIPS/TV-free metrics, higher for PSNR/SSIM), and a
95% bootstrap interval of the mean difference that resamples whole source photos, not
pairs: crops of one photo (``tools/make_eval_crops.py`` names them ``<photo>_c<k>``)
overlap and are not independent. The photo is the image name up to the last
``--group-sep``; with no separator in a name, each image is its own group.

With ``--features`` (the ``features.npz`` a ``csa evaluate`` run writes when it computes
FID/KID) it adds a KID row per comparison: both KIDs, their difference and a 95% interval
from the same photo resampling, each draw recomputing both KIDs from the cached Inception
features (:func:`csa.perceptual.kid_difference_bootstrap`). KID is a set statistic, so the
"better on" column is empty there.
"""
from __future__ import annotations

import argparse
import csv
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

HIGHER_IS_BETTER = {"psnr", "psnr_hole", "ssim"}


def read_scores(path: Path, metric: str) -> dict[str, dict[str, float]]:
    """image -> method -> score."""
    scores: dict[str, dict[str, float]] = defaultdict(dict)
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            if metric not in row:
                sys.exit(f"error: {path} has no column {metric!r}; columns: {', '.join(row)}")
            scores[row["image"]][row["method"]] = float(row[metric])
    return scores


def compare(scores: dict[str, dict[str, float]], method: str, against: str, metric: str,
            group_sep: str, draws: int, seed: int) -> dict[str, float]:
    images = [k for k, v in scores.items() if method in v and against in v]
    if not images:
        sys.exit(f"error: no image has scores for both {method!r} and {against!r}")
    from csa.perceptual import photo_groups

    diff = np.array([scores[k][method] - scores[k][against] for k in images])
    sign = 1.0 if metric in HIGHER_IS_BETTER else -1.0
    members = photo_groups(images, group_sep)
    rng = np.random.default_rng(seed)
    means = np.empty(draws)
    for d in range(draws):
        picked = rng.integers(len(members), size=len(members))
        means[d] = diff[np.concatenate([members[p] for p in picked])].mean()
    return {
        "pairs": len(images), "groups": len(members),
        "method_mean": float(np.mean([scores[k][method] for k in images])),
        "against_mean": float(np.mean([scores[k][against] for k in images])),
        "mean_diff": float(diff.mean()), "better": int((sign * diff > 0).sum()),
        "ci_low": float(np.quantile(means, 0.025)), "ci_high": float(np.quantile(means, 0.975)),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("csv", type=Path)
    ap.add_argument("--method", required=True)
    ap.add_argument("--against", required=True, action="append", help="repeat to compare with several")
    ap.add_argument("--metric", action="append", help="default: l1_hole and psnr_hole")
    ap.add_argument("--group-sep", default="_c")
    ap.add_argument("--draws", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--features", type=Path, help="RUN/features.npz: add KID rows with photo-resampled intervals")
    args = ap.parse_args(argv)
    if not args.csv.is_file():
        sys.exit(f"error: {args.csv} not found: give a csa evaluate run's per_image.csv")
    print("| metric | method | against | pairs | photos | method mean | against mean | mean diff | method better on | 95% interval (photos resampled) |")
    print("|---|---|---|---:|---:|---:|---:|---:|---:|---|")
    for metric in args.metric or ["l1_hole", "psnr_hole"]:
        scores = read_scores(args.csv, metric)
        for against in args.against:
            r = compare(scores, args.method, against, metric, args.group_sep, args.draws, args.seed)
            print(f"| {metric} | {args.method} | {against} | {r['pairs']} | {r['groups']} | {r['method_mean']:.4f} | "
                  f"{r['against_mean']:.4f} | {r['mean_diff']:+.4f} | {r['better']} | "
                  f"[{r['ci_low']:+.4f}, {r['ci_high']:+.4f}] |")
    if args.features is not None:
        for against in args.against:
            r = compare_kid(args.features, args.method, against, args.group_sep, args.draws, args.seed)
            print(f"| kid | {args.method} | {against} | {r['images']} | {r['groups']} | {r['kid_a']:.5f} | "
                  f"{r['kid_b']:.5f} | {r['diff']:+.5f} | – | [{r['ci_low']:+.5f}, {r['ci_high']:+.5f}] |")
    return 0


def compare_kid(features: Path, method: str, against: str, group_sep: str, draws: int, seed: int) -> dict[str, float]:
    """KID(method) - KID(against) from a run's features.npz, photos resampled."""
    from csa.errors import CsaError
    from csa.perceptual import kid_difference_bootstrap, load_features

    try:
        names, real, fakes = load_features(features)
    except CsaError as exc:
        sys.exit(f"error: {exc}")
    for label in (method, against):
        if label not in fakes:
            sys.exit(f"error: {features} has no features of {label!r}; it has {', '.join(fakes)}")
    return kid_difference_bootstrap(real, fakes[method], fakes[against], names, group_sep=group_sep, draws=draws, seed=seed)


if __name__ == "__main__":
    sys.exit(main())
