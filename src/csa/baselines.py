"""Classical (non-learned) inpainting baselines behind one interface.

Every method is a callable ``(image, mask) -> image``: ``image`` an HxWx3 uint8 RGB
array, ``mask`` an HxW bool array (True = hole); the result is HxWx3 uint8 with every
known pixel equal to the input's (composited here, so no method can touch them).

==============  ====================================================================
``telea``       OpenCV ``cv2.inpaint(..., 3, cv2.INPAINT_TELEA)`` (fast marching).
``ns``          OpenCV ``cv2.inpaint(..., 3, cv2.INPAINT_NS)`` (Navier-Stokes).
``biharmonic``  scikit-image ``restoration.inpaint_biharmonic(..., channel_axis=-1)``.
``patchmatch``  PatchMatch (Barnes et al. 2009) from the PyPI package ``pypatchmatch``
                (its wheel ships the native library, nothing compiles at run time),
                patch radius 3 (7x7 patches, the package's examples and IOPaint), with
                the random search seeded before every call so equal inputs give equal
                outputs.
``smooth``      the CSA generator's own input fill (``csa.nn.generator.smooth_fill``,
                a multigrid harmonic fill) alone, with no network: it shows what a
                model with ``model.hole_fill=smooth`` adds to its starting point.
==============  ====================================================================

OpenCV's two methods treat the colour channels alike, so RGB is passed as it is.
The heavy libraries are imported on first use, so importing this module is cheap.
:data:`csa.methods.REGISTRY` offers every one of them by name, next to the model.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from .errors import CsaError
from .extras import require

#: The one signature of every inpainting method the evaluation compares.
InpaintFn = Callable[[np.ndarray, np.ndarray], np.ndarray]

#: OpenCV's inpainting radius for ``telea`` and ``ns`` (pixels).
OPENCV_RADIUS = 3
#: PatchMatch patch radius (patches are (2 * r + 1)^2 pixels).
PATCHMATCH_PATCH_RADIUS = 3
#: Seed of PatchMatch's randomized search, set before every call.
PATCHMATCH_SEED = 0


def check_rgb8(image: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Validate an (image, mask) pair of arrays: HxWx3 uint8 and HxW bool of the same size.

    (csa.nn.generator.check_inputs is the model's check, of tensors.)
    """
    image = np.asarray(image)
    mask = np.asarray(mask)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise CsaError(f"an inpainting method takes an HxWx3 uint8 image, got {image.shape} {image.dtype}")
    if mask.dtype != bool:
        raise CsaError(f"an inpainting method takes a bool mask (True = hole), got dtype {mask.dtype}")
    if mask.shape != image.shape[:2]:
        raise CsaError(f"mask {mask.shape} does not match the image {image.shape[:2]}")
    return np.ascontiguousarray(image), mask


def composite(filled: np.ndarray, image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``filled`` inside the hole, ``image`` outside it (known pixels come back exact)."""
    filled = np.asarray(filled)
    if filled.shape != image.shape:
        raise CsaError(f"the method returned shape {filled.shape}, expected {image.shape}")
    if filled.dtype != np.uint8:
        raise CsaError(f"the method returned dtype {filled.dtype}, expected uint8")
    return np.where(mask[:, :, None], filled, image)


def _opencv(flag_name: str) -> InpaintFn:
    def run(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
        import cv2

        image, mask = check_rgb8(image, mask)
        if not mask.any():
            return image.copy()
        out = cv2.inpaint(image, mask.astype(np.uint8) * 255, OPENCV_RADIUS, getattr(cv2, flag_name))
        return composite(out, image, mask)

    run.__name__ = flag_name.lower()
    run.__doc__ = f"OpenCV cv2.inpaint with {flag_name}, radius {OPENCV_RADIUS}."
    return run


telea = _opencv("INPAINT_TELEA")
ns = _opencv("INPAINT_NS")


def biharmonic(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """scikit-image's biharmonic inpainting, per colour channel, rounded back to uint8."""
    require("eval", "the biharmonic method", ("skimage",))
    from skimage.restoration import inpaint_biharmonic

    image, mask = check_rgb8(image, mask)
    if not mask.any():
        return image.copy()
    if mask.all():
        raise CsaError("biharmonic inpainting needs some known pixels: the mask covers the whole image")
    out = inpaint_biharmonic(image, mask, channel_axis=-1)  # float64 in [0, 1]
    out = np.clip(np.rint(out * 255.0), 0, 255).astype(np.uint8)
    return composite(out, image, mask)


def patchmatch(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """PatchMatch inpainting (pypatchmatch), 7x7 patches, seeded search."""
    require("eval", "the patchmatch method", ("patchmatch",))
    import patchmatch as pm

    if not pm.patchmatch_available:
        raise CsaError(
            "pypatchmatch is installed but its native library did not load: reinstall it "
            "(pip install --force-reinstall --no-deps pypatchmatch) on a platform with a wheel"
        )
    image, mask = check_rgb8(image, mask)
    if not mask.any():
        return image.copy()
    if mask.all():
        raise CsaError("PatchMatch needs some known pixels to copy from: the mask covers the whole image")
    # The library keeps one global seed; set it every call so a result never depends
    # on what ran before it.
    pm.set_random_seed(PATCHMATCH_SEED)
    out = pm.inpaint(image, mask, patch_size=PATCHMATCH_PATCH_RADIUS)
    return composite(out, image, mask)


def smooth(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The generator's smooth input fill alone (multigrid relaxation), rounded to uint8."""
    import torch

    from .nn.generator import smooth_fill

    image, mask = check_rgb8(image, mask)
    if not mask.any():
        return image.copy()
    if mask.all():
        raise CsaError("the smooth fill needs some known pixels: the mask covers the whole image")
    # astype / copy: torch.from_numpy wants writable arrays (a read-only input warns)
    x = torch.from_numpy(image.astype(np.float32)).permute(2, 0, 1)[None]
    with torch.inference_mode():
        out = smooth_fill(x, torch.from_numpy(mask.copy())[None, None])[0].permute(1, 2, 0).numpy()
    return composite(np.clip(np.rint(out), 0, 255).astype(np.uint8), image, mask)


#: Every classical baseline by name.
BASELINES: dict[str, InpaintFn] = {
    "telea": telea,
    "ns": ns,
    "biharmonic": biharmonic,
    "patchmatch": patchmatch,
    "smooth": smooth,
}

