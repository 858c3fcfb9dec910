"""Write docs/explain-example.png: input with the hole, result, and the sources picture of
``csa inpaint --explain`` for the bundled sample and the bundled model (README, 'Where a fill came from').

    python tools/make_explain_example.py [OUT.png]
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from csa import Inpainter

ASSETS = Path(__file__).resolve().parents[1] / "src" / "csa" / "assets"


def main(out: Path) -> None:
    image = np.asarray(Image.open(ASSETS / "sample.png").convert("RGB"))
    hole = np.asarray(Image.open(ASSETS / "sample_mask.png").convert("L")) >= 128
    ex = Inpainter.from_pretrained().explain(image, hole)
    pic = ex.picture()
    side = pic.size[0]
    shown = image.copy()
    shown[hole] = (255, 40, 90)
    panels = [Image.fromarray(shown), Image.fromarray(ex.result)]
    panels = [p.resize(pic.size, Image.Resampling.LANCZOS) for p in panels] + [pic]
    titles = ["input and hole", "result (csa inpaint)", "sources (csa inpaint --explain map.png)"]
    canvas = Image.new("RGB", (3 * side + 40, pic.size[1] + 30), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for i, (panel, title) in enumerate(zip(panels, titles)):
        canvas.paste(panel, (i * (side + 20), 30))
        draw.text((i * (side + 20) + 4, 8), title, fill=(0, 0, 0))
    canvas.save(out, optimize=True)  # full colour: a palette would band the position colours
    picked = ex.sources[hole][:, 0] >= 0
    print(f"wrote {out}: {hole.sum()} hole pixels, {picked.sum()} with a source, "
          f"{(~picked).sum()} in cells that count as known; mean b {np.nanmean(ex.blend):.3f}")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("docs/explain-example.png"))
