"""Image-quality metrics of an inpainting result against its ground truth.

Every metric takes ``pred`` and ``gt`` as HxWx3 arrays, either uint8 (0-255) or float in
[0, 1], and works in float64 on the [0, 1] scale. ``pred`` is meant to be the composited
output (known pixels equal to ``gt``), so the full-image metrics are diluted by the
known area exactly as in the papers; the ``*_hole`` metrics look at the hole only.

Definitions (all means are over pixels *and* channels):

- ``l1``   mean absolute error, ``mean(|pred - gt|)``.
- ``l2``   mean squared error, ``mean((pred - gt) ** 2)`` (the "L2 loss" of the papers
  of CSA's time; not its square root).
- ``psnr`` ``10 * log10(1 / l2)`` dB with data range 1 (scikit-image's
  ``peak_signal_noise_ratio(gt, pred, data_range=1)``), capped at :data:`PSNR_CAP`
  = 100 dB so that a perfect reconstruction (infinite PSNR) can be averaged. The cap
  only touches near-exact results: a single 1/255 error in one channel of one pixel
  of a 256x256 RGB image is already 101 dB; a real fill scores 15-40 dB.
- ``ssim`` scikit-image's ``structural_similarity`` with the Wang et al. settings:
  Gaussian window (sigma 1.5, 11 taps), population covariance, data range 1,
  averaged over the three channels.
- ``tv``   total variation of ``pred`` alone (no reference): the mean absolute
  difference between every pair of horizontally or vertically neighbouring pixels,
  both directions pooled into one mean over the ``H*(W-1) + (H-1)*W`` pairs and the
  channels. Lower is smoother; compare it with the ground truth's own TV.
- ``l1_hole`` / ``psnr_hole`` the same as ``l1`` / ``psnr`` but over the hole pixels
  only (all channels of every pixel where ``mask`` is True). Undefined (NaN) for an
  empty mask; the evaluation leaves NaNs out of its means and says how many it used.
"""
from __future__ import annotations

import math

import numpy as np

from .errors import CsaError

#: PSNR of an exact reconstruction, in dB (instead of infinity), so that means stay finite.
PSNR_CAP = 100.0

#: The metrics :func:`compute_all` returns, in report order.
METRICS: tuple[str, ...] = ("l1", "l2", "psnr", "ssim", "tv", "l1_hole", "psnr_hole")

#: True where a larger value is better (for report arrows).
HIGHER_IS_BETTER: dict[str, bool] = {
    "l1": False,
    "l2": False,
    "psnr": True,
    "ssim": True,
    "tv": False,
    "l1_hole": False,
    "psnr_hole": True,
    "fid": False,
    "kid": False,
    "lpips": False,
}


def to_unit(img: np.ndarray) -> np.ndarray:
    """uint8 (0-255) or float ([0, 1]) image -> float64 in [0, 1]."""
    arr = np.asarray(img)
    if arr.dtype == np.uint8:
        return arr.astype(np.float64) / 255.0
    if np.issubdtype(arr.dtype, np.floating):
        return arr.astype(np.float64, copy=False)
    raise CsaError(f"metrics take uint8 or float images, got dtype {arr.dtype}")


def _pair(pred: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    p, g = to_unit(pred), to_unit(gt)
    if p.shape != g.shape:
        raise CsaError(f"prediction {p.shape} and ground truth {g.shape} differ in shape")
    return p, g


def _hole_pixels(x: np.ndarray, mask: np.ndarray) -> np.ndarray:
    m = np.asarray(mask, dtype=bool)
    if m.shape != x.shape[:2]:
        raise CsaError(f"mask {m.shape} does not match the image {x.shape[:2]}")
    return x[m]  # (n_hole, C): every channel of every hole pixel


def mse_to_psnr(mse: float, cap: float = PSNR_CAP) -> float:
    """PSNR in dB for data range 1, capped at ``cap`` (an exact match gives ``cap``)."""
    if mse <= 0.0:
        return cap
    return min(cap, 10.0 * math.log10(1.0 / mse))


def l1(pred: np.ndarray, gt: np.ndarray) -> float:
    """Mean absolute error over all pixels and channels, on the [0, 1] scale."""
    p, g = _pair(pred, gt)
    return float(np.mean(np.abs(p - g)))


def l2(pred: np.ndarray, gt: np.ndarray) -> float:
    """Mean squared error over all pixels and channels, on the [0, 1] scale."""
    p, g = _pair(pred, gt)
    return float(np.mean((p - g) ** 2))


def psnr(pred: np.ndarray, gt: np.ndarray, cap: float = PSNR_CAP) -> float:
    """Peak signal-to-noise ratio in dB (data range 1), capped at ``cap``."""
    return mse_to_psnr(l2(pred, gt), cap)


def ssim(pred: np.ndarray, gt: np.ndarray) -> float:
    """SSIM with Wang et al.'s Gaussian window (sigma 1.5), as scikit-image computes it."""
    from skimage.metrics import structural_similarity  # imported here: it is slow to import

    p, g = _pair(pred, gt)
    channel_axis = -1 if p.ndim == 3 else None
    return float(
        structural_similarity(
            g,
            p,
            gaussian_weights=True,
            sigma=1.5,
            use_sample_covariance=False,
            data_range=1.0,
            channel_axis=channel_axis,
        )
    )


def tv(img: np.ndarray) -> float:
    """Total variation: mean |difference| over all horizontal and vertical neighbour pairs."""
    x = to_unit(img)
    dh = np.abs(np.diff(x, axis=1))  # H x (W-1) [x C]
    dv = np.abs(np.diff(x, axis=0))  # (H-1) x W [x C]
    count = dh.size + dv.size
    if count == 0:
        raise CsaError(f"total variation needs an image of at least 2 pixels, got shape {x.shape}")
    return float((dh.sum() + dv.sum()) / count)


def l1_hole(pred: np.ndarray, gt: np.ndarray, mask: np.ndarray) -> float:
    """Mean absolute error over all channels of the hole pixels; NaN for an empty mask."""
    p, g = _pair(pred, gt)
    d = _hole_pixels(p, mask) - _hole_pixels(g, mask)
    return float(np.mean(np.abs(d))) if d.size else float("nan")


def psnr_hole(pred: np.ndarray, gt: np.ndarray, mask: np.ndarray, cap: float = PSNR_CAP) -> float:
    """PSNR over all channels of the hole pixels (capped); NaN for an empty mask."""
    p, g = _pair(pred, gt)
    d = _hole_pixels(p, mask) - _hole_pixels(g, mask)
    return mse_to_psnr(float(np.mean(d**2)), cap) if d.size else float("nan")


def compute_all(pred: np.ndarray, gt: np.ndarray, mask: np.ndarray) -> dict[str, float]:
    """Every metric of :data:`METRICS` for one image (``pred`` should be composited)."""
    p, g = _pair(pred, gt)
    mse = float(np.mean((p - g) ** 2))
    return {
        "l1": float(np.mean(np.abs(p - g))),
        "l2": mse,
        "psnr": mse_to_psnr(mse),
        "ssim": ssim(p, g),
        "tv": tv(p),
        "l1_hole": l1_hole(p, g, mask),
        "psnr_hole": psnr_hole(p, g, mask),
    }
