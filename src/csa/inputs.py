"""What one inpainting call reads: the options, and the image with its hole, checked.

:class:`InpaintOptions` is the one home of the per-call options (``invert``,
``mask_from_alpha``, ``resize_mask``, ``strategy``) that the Python API, ``csa inpaint``'s
file and folder modes and :func:`load_inputs` share. No model is needed here: every user
mistake is a :class:`~csa.errors.CsaError` before anything loads.
"""
from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any, Optional

import numpy as np
from PIL import Image

from .errors import CsaError
from .imageio import DEFAULT_MAX_PIXELS, ImageSource, mask_from_alpha_channel, read_image_array, read_mask


@dataclass(frozen=True)
class InpaintOptions:
    """How to read the mask and which high-resolution strategy to use (see :mod:`csa.pipeline`)."""

    invert: bool = False  # black = hole instead of white
    mask_from_alpha: bool = False  # transparent = hole (the mask's alpha; without a mask, the image's own)
    resize_mask: bool = False  # scale a mask of another size to the image's size
    strategy: Optional[str] = None  # resize, crop or native; None: the method's default for the size

    @classmethod
    def of(cls, options: Optional["InpaintOptions"] = None, **keywords: Any) -> "InpaintOptions":
        """``options`` (default: all off) with the given keywords changed; an unknown keyword is a TypeError."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(keywords) - known)
        if unknown:
            raise TypeError(f"unexpected keyword argument {unknown[0]!r} (the options are {', '.join(sorted(known))})")
        return replace(options or cls(), **keywords)


@dataclass
class Inputs:
    """A decoded image and its hole, checked against each other."""

    image: np.ndarray  # H x W x C (C = 1 grey, 2 grey+alpha, 3 RGB, 4 RGBA), uint8 or uint16
    hole: np.ndarray  # H x W bool, True = hole
    alpha_is_mask: bool = False  # the hole came from the image's own alpha: fill it opaque

    @property
    def size(self) -> tuple[int, int]:
        return self.image.shape[1], self.image.shape[0]


def _resize_hole(hole: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """--resize-mask: bilinear, then the usual >= half rule."""
    img = Image.fromarray(hole.astype(np.uint8) * 255).resize((shape[1], shape[0]), Image.Resampling.BILINEAR)
    return np.asarray(img) >= 128


def load_inputs(
    image: ImageSource,
    mask: Optional[ImageSource],
    options: Optional[InpaintOptions] = None,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    **keywords: Any,
) -> Inputs:
    """Read and check an image and its mask (no model needed): every user mistake is a CsaError.

    ``options`` (or its fields as keywords): ``invert``, ``mask_from_alpha``, ``resize_mask``.
    ``mask`` None with ``mask_from_alpha``: the image's own transparent pixels are the hole.
    """
    opts = InpaintOptions.of(options, **keywords)
    arr = read_image_array(image, max_pixels=max_pixels)
    if mask is None:
        if not opts.mask_from_alpha:
            raise CsaError("no mask given: give a mask (white = hole), or {mask_from_alpha} "
                           "to fill the image's own transparent pixels", options=("mask_from_alpha",))
        if arr.shape[2] not in (2, 4):
            raise CsaError("{mask_from_alpha} without a mask needs an image with an alpha channel "
                           "(RGBA or grey + alpha)", options=("mask_from_alpha",))
        return Inputs(arr, mask_from_alpha_channel(arr[:, :, -1], invert=opts.invert), alpha_is_mask=True)
    hole = read_mask(mask, invert=opts.invert, from_alpha=opts.mask_from_alpha, max_pixels=max_pixels)
    if hole.shape != arr.shape[:2]:
        if not opts.resize_mask:
            raise CsaError(
                f"the mask is {hole.shape[1]}x{hole.shape[0]} but the image is {arr.shape[1]}x{arr.shape[0]}: "
                "give a mask of the image's size, or pass {resize_mask} to scale it", options=("resize_mask",)
            )
        hole = _resize_hole(hole, arr.shape[:2])
    return Inputs(arr, hole)
