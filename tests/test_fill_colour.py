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
# The bundled model does not meet the bar on these yet (the retraining for texture goes on; errors measured on
# the shipped weights: road-block 4.5, table-block 4.4, table-strokes 4.6, sky-block 6.4
# levels; the smooth start is within 0.1 on the blocks, 1.6 on the table strokes). Strict:
# once a model passes one, the marker must go.
NOT_YET = {"road-block", "table-block", "table-strokes", "sky-block"}

pytestmark = pytest.mark.skipif(not DEFAULT_WEIGHTS.is_file(), reason="no default model bundled yet")


@pytest.fixture(scope="module")
def inpainter() -> Inpainter:
    return Inpainter.from_pretrained()


def _cases():
    for scene in scenes():
        marks = [pytest.mark.xfail(strict=True, reason="the bundled model tints this fill (model card, 'The colour casts')")] \
            if scene.name in NOT_YET else []
        yield pytest.param(scene, id=scene.name, marks=marks)


@pytest.mark.parametrize("scene", list(_cases()))
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
