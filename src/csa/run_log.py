"""What a training run reports: tqdm progress (or plain lines in a log file), TensorBoard
scalars and image grids, and scalars.jsonl, all from rank 0."""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional, Sequence

import torch
from torch import Tensor

from .run_folder import SCALARS_FILE, TENSORBOARD_DIR, truncate_scalars

_SHOWN = ("g_total", "l1_refined", "consistency", "d_total")  # the losses on the progress line


def image_grid(rows: Sequence[Sequence[Tensor]]) -> Tensor:
    """3 x (R*H) x (C*W) image in [0, 1] from rows of 3 x H x W tensors in [-1, 1] (a 2-px white gap)."""
    gap = 2
    out_rows = []
    for row in rows:
        cells = []
        for t in row:
            cells += [((t.float().clamp(-1, 1) + 1) / 2).cpu(), torch.ones(3, t.shape[1], gap)]
        out_rows += [torch.cat(cells[:-1], 2)]
        out_rows += [torch.ones(3, gap, out_rows[-1].shape[2])]
    return torch.cat(out_rows[:-1], 1)


def tb_tag(key: str) -> str:
    """The TensorBoard tag of a scalar: discriminator losses, generator losses, or train/ figures."""
    if key.startswith("d_"):
        return f"loss_D/{key}"
    if key in ("lr", "sec_per_step", "images_per_sec"):
        return f"train/{key}"
    return f"loss_G/{key}"


class RunLog:
    """tqdm progress, TensorBoard and scalars.jsonl for rank 0; does nothing on other ranks."""

    def __init__(self, run_dir: Optional[Path], enabled: bool, start_step: int, total: int, progress: bool) -> None:
        self.enabled = enabled and run_dir is not None
        self.start_step = start_step
        self.writer = None
        self.jsonl = None
        self.bar = None
        self.lines = False
        if not self.enabled:
            return
        assert run_dir is not None
        truncate_scalars(run_dir, start_step)  # a resumed run rewrites what came after its checkpoint
        self.jsonl = open(run_dir / SCALARS_FILE, "a", encoding="utf-8")
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(run_dir / TENSORBOARD_DIR), purge_step=start_step + 1 if start_step else None)
        self.total = total
        # A bar on a terminal; in a log file (a background run) one plain line per logged step.
        self.lines = progress and not sys.stderr.isatty()
        if progress and not self.lines:
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=start_step, unit="step", dynamic_ncols=True, file=sys.stderr,
                            smoothing=0.05)

    def say(self, text: str) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.write(text, file=sys.stderr)
        else:
            print(text, file=sys.stderr, flush=True)

    def step(self, terms: dict[str, float]) -> None:
        if self.bar is not None:
            short = {k: terms[k] for k in _SHOWN if k in terms}
            self.bar.set_postfix({k: f"{v:.4g}" for k, v in short.items()}, refresh=False)
            self.bar.update(1)

    def scalars(self, step: int, values: dict[str, float]) -> None:
        if not self.enabled:
            return
        assert self.writer is not None and self.jsonl is not None
        for key, value in values.items():
            if key not in ("step", "epoch"):
                self.writer.add_scalar(tb_tag(key), value, step)
        self.jsonl.write(json.dumps({"step": step, **values}, sort_keys=False) + "\n")
        self.jsonl.flush()
        if self.lines:
            shown = " ".join(f"{k}={values[k]:.4g}" for k in _SHOWN if k in values)
            print(f"step {step}/{self.total} epoch {values.get('epoch', 0)} lr {values.get('lr', 0):.3g} "
                  f"{values.get('sec_per_step', 0):.2f} s/step {shown}", file=sys.stderr, flush=True)

    def images(self, step: int, grid: Tensor) -> None:
        if self.enabled and self.writer is not None:
            self.writer.add_image("samples/input_rough_refined_truth", grid, step)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.writer is not None:
            self.writer.close()
        if self.jsonl is not None:
            self.jsonl.close()
