#!/usr/bin/env python3
"""Training curves of a run: the generator's loss terms and validation scores by step.

    python tools/training_curves.py RUN_DIR -o docs/training-curves.png [--val VAL.csv] [--smooth 50]

RUN_DIR's ``scalars.jsonl`` (what ``csa train`` logs every ``train.log_every`` steps) gives the
top panel: each generator term that is present (L1 of both stages, perceptual, style, grid,
both adversarial terms), times its weight from the run's ``config.yaml``, as a running mean
over ``--smooth`` logged points. ``--val`` adds a bottom panel from a CSV with columns
``step,kind,lpips,kid`` (one row per evaluated checkpoint and mask kind).
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import numpy as np
import yaml

# term in scalars.jsonl -> the loss section key of the weight that multiplies it
TERMS = {"l1_refined": "l1", "l1_rough": "l1", "consistency": "consistency", "g_image": "gan_image",
         "g_feature": "gan_feature", "perceptual": "perceptual", "style": "style", "grid": "grid"}


def read_scalars(run: Path) -> list[dict]:
    path = run / "scalars.jsonl"
    if not path.is_file():
        sys.exit(f"error: {path} not found: give a run folder of csa train")
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def running_mean(values: np.ndarray, width: int) -> np.ndarray:
    if width <= 1 or len(values) < width:
        return values
    kernel = np.ones(width) / width
    return np.convolve(values, kernel, mode="valid")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("-o", "--output", type=Path, required=True)
    ap.add_argument("--val", type=Path, help="CSV with step,kind,lpips,kid")
    ap.add_argument("--smooth", type=int, default=20)
    args = ap.parse_args(argv)

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_scalars(args.run)
    loss_cfg = yaml.safe_load((args.run / "config.yaml").read_text(encoding="utf-8")).get("loss", {})
    panels = 2 if args.val else 1
    fig, axes = plt.subplots(panels, 1, figsize=(8, 3.6 * panels), squeeze=False)
    ax = axes[0][0]
    for term, weight_key in TERMS.items():
        points = [(r["step"], r[term]) for r in rows if term in r]
        weight = float(loss_cfg.get(weight_key, 1.0))
        if not points or weight == 0:
            continue
        steps, values = map(np.asarray, zip(*points))
        smooth = running_mean(values * weight, args.smooth)
        ax.plot(steps[len(steps) - len(smooth):], smooth, label=f"{weight:g} x {term}")
    ax.set_xlabel("step")
    ax.set_ylabel("weighted generator term")
    ax.set_yscale("log")
    ax.legend(fontsize=7, ncol=3)
    ax.set_title(f"{args.run.name}: generator terms (running mean of {args.smooth} logs)")
    if args.val:
        ax = axes[1][0]
        with open(args.val, newline="") as f:
            val = list(csv.DictReader(f))
        twin = ax.twinx()
        for kind, style in zip(sorted({r["kind"] for r in val}), ("-", "--")):
            pts = sorted((int(r["step"]), float(r["lpips"]), float(r["kid"])) for r in val if r["kind"] == kind)
            steps, lp, kid = map(np.asarray, zip(*pts))
            ax.plot(steps, lp, "o" + style, color="C0", label=f"LPIPS {kind}")
            twin.plot(steps, kid, "s" + style, color="C3", label=f"KID {kind}")
        ax.set_xlabel("step")
        ax.set_ylabel("LPIPS (alex) ↓", color="C0")
        twin.set_ylabel("KID ↓", color="C3")
        lines = ax.get_legend_handles_labels()[0] + twin.get_legend_handles_labels()[0]
        labels = ax.get_legend_handles_labels()[1] + twin.get_legend_handles_labels()[1]
        ax.legend(lines, labels, fontsize=7)
        ax.set_title("validation subset (98 pairs per mask kind)")
    fig.tight_layout()
    args.output.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.output.with_name(args.output.name + ".tmp.png")
    fig.savefig(tmp, dpi=110)
    tmp.replace(args.output)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
