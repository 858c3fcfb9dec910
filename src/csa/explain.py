"""Where each filled region came from: the CSA layer's choices mapped back onto the input image.

For every hole cell of the refine encoder's feature map (8 x 8 pixels of the model's input)
the CSA layer picks one known cell (its search's argmax) and blends it, with weight b, into
the generate recurrence (:class:`csa.nn.attention.CsaSources`). :class:`Explanation` maps
those cells through the strategy that ran (``resize``, ``crop`` regions, ``native``; see
:mod:`csa.pipeline`) into the input image's pixel coordinates. It is the layer's choice per
cell, not pixel-exact provenance: the rough stage, the decoder and the skip connections shape
every pixel too.

Arrays (what ``csa inpaint --explain MAP.png`` writes to ``MAP.npz``):

- ``sources`` H x W x 2 int32, (row, column) in the input image of the centre of the source
  cell of each hole pixel; -1 outside the hole; -2 for hole pixels whose cell counts as known
  at feature resolution (filled by convolution only). Sources in mirror padding are mapped to
  the pixel they mirror, inside the image.
- ``dominant`` the same for the dominant source (the largest weight in the recurrence's
  affine combination for that cell's output).
- ``blend`` H x W float32: b of the pixel's cell; NaN where ``sources`` is negative.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from PIL import Image, ImageDraw

from .errors import CsaError
from .padding import pad_mirror

#: Each feature cell covers this many model-input pixels per side (three stride-2 convolutions).
CELL = 8
OUTSIDE, KNOWN_CELL = -1, -2


@dataclass
class Frame:
    """One model run: which image pixels it filled and how its input canvas maps onto the image.

    ``box`` (top, left, bottom, right) is the image region the run saw, scaled to ``fit``
    (rows, cols) and placed at ``offset`` (top, left) in the canvas (mirror padding around it).
    ``cells`` (Hf x Wf int64) is the chosen known cell per hole cell (raster index, -1 known),
    ``dominant`` likewise, ``blend`` (Hf x Wf float32) b per cell.
    """

    box: tuple[int, int, int, int]
    fit: tuple[int, int]
    offset: tuple[int, int]
    canvas: tuple[int, int]
    cells: np.ndarray
    dominant: np.ndarray
    blend: np.ndarray

    def to_json(self) -> dict[str, Any]:
        return {
            "box": list(self.box), "fit": list(self.fit), "offset": list(self.offset),
            "canvas": list(self.canvas), "cell": CELL, "grid": list(self.cells.shape),
            "cells": self.cells.flatten().tolist(),
        }


def frame_from_layer(
    sources: Any, box: tuple[int, int, int, int], fit: tuple[int, int], offset: tuple[int, int],
    canvas: tuple[int, int],
) -> Frame:
    """A :class:`Frame` from the layer's :class:`csa.nn.attention.CsaSources` (sample 0)."""
    hf, wf = sources.size
    return Frame(
        box, fit, offset, canvas,
        sources.source[0].cpu().numpy().reshape(hf, wf),
        sources.dominant[0].cpu().numpy().reshape(hf, wf),
        sources.blend[0].float().cpu().numpy().reshape(hf, wf),
    )


def _mirror_map(fit: int, before: int, after: int) -> np.ndarray:
    """For each canvas index along one side, the fit index it shows (the inference code's padding)."""
    # Two columns: pad_mirror replicates (rather than reflects) a one-pixel-wide image.
    idx = torch.arange(fit, dtype=torch.float64)[None, None, :, None].expand(1, 1, fit, 2)
    return pad_mirror(idx, before, after, 0, 0)[0, 0, :, 0].numpy()


def _axis(frame: Frame, axis: int) -> tuple[np.ndarray, float, float]:
    """Per canvas index: image coordinate (float) along ``axis``; plus scale and start of the box."""
    start, stop = frame.box[axis], frame.box[axis + 2]
    fit, off, size = frame.fit[axis], frame.offset[axis], frame.canvas[axis]
    fit_idx = _mirror_map(fit, off, size - fit - off)
    scale = (stop - start) / fit
    return start + (fit_idx + 0.5) * scale - 0.5, scale, start


