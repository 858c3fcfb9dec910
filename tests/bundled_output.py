"""Record the bundled model's output on the bundled sample (what tests/test_bundled_output.py checks).

    python tests/bundled_output.py     # after changing src/csa/assets/default.safetensors

Writes tests/data/bundled_output.png and tests/data/bundled_output.json (the weights file's
sha256): commit both in the same commit as the new weights.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

DATA = Path(__file__).parent / "data"
OUTPUT = DATA / "bundled_output.png"
RECORD = DATA / "bundled_output.json"


def weights_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def bundled_result() -> np.ndarray:
    """The bundled model's completed sample, H x W x 3 uint8 (the demo's result)."""
    from csa.demo import SAMPLE_IMAGE, SAMPLE_MASK, asset_path
    from csa.imageio import read_image, read_mask
    from csa.inference import Inpainter

    image = read_image(asset_path(SAMPLE_IMAGE))
    result = Inpainter.from_pretrained()(image, read_mask(asset_path(SAMPLE_MASK)))
    return np.asarray(result.convert("RGB"))


def record() -> None:
    from PIL import Image

    from csa.inference import DEFAULT_WEIGHTS

    Image.fromarray(bundled_result()).save(OUTPUT)
    RECORD.write_text(json.dumps({"weights": DEFAULT_WEIGHTS.name, "sha256": weights_sha256(DEFAULT_WEIGHTS)},
                                 indent=2) + "\n", encoding="utf-8")
    print(f"wrote {OUTPUT} and {RECORD}")


if __name__ == "__main__":
    record()
