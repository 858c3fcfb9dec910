"""`make demo` / `csa demo`: inpaint the bundled sample photo with the bundled model.

Writes the result and a side-by-side picture (input with the hole, result, original).
"""
from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Optional

import numpy as np
from PIL import Image, ImageDraw

from .imageio import read_image, read_mask, save_image

SAMPLE_IMAGE = "sample.png"
SAMPLE_MASK = "sample_mask.png"


def asset_path(name: str) -> Path:
    return Path(str(resources.files("csa") / "assets" / name))


def side_by_side(original: Image.Image, hole: np.ndarray, result: Image.Image) -> Image.Image:
    """Three panels with captions: the input as the model sees it, the result, the original."""
    shown = np.asarray(original.convert("RGB")).copy()
    shown[hole] = (255, 255, 255)
    panels = [Image.fromarray(shown), result.convert("RGB"), original.convert("RGB")]
    w, h = original.size
    caption = 20
    sheet = Image.new("RGB", (3 * w + 20, h + caption), "white")
    draw = ImageDraw.Draw(sheet)
    for i, (panel, title) in enumerate(zip(panels, ("input with hole", "csa result", "original"))):
        sheet.paste(panel, (i * (w + 10), caption))
        draw.text((i * (w + 10) + 4, 4), title, fill="black")
    return sheet


def run_demo(out_dir: Path, weights: Optional[Path] = None, device: str = "cpu") -> tuple[Path, Path]:
    """Inpaint the sample; return (result path, side-by-side path)."""
    from .inference import Inpainter

    inpainter = Inpainter.from_pretrained(weights, device=device)  # fails before anything is written
    image = read_image(asset_path(SAMPLE_IMAGE))
    hole = read_mask(asset_path(SAMPLE_MASK))
    out_dir.mkdir(parents=True, exist_ok=True)
    result = inpainter(image, hole)
    result_path = out_dir / "demo_result.png"
    sheet_path = out_dir / "demo_side_by_side.png"
    save_image(result, result_path)
    save_image(side_by_side(image, hole, result), sheet_path)
    return result_path, sheet_path
