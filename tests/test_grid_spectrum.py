"""tools/grid_spectrum.py: a grid locked to the pixels stands out, texture and flat colour do not."""
from __future__ import annotations

import numpy as np
import pytest
from tool_module import load_tool


@pytest.fixture(scope="module")
def tool():
    return load_tool("grid_spectrum")


def smooth_texture(rng: np.random.Generator, side: int = 128) -> np.ndarray:
    """Noise low-passed in frequency: power that falls off smoothly, as in photographs."""
    noise = np.fft.fft2(rng.standard_normal((side, side, 3)), axes=(0, 1))
    f = np.hypot(*np.meshgrid(np.fft.fftfreq(side), np.fft.fftfreq(side), indexing="ij"))
    return np.real(np.fft.ifft2(noise / (f[:, :, None] + 0.02), axes=(0, 1)))


def test_texture_has_no_peaks_and_a_grid_does(tool) -> None:
    rng = np.random.default_rng(0)
    texture = smooth_texture(rng)
    base = tool.peak_ratios(texture)
    assert set(base) == {2, 4, 8, 16, "peaks"}
    assert all(0.3 < base[p] < 3 for p in (2, 4, 8, 16)), base
    assert base["peaks"] < 0.2
    # An 8-pixel pattern (one bright pixel per 8 x 8 cell; rms 30% of the texture's, whose power is mostly at low frequencies).
    grid = np.zeros_like(texture)
    grid[::8, ::8] = 0.3 * texture.std() * 8
    marked = tool.peak_ratios(texture + grid)
    assert marked[8] > 5 * base[8], (base, marked)
    assert marked[16] > 2 * base[16]  # the 8-px harmonics are also 16-px harmonics
    assert marked["peaks"] > 1 > 5 * base["peaks"]
    shifted = tool.peak_ratios(texture + np.roll(grid, (3, 5), axis=(0, 1)))
    assert shifted[8] == pytest.approx(marked[8], rel=0.5)  # the phase does not matter


def test_flat_colour_and_odd_sides(tool) -> None:
    flat = np.full((64, 64, 3), 0.5)
    assert all(r <= 1 for r in tool.peak_ratios(flat).values())  # no power anywhere: ratio 0
    assert set(tool.peak_ratios(np.zeros((24, 24, 3)))) == {2, 4, 8, "peaks"}  # 16 does not divide 24