def _cell_centres(frame: Frame, axis: int) -> np.ndarray:
    """Image coordinate (rounded, inside the box) of each cell's centre along ``axis``."""
    coord, _, _ = _axis(frame, axis)
    n = frame.cells.shape[axis]
    lo, hi = coord[np.arange(n) * CELL + CELL // 2 - 1], coord[np.arange(n) * CELL + CELL // 2]
    centre = (lo + hi) / 2  # in mirror padding both pixels map inside, so the centre does too
    return np.clip(np.rint(centre), frame.box[axis], frame.box[axis + 2] - 1).astype(np.int64)


def _pixel_cells(frame: Frame, axis: int, pixels: np.ndarray) -> np.ndarray:
    """Cell index along ``axis`` of image pixel coordinates ``pixels`` inside the box."""
    _, scale, start = _axis(frame, axis)
    canvas = frame.offset[axis] + (pixels - start + 0.5) / scale - 0.5
    px = np.clip(np.floor(canvas + 0.5), 0, frame.canvas[axis] - 1).astype(np.int64)
    return np.clip(px // CELL, 0, frame.cells.shape[axis] - 1)


@dataclass
class Explanation:
    """The result's provenance map (see the module docstring for the arrays' meaning)."""

    sources: np.ndarray  # H x W x 2 int32
    dominant: np.ndarray  # H x W x 2 int32
    blend: np.ndarray  # H x W float32
    image: np.ndarray  # the input image, H x W x C
    result: np.ndarray  # the completed image, H x W x C
    hole: np.ndarray  # H x W bool
    strategy: str
    frames: list[Frame] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """The compact form (feature-resolution cell maps plus each frame's geometry)."""
        return {"strategy": self.strategy, "size": list(self.hole.shape), "cell": CELL,
                "frames": [f.to_json() for f in self.frames]}

    def save_npz(self, path: Any) -> None:
        """``sources``, ``dominant`` and ``blend`` in one compressed .npz, written atomically."""
        from .imageio import atomic_write

        def write(tmp: str) -> None:
            with open(tmp, "wb") as f:  # a file object: np.savez would append .npz to a name
                np.savez_compressed(f, sources=self.sources, dominant=self.dominant, blend=self.blend)

        atomic_write(path, write)

    def save(self, picture_path: Any) -> tuple[Path, Path]:
        """``MAP.png`` (the picture) and ``MAP.npz`` next to it; returns both paths."""
        from .imageio import atomic_write

        picture_path = Path(picture_path)
        npz = picture_path.with_suffix(".npz")
        img = self.picture()
        atomic_write(picture_path, lambda tmp: img.save(tmp, format="PNG"))
        self.save_npz(npz)
        return picture_path, npz

    def picture(self, arrows: int = 24, seed: int = 0, scale: int = 0) -> Image.Image:
        """The result in grey with every pixel tinted by a colour of its position; hole pixels
        take the colour of the position their content came from. Arrows run from a sample of
        hole pixels (black dot) to their sources (white ring). ``scale``: an integer
        enlargement (0: 2 for images under 512 pixels, else 1), so small images stay readable."""
        h, w = self.hole.shape
        scale = scale or (2 if max(h, w) < 512 else 1)
        rgb = _rgb8(self.result)
        grey = rgb.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
        rows, cols = np.mgrid[0:h, 0:w]
        own = _position_colours(rows, cols, h, w)
        picked = self.sources[..., 0] >= 0
        src = np.where(picked[..., None], self.sources, 0)
        came = _position_colours(src[..., 0], src[..., 1], h, w)
        out = 0.55 * grey[..., None] + 0.45 * own * 255.0  # known: a faint tint of its own place
        out[picked] = 0.15 * grey[picked][:, None] + 0.85 * came[picked] * 255.0
        out[self.hole & ~picked] = 0.5 * grey[self.hole & ~picked][:, None] + 64.0  # -2: grey
        edge = np.zeros_like(self.hole)
        edge[1:, :] |= self.hole[1:, :] != self.hole[:-1, :]
        edge[:, 1:] |= self.hole[:, 1:] != self.hole[:, :-1]
        out[edge] = 0.0  # the hole's outline
        img = Image.fromarray(np.clip(out, 0, 255).astype(np.uint8))
        if scale > 1:
            img = img.resize((w * scale, h * scale), Image.Resampling.NEAREST)
        draw = ImageDraw.Draw(img)
        ys, xs = np.nonzero(picked)
        if len(ys):
            rng = np.random.default_rng(seed)
            take = rng.choice(len(ys), size=min(arrows, len(ys)), replace=False)
            width = max(1, round(max(h, w) * scale / 400))
            for k in take:
                y0, x0 = int(ys[k]), int(xs[k])
                y1, x1 = (int(v) for v in self.sources[y0, x0])
                y0, x0, y1, x1 = (v * scale + scale // 2 for v in (y0, x0, y1, x1))
                draw.line([(x0, y0), (x1, y1)], fill=(255, 255, 255), width=width)
                r = 2 * width + 1
                draw.ellipse([x1 - r, y1 - r, x1 + r, y1 + r], outline=(255, 255, 255), width=width)
                draw.ellipse([x0 - width, y0 - width, x0 + width, y0 + width], fill=(0, 0, 0))
        return img


def _rgb8(arr: np.ndarray) -> np.ndarray:
    from .imageio import array_to_8bit

    a = arr if arr.ndim == 3 else arr[:, :, None]
    colour = a[:, :, :3] if a.shape[2] >= 3 else np.repeat(a[:, :, :1], 3, axis=2)
    return np.asarray(array_to_8bit(np.ascontiguousarray(colour)))


def _position_colours(rows: np.ndarray, cols: np.ndarray, h: int, w: int) -> np.ndarray:
    """A colour per image position: hue by angle around the centre, saturation by distance."""
    dy = (rows + 0.5) / h - 0.5
    dx = (cols + 0.5) / w - 0.5
    hue = (np.arctan2(dy, dx) / (2 * np.pi)) % 1.0
    sat = np.clip(np.hypot(dx, dy) / 0.5, 0.25, 1.0)
    hsv = np.stack([hue, sat, np.ones_like(hue)], axis=-1).reshape(-1, 3)
    rgb = _hsv_to_rgb(hsv)
    return rgb.reshape(*rows.shape, 3).astype(np.float32)


def _hsv_to_rgb(hsv: np.ndarray) -> np.ndarray:
    """Vectorised HSV to RGB (all in [0, 1])."""
    hue, sat, val = hsv[:, 0], hsv[:, 1], hsv[:, 2]
    i = np.floor(hue * 6).astype(int) % 6
    f = hue * 6 - np.floor(hue * 6)
    p, q, t = val * (1 - sat), val * (1 - f * sat), val * (1 - (1 - f) * sat)
    table = np.stack([
        np.stack([val, t, p], 1), np.stack([q, val, p], 1), np.stack([p, val, t], 1),
        np.stack([p, q, val], 1), np.stack([t, p, val], 1), np.stack([val, p, q], 1),
    ], 0)
    return table[i, np.arange(len(i))]


def build(
    image: np.ndarray, result: np.ndarray, hole: np.ndarray, strategy: str, frames: list[Frame]
) -> Explanation:
    """Map every frame's cells onto the image's hole pixels."""
    h, w = hole.shape
    sources = np.full((h, w, 2), OUTSIDE, np.int32)
    dominant = np.full((h, w, 2), OUTSIDE, np.int32)
    blend = np.full((h, w), np.nan, np.float32)
    for frame in frames:
        top, left, bottom, right = frame.box
        ys, xs = np.nonzero(hole[top:bottom, left:right])
        ys, xs = ys + top, xs + left
        cy, cx = _pixel_cells(frame, 0, ys), _pixel_cells(frame, 1, xs)
        centre_r, centre_c = _cell_centres(frame, 0), _cell_centres(frame, 1)
        wf = frame.cells.shape[1]
        for target, cells in ((sources, frame.cells), (dominant, frame.dominant)):
            chosen = cells[cy, cx]
            ok = chosen >= 0
            target[ys, xs] = KNOWN_CELL
            target[ys[ok], xs[ok], 0] = centre_r[chosen[ok] // wf]
            target[ys[ok], xs[ok], 1] = centre_c[chosen[ok] % wf]
        ok = frame.cells[cy, cx] >= 0
        blend[ys[ok], xs[ok]] = frame.blend[cy, cx][ok]
    return Explanation(sources, dominant, blend, image, result, hole, strategy, frames)


def check_map_path(path: Any) -> Path:
    """The picture's path must end in .png (the .npz goes next to it)."""
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise CsaError(f"--explain {path}: name the picture with .png (MAP.png; MAP.npz is written next to it)")
    return path


def refuse(name: str, why: Optional[str] = None) -> CsaError:
    return CsaError(
        f"--explain needs the CSA layer's choices, which {name} does not have"
        + (f" ({why})" if why else "")
        + ": use --method csa with a .safetensors model"
    )
