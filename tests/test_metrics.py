"""Metrics against scikit-image and against values computed by hand."""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter
from skimage import data as skdata
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from csa import metrics
from csa.errors import CsaError


def _random_pair(seed: int, size: int = 48) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    gt = rng.integers(0, 256, (size, size + 8, 3), dtype=np.uint8)
    noise = rng.integers(-40, 41, gt.shape)
    return np.clip(gt.astype(int) + noise, 0, 255).astype(np.uint8), gt


def _real_pair() -> tuple[np.ndarray, np.ndarray]:
    gt = skdata.astronaut()[100:228, 150:278].copy()  # a real photo, 128x128
    pred = gt.copy()
    pred[40:90, 30:100] = skdata.coffee()[40:90, 30:100]  # a wrong fill in part of it
    return pred, gt


@pytest.mark.parametrize("pair", [_random_pair(0), _random_pair(1), _real_pair()], ids=["rand0", "rand1", "real"])
def test_psnr_and_ssim_match_scikit_image(pair):
    pred, gt = pair
    p, g = pred / 255.0, gt / 255.0
    ref_psnr = peak_signal_noise_ratio(g, p, data_range=1)
    ref_ssim = structural_similarity(
        g, p, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1, channel_axis=-1
    )
    assert metrics.psnr(pred, gt) == pytest.approx(ref_psnr, abs=1e-4)
    assert metrics.ssim(pred, gt) == pytest.approx(ref_ssim, abs=1e-4)
    # float inputs in [0, 1] give the same numbers as uint8
    assert metrics.ssim(p, g) == pytest.approx(ref_ssim, abs=1e-4)
    assert 0 < ref_ssim < 1  # a real difference, not a trivial case


def _wang_ssim(p: np.ndarray, g: np.ndarray) -> float:
    """SSIM written out (Wang et al. 2004) with scipy: an independent check of the settings."""
    c1, c2 = 0.01**2, 0.03**2
    values = []
    for c in range(3):
        x, y = p[..., c], g[..., c]
        f = lambda a: gaussian_filter(a, 1.5, truncate=3.5, mode="reflect")  # 11-tap window
        mx, my = f(x), f(y)
        vx, vy, cxy = f(x * x) - mx**2, f(y * y) - my**2, f(x * y) - mx * my
        s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
        values.append(s[5:-5, 5:-5].mean())  # scikit-image leaves out the window's half-width
    return float(np.mean(values))


def test_ssim_is_wang_gaussian_window():
    pred, gt = _real_pair()
    assert metrics.ssim(pred, gt) == pytest.approx(_wang_ssim(pred / 255.0, gt / 255.0), abs=1e-6)


def test_l1_l2_by_hand():
    gt = np.zeros((2, 2, 3), np.uint8)
    pred = gt.copy()
    pred[0, 0] = [255, 0, 0]  # one channel of one pixel fully wrong
    pred[1, 1] = [51, 51, 51]  # 0.2 in every channel of another
    # 12 values: errors 1, 0.2, 0.2, 0.2 -> L1 = 1.6 / 12, L2 = (1 + 3 * 0.04) / 12
    assert metrics.l1(pred, gt) == pytest.approx(1.6 / 12)
    assert metrics.l2(pred, gt) == pytest.approx(1.12 / 12)
    assert metrics.psnr(pred, gt) == pytest.approx(10 * math.log10(12 / 1.12))


def test_psnr_of_exact_match_is_capped():
    _, gt = _random_pair(2)
    assert metrics.psnr(gt, gt) == metrics.PSNR_CAP == 100.0
    assert metrics.mse_to_psnr(1e-20) == 100.0
    assert metrics.mse_to_psnr(0.01) == pytest.approx(20.0)


def test_tv_by_hand():
    img = np.array([[0, 255], [255, 255]], np.uint8)  # grey, 2x2
    img3 = np.repeat(img[:, :, None], 3, axis=2)
    # pairs: horizontal (0,255) (255,255); vertical (0,255) (255,255): 2 of 4 differ by 1
    assert metrics.tv(img3) == pytest.approx(0.5)
    ramp = np.tile(np.arange(0, 50, 10, dtype=np.uint8), (3, 1))  # 3x5, steps of 10
    # 3*4 horizontal pairs of 10/255, 2*5 vertical pairs of 0
    assert metrics.tv(ramp) == pytest.approx((12 * 10 / 255) / 22)
    assert metrics.tv(np.full((4, 4, 3), 7, np.uint8)) == 0.0


def test_hole_metrics_by_hand():
    gt = np.full((4, 4, 3), 100, np.uint8)
    pred = gt.copy()
    mask = np.zeros((4, 4), bool)
    mask[1:3, 1:3] = True  # 4 hole pixels
    pred[1, 1] = 100 + 51  # 0.2 in all channels of one hole pixel
    pred[2, 2, 0] = 0  # 100/255 off in one channel of another
    d = np.array([0.2] * 3 + [100 / 255])
    assert metrics.l1_hole(pred, gt, mask) == pytest.approx(d.sum() / 12)
    assert metrics.psnr_hole(pred, gt, mask) == pytest.approx(10 * math.log10(12 / (d**2).sum()))
    # full-image versions are diluted by the 12 known pixels
    assert metrics.l1(pred, gt) == pytest.approx(d.sum() / 48)
    empty = np.zeros((4, 4), bool)
    assert math.isnan(metrics.l1_hole(pred, gt, empty))
    assert math.isnan(metrics.psnr_hole(pred, gt, empty))
    assert metrics.psnr_hole(gt, gt, mask) == 100.0


def test_compute_all_agrees_with_single_metrics():
    pred, gt = _real_pair()
    mask = np.zeros(gt.shape[:2], bool)
    mask[40:90, 30:100] = True
    got = metrics.compute_all(pred, gt, mask)
    assert list(got) == list(metrics.METRICS)
    assert got["l1"] == pytest.approx(metrics.l1(pred, gt))
    assert got["psnr"] == pytest.approx(metrics.psnr(pred, gt))
    assert got["tv"] == pytest.approx(metrics.tv(pred))
    assert got["l1_hole"] == pytest.approx(metrics.l1_hole(pred, gt, mask))
    assert got["l1_hole"] > got["l1"]  # the error sits in the hole


def test_bad_inputs_raise_csa_error():
    with pytest.raises(CsaError, match="shape"):
        metrics.l1(np.zeros((4, 4, 3), np.uint8), np.zeros((4, 5, 3), np.uint8))
    with pytest.raises(CsaError, match="dtype"):
        metrics.l1(np.zeros((4, 4, 3), np.int32), np.zeros((4, 4, 3), np.int32))
    with pytest.raises(CsaError, match="mask"):
        metrics.l1_hole(np.zeros((4, 4, 3), np.uint8), np.zeros((4, 4, 3), np.uint8), np.zeros((3, 3), bool))
