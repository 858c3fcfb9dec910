"""Synthetic flat and gently shaded scenes with a known background under the hole.

Each scene is a 256 x 256 RGB uint8 photo-like background (a grey road with grain, a white
table, a sky gradient), a dark object beside the hole whose colour must not leak into the
fill, and a hole: an object-sized block or thin (4-6 px) strokes. What was under the hole is
the background itself, so the fill's mean colour can be checked against it.
"""
from __future__ import annotations

from typing import NamedTuple

import cv2
import numpy as np

SIDE = 256


class Scene(NamedTuple):
    name: str
    image: np.ndarray  # H x W x 3 uint8, the truth (background and the dark object)
    hole: np.ndarray  # H x W bool


def _road(rng: np.random.Generator) -> np.ndarray:
    grain = rng.normal(0.0, 5.0, (SIDE, SIDE, 1))
    return np.clip(np.array([108.0, 108.0, 112.0]) + grain, 0, 255)


def _table(rng: np.random.Generator) -> np.ndarray:
    grain = rng.normal(0.0, 1.5, (SIDE, SIDE, 1))
    shade = np.linspace(-4.0, 4.0, SIDE)[None, :, None]  # light falling off across the table
    return np.clip(np.array([236.0, 234.0, 228.0]) + shade + grain, 0, 255)


def _sky(rng: np.random.Generator) -> np.ndarray:
    t = np.linspace(0.0, 1.0, SIDE)[:, None, None]
    top, bottom = np.array([96.0, 140.0, 212.0]), np.array([186.0, 208.0, 236.0])
    return np.broadcast_to(top + (bottom - top) * t, (SIDE, SIDE, 3)) + rng.normal(0.0, 0.8, (SIDE, SIDE, 1))


BACKGROUNDS = {"road": _road, "table": _table, "sky": _sky}
# dark objects beside the hole: a person's dark purple coat on the road, a black mug on the
# table, a dark roof under the sky
OBJECT_COLOURS = {"road": (58, 40, 86), "table": (28, 26, 32), "sky": (52, 44, 48)}


def _block_hole() -> tuple[np.ndarray, np.ndarray]:
    """An object-sized hole, the dark object 8 px to its right (the hole's border is all background)."""
    hole = np.zeros((SIDE, SIDE), bool)
    hole[72:184, 84:148] = True
    dark = np.zeros((SIDE, SIDE), bool)
    dark[60:200, 156:204] = True
    return hole, dark


def _stroke_hole(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Thin scratches (4-6 px) across the image, one passing beside the dark object."""
    canvas = np.zeros((SIDE, SIDE), np.uint8)
    for width in (4, 5, 6):
        pts = rng.integers(16, SIDE - 16, size=(4, 2))
        cv2.polylines(canvas, [pts.reshape(-1, 1, 2).astype(np.int32)], False, 1, thickness=width)
    dark = np.zeros((SIDE, SIDE), bool)
    dark[100:156, 150:190] = True
    cv2.line(canvas, (120, 96), (148, 170), 1, thickness=5)  # a stroke that ends at the object
    return canvas.astype(bool) & ~dark, dark


def scenes(seed: int = 0) -> list[Scene]:
    """Six scenes: each background with an object-sized hole and with thin strokes."""
    rng = np.random.default_rng(seed)
    out = []
    for name, make in BACKGROUNDS.items():
        for kind in ("block", "strokes"):
            image = make(rng).copy()
            hole, dark = _block_hole() if kind == "block" else _stroke_hole(rng)
            image[dark] = OBJECT_COLOURS[name]
            out.append(Scene(f"{name}-{kind}", np.round(image).astype(np.uint8), hole))
    return out


def mean_colour_error(result: np.ndarray, truth: np.ndarray, hole: np.ndarray) -> float:
    """The largest per-channel difference of the mean colour in the hole, in 8-bit levels."""
    return float(np.abs(result[hole].astype(np.float64).mean(0) - truth[hole].astype(np.float64).mean(0)).max())
