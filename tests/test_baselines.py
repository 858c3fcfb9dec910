"""The classical baselines: one interface, composited, deterministic, sensible fills."""
from __future__ import annotations

import numpy as np
import pytest
from skimage import data as skdata

from csa import baselines
from csa.methods import find, lookup
from csa.errors import CsaError


@pytest.fixture(scope="module")
def pair() -> tuple[np.ndarray, np.ndarray]:
    image = skdata.astronaut()[::8, ::8].copy()  # a real photo, 64x64
    mask = np.zeros((64, 64), bool)
    mask[20:36, 24:44] = True
    return image, mask


@pytest.mark.parametrize("name", list(baselines.BASELINES))
def test_baseline_fills_the_hole_and_keeps_known_pixels(name, pair):
    image, mask = pair
    fn = baselines.BASELINES[name]
    out = fn(image, mask)
    assert out.shape == image.shape and out.dtype == np.uint8
    assert np.array_equal(out[~mask], image[~mask])  # known pixels bit-exact
    # a fill from the surroundings is far closer to the truth than a black hole
    err = np.abs(out[mask].astype(int) - image[mask]).mean()
    assert err < np.abs(image[mask].astype(int)).mean() / 2
    # the hole was actually filled (not left as the input's pixels by accident)
    holed = image.copy()
    holed[mask] = 0
    refill = fn(holed, mask)
    assert refill[mask].mean() > 20
    # deterministic: the same input twice gives the same output
    assert np.array_equal(fn(image, mask), out)


def test_smooth_image_is_filled_smoothly():
    # A linear ramp: the diffusion-type methods should get the hole nearly right.
    ramp = np.linspace(0, 200, 48)
    image = np.stack([np.tile(ramp, (48, 1))] * 3, axis=2).astype(np.uint8)
    mask = np.zeros((48, 48), bool)
    mask[16:32, 16:32] = True
    for name in ("telea", "ns", "biharmonic", "smooth"):
        out = baselines.BASELINES[name](image, mask)
        assert np.abs(out[mask].astype(int) - image[mask]).mean() < 12, name
    # biharmonic reproduces a linear function almost exactly
    out = baselines.biharmonic(image, mask)
    assert np.abs(out[mask].astype(int) - image[mask]).max() <= 2


def test_patchmatch_copies_existing_texture():
    # PatchMatch copies (and blends a little) patches: on random two-colour noise its
    # fill stays near those two colours, where diffusion methods average them to mauve.
    rng = np.random.default_rng(0)
    red, blue = np.array([200, 30, 30]), np.array([20, 20, 180])
    image = np.where(rng.random((48, 48, 1)) < 0.5, red, blue).astype(np.uint8)
    mask = np.zeros((48, 48), bool)
    mask[16:30, 18:34] = True

    def median_distance(out: np.ndarray) -> float:
        px = out[mask].astype(int)
        return float(np.median(np.minimum(np.abs(px - red).sum(1), np.abs(px - blue).sum(1))))

    assert median_distance(baselines.patchmatch(image, mask)) < 30
    assert median_distance(baselines.telea(image, mask)) > 100


def test_empty_mask_returns_the_image(pair):
    image, _ = pair
    empty = np.zeros(image.shape[:2], bool)
    for fn in baselines.BASELINES.values():
        assert np.array_equal(fn(image, empty), image)


def test_bad_inputs_and_names():
    image = np.zeros((16, 16, 3), np.uint8)
    with pytest.raises(CsaError, match="unknown method 'nope'.*telea"):
        find("nope")
    assert lookup(" Telea ").fill is baselines.telea
    with pytest.raises(CsaError, match="bool mask"):
        baselines.telea(image, np.zeros((16, 16), np.uint8))
    with pytest.raises(CsaError, match="does not match"):
        baselines.ns(image, np.zeros((8, 16), bool))
    with pytest.raises(CsaError, match="uint8"):
        baselines.ns(image.astype(np.float32), np.zeros((16, 16), bool))
    with pytest.raises(CsaError, match="whole image"):
        baselines.patchmatch(image, np.ones((16, 16), bool))


def test_composite_checks_what_a_method_returns():
    image = np.zeros((8, 8, 3), np.uint8)
    mask = np.zeros((8, 8), bool)
    mask[2:4, 2:4] = True
    filled = np.full_like(image, 9)
    out = baselines.composite(filled, image, mask)
    assert (out[mask] == 9).all() and (out[~mask] == 0).all()
    with pytest.raises(CsaError, match="shape"):
        baselines.composite(filled[:4], image, mask)
    with pytest.raises(CsaError, match="dtype"):
        baselines.composite(filled.astype(np.float32), image, mask)
