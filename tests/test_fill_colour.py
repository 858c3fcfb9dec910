"""The shipped model must not tint a fill with a nearby object's colour, nor trace thin strokes.

On synthetic flat and gently shaded backgrounds (tests/synthetic_scenes.py: a grey road, a
white table, a sky gradient, each with a dark object beside an object-sized hole or 4-6 px
strokes), the mean colour of the fill must be within 3 levels (of 255) of the background
that was there, in every channel.
"""
from __future__ import annotations

import numpy as np
import pytest

from csa.inference import DEFAULT_WEIGHTS, Inpainter
from synthetic_scenes import mean_colour_error, scenes

TOLERANCE = 3.0  # 8-bit levels

pytestmark = pytest.mark.skipif(not DEFAULT_WEIGHTS.is_file(), reason="no default model bundled yet")


@pytest.fixture(scope="module")
def inpainter() -> Inpainter:
    return Inpainter.from_pretrained()


@pytest.mark.parametrize("scene", scenes(), ids=lambda s: s.name)
def test_fill_keeps_the_background_colour(inpainter, scene) -> None:
    result = np.asarray(inpainter(scene.image, scene.hole).convert("RGB"))
    error = mean_colour_error(result, scene.image, scene.hole)
    assert error <= TOLERANCE, f"{scene.name}: the fill's mean colour is {error:.1f} levels off"


def test_the_scenes_have_what_they_claim() -> None:
    for scene in scenes():
        assert scene.image.shape == (256, 256, 3) and scene.image.dtype == np.uint8
        assert 0.01 < scene.hole.mean() < 0.25
        # the dark object is outside the hole and darker than the background by far
        background = scene.image[scene.hole].mean()
        assert (scene.image.mean(axis=2) < background - 40).sum() > 1000
        assert mean_colour_error(scene.image, scene.image, scene.hole) == 0.0
