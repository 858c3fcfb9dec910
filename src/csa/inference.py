"""Inference: a photo and a mask in, the completed photo out.

:class:`Inpainter` holds one model (loaded once; calls are serialised by a lock, so one
instance can serve several threads) and hides the pre- and post-processing:

- Inputs: paths, bytes, PIL images or arrays (uint8, uint16, or float in [0, 1]); PNG,
  JPEG, WebP, BMP, TIFF; EXIF orientation applied; grey, grey + alpha, RGB, RGBA;
  8 or 16 bits. Grey stays grey, alpha is kept as it is, 16 bits stay 16 bits.
- Any size, by one of three strategies (the model works at its training size
  S = ``config.image_size``, 256 for the paper's model):

  ``resize``  the whole image scaled to fit S x S (aspect kept, mirror-padded), filled,
              scaled back; only the hole's pixels are pasted back.
  ``crop``    for each connected hole region (regions whose crops would touch are merged),
              a square crop of ``CROP_CONTEXT`` times the region's size (at least S), scaled
              to S x S, filled, scaled back and pasted. The default for images larger than S.
  ``native``  the image mirror-padded to multiples of 256 and run at full resolution (the
              network is fully convolutional). Limited to ``NATIVE_MAX_PIXELS`` (memory).

- Known pixels always equal the input exactly: the final composite happens at the
  original resolution in the original dtype; resampling only ever touches the hole.

The file and folder helpers at the end are what ``csa inpaint`` runs.
"""
from __future__ import annotations

import math
import os
import sys
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .devices import resolve_device
from .errors import CsaError

if TYPE_CHECKING:
    from .explain import Explanation
from .imageio import (
    DEFAULT_MAX_PIXELS,
    ImageSource,
    array_to_8bit,
    array_to_pil,
    mask_from_alpha_channel,
    output_format,
    read_image_array,
    read_mask,
    save_array,
)

#: Where the bundled default model lives (shipped with the package once it is trained).
DEFAULT_WEIGHTS = Path(__file__).resolve().parent / "assets" / "default.safetensors"
STRATEGIES = ("resize", "crop", "native")
#: Both U-Nets halve the resolution 8 times: the model's input sides are multiples of this.
SIDE_MULTIPLE = 256
#: Cap of the ``native`` strategy, counted after padding to multiples of 256. Measured on CPU
#: with the paper-size model (benchmarks/inference.py): about 3 GB peak at 1024x1024 and about
#: 2.5 GB more per further megapixel, plus the CSA layer's hole x known score matrix, which
#: grows with the square of the size. 2.4 MP admits 1536x1536 and 2048x1024.
NATIVE_MAX_PIXELS = 2_400_000
#: ``crop``: a crop's side is this many times the hole region's longer side (at least S), so
#: the hole covers at most about a quarter of what the model sees.
CROP_CONTEXT = 2.0
#: Hole pixels are unknown: they are set to neutral grey before any resampling so that no
#: garbage from inside the hole bleeds into the known pixels the model sees.
HOLE_PLACEHOLDER = 0.5
#: Luma weights for grey images (ITU-R 601, as Pillow's RGB -> L).
LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)
#: Formats that store pixels exactly; any other output format gets a warning.
LOSSLESS_FORMATS = ("PNG", "TIFF", "BMP", "PPM", "TGA")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")

Box = tuple[int, int, int, int]  # top, left, bottom, right (exclusive)


class InpaintWarning(UserWarning):
    """Something the user should know that is not an error (e.g. an empty mask, a lossy format)."""


def default_weights_path() -> Path:
    """The bundled default model; a :class:`CsaError` while none is bundled."""
    if not DEFAULT_WEIGHTS.is_file():
        raise CsaError(
            "no default model is bundled with this version of csa yet: pass --weights FILE "
            "(a .safetensors model written by `csa train` or `csa convert`)"
        )
    return DEFAULT_WEIGHTS


# --- inputs -------------------------------------------------------------------------------


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
    *,
    invert: bool = False,
    mask_from_alpha: bool = False,
    resize_mask: bool = False,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> Inputs:
    """Read and check an image and its mask (no model needed): every user mistake is a CsaError.

    ``mask`` None with ``mask_from_alpha``: the image's own transparent pixels are the hole.
    """
    arr = read_image_array(image, max_pixels=max_pixels)
    if mask is None:
        if not mask_from_alpha:
            raise CsaError("no mask given: give a mask (white = hole), or {mask_from_alpha} "
                           "to fill the image's own transparent pixels", options=("mask_from_alpha",))
        if arr.shape[2] not in (2, 4):
            raise CsaError("{mask_from_alpha} without a mask needs an image with an alpha channel "
                           "(RGBA or grey + alpha)", options=("mask_from_alpha",))
        return Inputs(arr, mask_from_alpha_channel(arr[:, :, -1], invert=invert), alpha_is_mask=True)
    hole = read_mask(mask, invert=invert, from_alpha=mask_from_alpha, max_pixels=max_pixels)
    if hole.shape != arr.shape[:2]:
        if not resize_mask:
            raise CsaError(
                f"the mask is {hole.shape[1]}x{hole.shape[0]} but the image is {arr.shape[1]}x{arr.shape[0]}: "
                "give a mask of the image's size, or pass {resize_mask} to scale it", options=("resize_mask",)
            )
        hole = _resize_hole(hole, arr.shape[:2])
    return Inputs(arr, hole)


# --- resampling helpers (float tensors in [0, 1], N x C x H x W) ----------------------------


def _round_up(n: int, multiple: int = SIDE_MULTIPLE) -> int:
    return -(-n // multiple) * multiple


def _resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Area averaging to shrink (its bins match :func:`_resize_hole_t` exactly), bicubic to grow."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    if size[0] <= x.shape[-2] and size[1] <= x.shape[-1]:
        return F.interpolate(x, size=size, mode="area")
    return F.interpolate(x, size=size, mode="bicubic", align_corners=False, antialias=True).clamp(0.0, 1.0)


def _resize_hole_t(hole: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """A scaled pixel is hole if any hole pixel falls in it, so the model fills all of the hole."""
    if tuple(hole.shape[-2:]) == tuple(size):
        return hole
    return (F.adaptive_avg_pool2d(hole, size) > 0).to(hole.dtype)


def _pad_mirror(x: torch.Tensor, top: int, bottom: int, left: int, right: int) -> torch.Tensor:
    """Reflect padding of any width (reflection needs pad < side: repeat it while it grows)."""
    while top or bottom or left or right:
        h, w = x.shape[-2:]
        t, b, l, r = min(top, h - 1), min(bottom, h - 1), min(left, w - 1), min(right, w - 1)
        if h == 1 or w == 1:  # nothing to reflect: replicate
            return F.pad(x, (left, right, top, bottom), mode="replicate")
        x = F.pad(x, (l, r, t, b), mode="reflect")
        top, bottom, left, right = top - t, bottom - b, left - l, right - r
    return x


# --- crop strategy: where to crop ------------------------------------------------------------


def _crop_square(bbox: Box, height: int, width: int, min_side: int, context: float) -> Box:
    y0, x0, y1, x1 = bbox
    side = max(min_side, math.ceil(context * max(y1 - y0, x1 - x0)))
    sh, sw = min(side, height), min(side, width)
    top = min(max(int(round((y0 + y1 - sh) / 2)), 0), height - sh)
    left = min(max(int(round((x0 + x1 - sw) / 2)), 0), width - sw)
    return top, left, top + sh, left + sw


def crop_boxes(hole: np.ndarray, min_side: int, context: float = CROP_CONTEXT) -> list[Box]:
    """Square crops (top, left, bottom, right) covering every hole pixel, for the ``crop`` strategy.

    One crop per connected hole region, ``context`` times its longer side (at least
    ``min_side``, at most the image); regions whose crops overlap or touch are merged until
    no two crops touch, so every hole pixel lies in exactly one crop with its whole region.
    """
    height, width = hole.shape
    try:
        from scipy import ndimage  # lazy: only the crop strategy needs it
    except ImportError:  # without scipy: one crop around all of the hole
        rows, cols = np.flatnonzero(hole.any(axis=1)), np.flatnonzero(hole.any(axis=0))
        if rows.size == 0:
            return []
        return [_crop_square((rows[0], cols[0], rows[-1] + 1, cols[-1] + 1), height, width, min_side, context)]
    labels, _ = ndimage.label(hole, structure=np.ones((3, 3), dtype=bool))
    bboxes = [(s[0].start, s[1].start, s[0].stop, s[1].stop) for s in ndimage.find_objects(labels) if s]
    while True:
        boxes = [_crop_square(b, height, width, min_side, context) for b in bboxes]
        if len(boxes) <= 1:
            return boxes
        cover = np.zeros((height, width), dtype=bool)
        for top, left, bottom, right in boxes:
            cover[top:bottom, left:right] = True
        groups, count = ndimage.label(cover, structure=np.ones((3, 3), dtype=bool))
        if count == len(boxes):
            return boxes
        merged: dict[int, Box] = {}
        for bbox, box in zip(bboxes, boxes):
            g = int(groups[box[0], box[1]])
            m = merged.get(g, bbox)
            merged[g] = (min(m[0], bbox[0]), min(m[1], bbox[1]), max(m[2], bbox[2]), max(m[3], bbox[3]))
        bboxes = list(merged.values())


# --- the inpainter ----------------------------------------------------------------------------

#: A fill function: (RGB uint8 H x W x 3, bool H x W hole) -> RGB uint8 H x W x 3 (the baselines).
FillFn = Callable[[np.ndarray, np.ndarray], np.ndarray]


class Inpainter:
    """One model (or one classical method) behind one call: ``inpainter(image, mask) -> PIL image``.

    Build it with :meth:`from_pretrained` (a weights file, or the bundled default model) or
    :meth:`from_method`. Calls are serialised by a lock: one instance may be shared by threads.
    """

    def __init__(
        self,
        model: Optional[torch.nn.Module] = None,
        *,
        fill: Optional[FillFn] = None,
        name: str = "csa",
        weights: Optional[Union[str, os.PathLike]] = None,
        strategy: Optional[str] = None,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        native_max_pixels: Optional[int] = NATIVE_MAX_PIXELS,
    ) -> None:
        if (model is None) == (fill is None):
            raise ValueError("give exactly one of model and fill")
        self.model = model.eval() if model is not None else None
        self.fill = fill
        self.name = name
        self.weights = Path(weights) if weights is not None else None
        self.strategy = _check_strategy(strategy) if strategy is not None else None
        self.max_pixels = max_pixels
        self.native_max_pixels = native_max_pixels
        self._lock = threading.Lock()

    # -- construction ------------------------------------------------------------------------

    @classmethod
    def from_pretrained(
        cls,
        path: Optional[Union[str, os.PathLike]] = None,
        device: Union[str, torch.device] = "cpu",
        **kwargs: Any,
    ) -> "Inpainter":
        """Load a model file (None: the bundled default model) onto ``device``.

        The file's content decides how it runs (:func:`csa.checkpoints.load_inference_model`):
        a .safetensors generator in PyTorch, an ONNX export in onnxruntime, a TorchScript
        export in ``torch.jit.load`` (which runs the file's code: trusted sources only).
        """
        from .checkpoints import load_inference_model

        weights = Path(path) if path is not None else default_weights_path()
        model = load_inference_model(weights, device=resolve_device(device))
        kwargs.setdefault("name", weights.stem)
        return cls(model, weights=weights, **kwargs)

    @classmethod
    def from_method(
        cls,
        method: str = "csa",
        weights: Optional[Union[str, os.PathLike]] = None,
        device: Union[str, torch.device] = "cpu",
        **kwargs: Any,
    ) -> "Inpainter":
        """``csa`` (our model: ``weights`` or the default) or a classical baseline by name."""
        key = method.strip().lower()
        if key == "csa":
            return cls.from_pretrained(weights, device=device, **kwargs)
        try:
            from .baselines import BASELINES, get_method
        except ImportError:  # a partial install
            raise CsaError(f"method {method!r} needs csa.baselines, which is not available: use --method csa") from None
        if key not in BASELINES:
            raise CsaError(f"unknown method {method!r}: choose csa or one of {', '.join(BASELINES)}")
        if weights is not None:
            warnings.warn(InpaintWarning(f"--weights is ignored by --method {key}"), stacklevel=2)
        kwargs.setdefault("name", key)
        return cls(fill=get_method(key), **kwargs)

    # -- facts ---------------------------------------------------------------------------------

    @property
    def image_size(self) -> int:
        """The model's training size S (the ``resize`` / ``crop`` strategies scale to it)."""
        return int(self.model.config.image_size) if self.model is not None else SIDE_MULTIPLE

    @property
    def device(self) -> torch.device:
        if self.model is None:
            return torch.device("cpu")
        first = next(self.model.parameters(), None)  # an ONNX model (csa.runtime) has none: CPU
        return first.device if first is not None else torch.device("cpu")

    def model_info(self) -> dict[str, Any]:
        """What is loaded, for ``GET /api/v1/model`` and reports."""
        info: dict[str, Any] = {
            "name": self.name,
            "method": "csa" if self.model is not None else self.name,
            "weights": str(self.weights) if self.weights else None,
            "file_size": self.weights.stat().st_size if self.weights and self.weights.is_file() else None,
            "parameters": (getattr(self.model, "parameter_count", None) or sum(p.numel() for p in self.model.parameters()))
            if self.model is not None else 0,
            "runtime": getattr(self.model, "runtime", "pytorch") if self.model is not None else None,
            "config": self.model.config.to_dict() if self.model is not None else None,
            "image_size": self.image_size,
            "device": str(self.device),
            "strategies": list(STRATEGIES) if self.model is not None else [],
            "default_strategy": self.strategy or f"resize up to {self.image_size} px, crop above",
            "native_max_pixels": self.native_max_pixels,
            "max_pixels": self.max_pixels,
        }
        return info

    def resolve_strategy(self, strategy: Optional[str], width: int, height: int) -> str:
        """The strategy a call uses: the one asked for, the instance's, or by size."""
        chosen = strategy or self.strategy
        if chosen is not None:
            return _check_strategy(chosen)
        return "crop" if max(width, height) > self.image_size else "resize"

    # -- calls -----------------------------------------------------------------------------------

    def __call__(
        self,
        image: ImageSource,
        mask: Optional[ImageSource] = None,
        *,
        invert: bool = False,
        mask_from_alpha: bool = False,
        resize_mask: bool = False,
        strategy: Optional[str] = None,
    ) -> Image.Image:
        """Inpaint one image; returns a PIL image of the input's size (grey stays grey, alpha is kept).

        ``image`` and ``mask``: paths, bytes, PIL images or arrays. Mask arrays may be bool,
        0/1 or 0-255 (True / 1 / >= 128 = hole); mask files: white (>= 128) = hole.
        16-bit colour images come back as 8-bit PIL images (Pillow has no such mode): use
        :meth:`inpaint_array` or :meth:`inpaint_file` to keep 16 bits.
        """
        out = self.inpaint_array(image, mask, invert=invert, mask_from_alpha=mask_from_alpha,
                                 resize_mask=resize_mask, strategy=strategy)
        return to_pil(out)

    def inpaint_array(
        self,
        image: ImageSource,
        mask: Optional[ImageSource] = None,
        *,
        invert: bool = False,
        mask_from_alpha: bool = False,
        resize_mask: bool = False,
        strategy: Optional[str] = None,
    ) -> np.ndarray:
        """Like calling the inpainter, but returns an array: H x W (grey) or H x W x C, the input's dtype."""
        inputs = load_inputs(image, mask, invert=invert, mask_from_alpha=mask_from_alpha,
                             resize_mask=resize_mask, max_pixels=self.max_pixels)
        out = self.inpaint_inputs(inputs, strategy=strategy)
        return out[:, :, 0] if out.shape[2] == 1 else out

    def batch(
        self,
        images: Sequence[ImageSource],
        masks: Union[Sequence[ImageSource], ImageSource],
        **kwargs: Any,
    ) -> list[Image.Image]:
        """Inpaint several images: one mask per image, or one mask (not a list) for all.

        One model call per image: sizes may differ, and the CSA layer works per sample anyway.
        """
        images = list(images)
        if isinstance(masks, (list, tuple)):
            if len(masks) != len(images):
                raise CsaError(f"{len(images)} images but {len(masks)} masks: give one mask per image, or one for all")
            pairs = list(zip(images, masks))
        else:
            pairs = [(image, masks) for image in images]
        return [self(image, mask, **kwargs) for image, mask in pairs]

    def inpaint_file(
        self,
        image: Union[ImageSource, Inputs],
        mask: Optional[ImageSource],
        output: Union[str, os.PathLike],
        *,
        invert: bool = False,
        mask_from_alpha: bool = False,
        resize_mask: bool = False,
        strategy: Optional[str] = None,
        explain: Optional[Union[str, os.PathLike]] = None,
    ) -> "FileResult":
        """Inpaint and write ``output`` atomically (16 bits kept in PNG); checks ``output`` first.

        ``explain``: also write the sources picture there (a .png) and its arrays next to it
        (.npz), see :meth:`explain`.
        """
        fmt = output_format(output)
        if explain is not None:
            from .explain import check_map_path

            check_map_path(explain)
        t0 = time.perf_counter()
        inputs = image if isinstance(image, Inputs) else load_inputs(
            image, mask, invert=invert, mask_from_alpha=mask_from_alpha,
            resize_mask=resize_mask, max_pixels=self.max_pixels)
        _warn_format(fmt, inputs.image, output)
        used = self.resolve_strategy(strategy, *inputs.size) if self.model is not None else self.name
        if explain is not None:
            explanation = self.explain(inputs, strategy=strategy)
            out = explanation.result
            save_array(out, output)
            explanation.save(explain)
        else:
            out = self.inpaint_inputs(inputs, strategy=strategy)
            save_array(out, output)
        return FileResult(Path(output), inputs.size, int(inputs.hole.sum()), used, time.perf_counter() - t0)

    def inpaint_inputs(
        self, inputs: Inputs, strategy: Optional[str] = None, trace: Optional[list] = None
    ) -> np.ndarray:
        """The core: fill the hole of checked inputs; returns H x W x C in the input's dtype.

        ``trace``: a list that receives one :class:`csa.explain.Frame` per model run (what
        :meth:`explain` reads); None records nothing.
        """
        arr, hole = inputs.image, inputs.hole
        if not hole.any():
            warnings.warn(InpaintWarning("the mask has no hole pixels: the image is returned unchanged"), stacklevel=2)
            return arr.copy()
        if hole.all():
            raise CsaError("the mask covers the whole image: nothing is left to fill the hole from. "
                           "Leave part of the image unmasked (or pass {invert} if black marks the hole)", options=("invert",))
        used = self.resolve_strategy(strategy, arr.shape[1], arr.shape[0])
        out = arr.copy()
        with self._lock, _recording(self._csa_layers() if trace is not None else []):
            if self.fill is not None:
                self._fill_baseline(arr, hole, out)
            elif used == "native":
                self._fill_native(arr, hole, out, trace)
            elif used == "crop":
                for box in crop_boxes(hole, self.image_size):
                    self._fill_region(arr, hole, out, box, trace)
            else:
                self._fill_region(arr, hole, out, (0, 0, arr.shape[0], arr.shape[1]), trace)
        if inputs.alpha_is_mask:  # the hole was transparent: the filled pixels must show
            out[:, :, -1][hole] = np.iinfo(out.dtype).max
        return out

    # -- strategies ------------------------------------------------------------------------------

    def _tensor(self, arr: np.ndarray, hole: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """H x W x C integers -> 1 x 3 x H x W float in [0, 1] (hole grey) and 1 x 1 x H x W hole."""
        colour = arr[:, :, :3] if arr.shape[2] >= 3 else np.repeat(arr[:, :, :1], 3, axis=2)
        scale = float(np.iinfo(arr.dtype).max)
        # Move the compact integers, convert on the device.
        src = colour.astype(np.int32) if arr.dtype == np.uint16 else np.ascontiguousarray(colour)  # no uint16 math in torch
        if not src.flags.writeable:  # arrays from Pillow are read-only; torch wants writable memory
            src = src.copy()
        x = torch.from_numpy(src).to(self.device).permute(2, 0, 1)[None].float() / scale
        h = torch.from_numpy(np.array(hole, dtype=bool)).to(self.device)[None, None].float()
        return torch.where(h > 0.5, torch.full_like(x, HOLE_PLACEHOLDER), x), h

    def _run_model(self, x: torch.Tensor, hole: torch.Tensor, where: str) -> torch.Tensor:
        """The generator on [0, 1] inputs with sides multiples of 256; returns the composite in [0, 1]."""
        from .nn.attention import feature_mask
        from .nn.generator import CSA_DOWNSAMPLINGS

        known = (feature_mask(hole, CSA_DOWNSAMPLINGS) < 0.5).flatten(1).any(dim=1)
        if not bool(known.all()):
            raise CsaError(
                f"{where}, the mask leaves no known area at the model's feature resolution (1/8 of its input): "
                "there is nothing to copy from. Leave more of the image unmasked, or try another --strategy"
            )
        with torch.inference_mode():
            out = self.model(x * 2.0 - 1.0, hole)
        return (out.composite.float() + 1.0) / 2.0

    def _fill_region(
        self, arr: np.ndarray, hole: np.ndarray, out: np.ndarray, box: Box, trace: Optional[list] = None
    ) -> None:
        """resize / crop: the region scaled to fit S x S, mirror-padded, filled, scaled back, pasted."""
        top, left, bottom, right = box
        x, h = self._tensor(arr[top:bottom, left:right], hole[top:bottom, left:right])
        height, width = bottom - top, right - left
        size = self.image_size
        scale = size / max(height, width)
        fit = (max(1, min(size, round(height * scale))), max(1, min(size, round(width * scale))))
        xs, hs = _resize(x, fit), _resize_hole_t(h, fit)
        canvas = _round_up(size)
        pt, pl = (canvas - fit[0]) // 2, (canvas - fit[1]) // 2
        pads = (pt, canvas - fit[0] - pt, pl, canvas - fit[1] - pl)
        xs = _pad_mirror(xs, *pads)
        hs = F.pad(hs, (pads[2], pads[3], pads[0], pads[1]), value=0.0)  # padding counts as known
        where = f"scaled to the model's {canvas}x{canvas} input"
        filled = self._run_model(xs, hs, where)[:, :, pt:pt + fit[0], pl:pl + fit[1]]
        _paste(out, box, _resize(filled, (height, width)), hole[top:bottom, left:right])
        if trace is not None:
            self._trace_frame(trace, box, fit, (pt, pl), (canvas, canvas))

    def _fill_native(self, arr: np.ndarray, hole: np.ndarray, out: np.ndarray, trace: Optional[list] = None) -> None:
        """native: mirror-pad to multiples of 256 and run at full resolution."""
        height, width = hole.shape
        ph, pw = _round_up(height), _round_up(width)
        if self.native_max_pixels is not None and ph * pw > self.native_max_pixels:
            raise CsaError(
                f"--strategy native runs the whole image at full resolution and is limited to "
                f"{self.native_max_pixels:,} pixels after padding to multiples of {SIDE_MULTIPLE} "
                f"(this one: {ph}x{pw} = {ph * pw:,}): use --strategy crop or resize"
            )
        x, h = self._tensor(arr, hole)
        x = _pad_mirror(x, 0, ph - height, 0, pw - width)
        h = F.pad(h, (0, pw - width, 0, ph - height), value=0.0)
        filled = self._run_model(x, h, f"at full resolution ({pw}x{ph})")[:, :, :height, :width]
        _paste(out, (0, 0, height, width), filled, hole)
        if trace is not None:
            self._trace_frame(trace, (0, 0, height, width), (height, width), (0, 0), (ph, pw))

    # -- explain ---------------------------------------------------------------------------------

    def _csa_layers(self) -> list:
        from .nn.attention import CoherentSemanticAttention

        return [m for m in self.model.modules() if isinstance(m, CoherentSemanticAttention)] if self.model else []

    def _trace_frame(self, trace: list, box: Box, fit: tuple[int, int], offset: tuple[int, int],
                     canvas: tuple[int, int]) -> None:
        from .explain import frame_from_layer

        (layer,) = self._csa_layers()
        trace.append(frame_from_layer(layer.last_sources, box, fit, offset, canvas))

    def explain(
        self,
        image: Union[ImageSource, Inputs],
        mask: Optional[ImageSource] = None,
        *,
        invert: bool = False,
        mask_from_alpha: bool = False,
        resize_mask: bool = False,
        strategy: Optional[str] = None,
    ) -> "Explanation":
        """Inpaint like a call and say where each filled region came from (:mod:`csa.explain`).

        Returns a :class:`csa.explain.Explanation`: ``result`` (the inpainted array),
        ``sources`` / ``dominant`` (H x W x 2 int32, input-image coordinates), ``blend`` and
        ``picture()``. Only our PyTorch model has the CSA layer's choices: classical methods
        and exported (ONNX, TorchScript) models raise CsaError.
        """
        from .explain import build, refuse

        if self.fill is not None:
            raise refuse(f"the classical method {self.name!r}", "it has no attention layer")
        runtime = getattr(self.model, "runtime", None)
        if runtime is not None:  # csa.runtime's exports: the graph runs as a whole, its layer's choices stay inside
            raise refuse(f"the exported {runtime} model {self.name!r}", "an export runs the CSA layer inside its graph")
        if len(self._csa_layers()) != 1:
            raise refuse(f"the model {self.name!r}", "it has no single CSA layer")
        inputs = image if isinstance(image, Inputs) else load_inputs(
            image, mask, invert=invert, mask_from_alpha=mask_from_alpha,
            resize_mask=resize_mask, max_pixels=self.max_pixels)
        frames: list = []
        out = self.inpaint_inputs(inputs, strategy=strategy, trace=frames)
        used = self.resolve_strategy(strategy, *inputs.size)
        return build(inputs.image, out, inputs.hole, used, frames)

    def _fill_baseline(self, arr: np.ndarray, hole: np.ndarray, out: np.ndarray) -> None:
        colour = arr[:, :, :3] if arr.shape[2] >= 3 else np.repeat(arr[:, :, :1], 3, axis=2)
        rgb8 = np.ascontiguousarray(array_to_8bit(colour))
        filled = np.asarray(self.fill(rgb8, hole), dtype=np.float32) / 255.0
        _paste(out, (0, 0, *hole.shape), torch.from_numpy(filled).permute(2, 0, 1)[None], hole)


class _recording:
    """Context: the given CSA layers keep their choices (record_sources) inside, not after."""

    def __init__(self, layers: list) -> None:
        self.layers = layers

    def __enter__(self) -> None:
        for layer in self.layers:
            layer.record_sources = True

    def __exit__(self, *exc: Any) -> None:
        for layer in self.layers:
            layer.record_sources = False
            layer.last_sources = None


def _check_strategy(strategy: str) -> str:
    key = str(strategy).strip().lower()
    if key not in STRATEGIES:
        raise CsaError(f"unknown strategy {strategy!r}: choose one of {', '.join(STRATEGIES)}")
    return key


def _paste(out: np.ndarray, box: Box, filled: torch.Tensor, hole: np.ndarray) -> None:
    """Write the filled colour into the hole pixels of ``out`` (in place), in ``out``'s dtype.

    Known pixels and the alpha channel are never written: this is why they stay exact.
    """
    top, left, bottom, right = box
    rgb = filled[0].permute(1, 2, 0).float().cpu().numpy()  # h x w x 3 in [0, 1]
    grey = out.shape[2] <= 2
    values = (rgb @ LUMA)[:, :, None] if grey else rgb
    top_value = np.iinfo(out.dtype).max
    quantised = np.clip(np.rint(values * top_value), 0, top_value).astype(out.dtype)
    region = out[top:bottom, left:right, : 1 if grey else 3]  # a view: writes go to ``out``
    region[hole] = quantised[hole]


def to_pil(arr: np.ndarray) -> Image.Image:
    """An inpainted array as a PIL image (16-bit colour -> 8 bits, with a warning)."""
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if arr.dtype == np.uint16 and arr.ndim == 3:
        warnings.warn(InpaintWarning("Pillow has no 16-bit colour mode: the result is returned with 8 bits; "
                                     "use inpaint_array() or inpaint_file() to keep 16 bits"), stacklevel=3)
        arr = array_to_8bit(arr)
    return array_to_pil(np.ascontiguousarray(arr))


def _warn_format(fmt: str, arr: np.ndarray, output: Union[str, os.PathLike]) -> None:
    if fmt not in LOSSLESS_FORMATS:
        warnings.warn(InpaintWarning(f"{fmt} is lossy: the known pixels of {output} will not equal the input "
                                     "exactly; write a .png for an exact result"), stacklevel=3)
    if arr.dtype == np.uint16 and fmt not in ("PNG", "TIFF"):
        warnings.warn(InpaintWarning(f"{fmt} holds 8 bits per channel: the 16-bit image is written with 8"), stacklevel=3)
    if arr.shape[2] in (2, 4) and fmt == "JPEG":
        warnings.warn(InpaintWarning("JPEG has no alpha channel: the transparency is dropped"), stacklevel=3)


# --- files and folders (what `csa inpaint` runs) ------------------------------------------------


@dataclass
class FileResult:
    output: Path
    size: tuple[int, int]  # width, height
    hole_pixels: int
    strategy: str  # the strategy used (or the baseline's name)
    seconds: float


@dataclass
class FolderReport:
    out_dir: Path
    done: list[FileResult] = field(default_factory=list)
    failed: list[tuple[Path, str]] = field(default_factory=list)

    def summary(self) -> str:
        total = len(self.done) + len(self.failed)
        line = f"inpainted {len(self.done)} of {total} images into {self.out_dir}"
        return line + (f"; {len(self.failed)} failed (listed above)" if self.failed else "")


def _log_stderr(message: str) -> None:
    print(message, file=sys.stderr)


def inpaint_path(
    image: Union[str, os.PathLike],
    mask: Optional[Union[str, os.PathLike]],
    output: Union[str, os.PathLike],
    *,
    weights: Optional[Union[str, os.PathLike]] = None,
    device: str = "cpu",
    method: str = "csa",
    strategy: Optional[str] = None,
    invert: bool = False,
    mask_from_alpha: bool = False,
    resize_mask: bool = False,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    explain: Optional[Union[str, os.PathLike]] = None,
) -> FileResult:
    """One image file -> one output file (and with ``explain`` the sources picture and .npz).
    Inputs and the output paths are checked before the model loads."""
    output_format(output)
    if explain is not None:
        from .explain import check_map_path

        check_map_path(explain)
        _check_explainable(method)
    if strategy is not None:
        _check_strategy(strategy)
    if method.strip().lower() == "csa" and weights is None:
        default_weights_path()  # fail fast, before reading anything
    inputs = load_inputs(image, mask, invert=invert, mask_from_alpha=mask_from_alpha,
                         resize_mask=resize_mask, max_pixels=max_pixels)
    inpainter = Inpainter.from_method(method, weights, device=device, max_pixels=max_pixels)
    return inpainter.inpaint_file(inputs, None, output, strategy=strategy, explain=explain)


def _check_explainable(method: str) -> None:
    """--explain with a classical method: refuse before anything is read or loaded."""
    if method.strip().lower() != "csa":
        from .explain import refuse

        raise refuse(f"the classical method {method.strip().lower()!r}", "it has no attention layer")


def list_images(folder: Path) -> list[Path]:
    """The image files of a folder (not recursive, hidden files skipped), sorted by name."""
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES)


def _mask_finder(masks: Path) -> Callable[[Path], Path]:
    """One mask file for all images, or a folder matched by file stem (``<stem>.*`` or ``<stem>_mask.*``)."""
    if not masks.is_dir():
        return lambda _image: masks  # a missing or bad file is reported by the reader, per image
    by_stem: dict[str, list[Path]] = {}
    for p in list_images(masks):
        by_stem.setdefault(p.stem, []).append(p)

    def find(image: Path) -> Path:
        for stem in (image.stem, f"{image.stem}_mask"):
            found = [p for p in by_stem.get(stem, []) if p.resolve() != image.resolve()]
            if len(found) > 1:
                raise CsaError(f"several masks match {image.name} in {masks}: {', '.join(p.name for p in found)}")
            if found:
                return found[0]
        raise CsaError(f"no mask for {image.name} in {masks}: name it {image.stem}.png (same stem as the image)")

    return find


def inpaint_folder(
    images_dir: Union[str, os.PathLike],
    masks: Union[str, os.PathLike],
    out_dir: Union[str, os.PathLike],
    *,
    weights: Optional[Union[str, os.PathLike]] = None,
    device: str = "cpu",
    method: str = "csa",
    strategy: Optional[str] = None,
    invert: bool = False,
    mask_from_alpha: bool = False,
    resize_mask: bool = False,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    progress: bool = True,
    log: Callable[[str], None] = _log_stderr,
    explain: Optional[Union[str, os.PathLike]] = None,
) -> FolderReport:
    """Every image of ``images_dir`` -> ``out_dir/<stem>.png``; bad files are reported, the rest done.

    ``explain``: a folder that receives ``<stem>.png`` (sources picture) and ``<stem>.npz`` per image.
    """
    from tqdm import tqdm

    images_dir, masks, out_dir = Path(images_dir), Path(masks), Path(out_dir)
    explain_dir = Path(explain) if explain is not None else None
    if explain_dir is not None:
        _check_explainable(method)
        if explain_dir.exists() and not explain_dir.is_dir():
            raise CsaError(f"--explain {explain_dir} is a file: in folder mode it names a folder")
        if explain_dir.resolve() in (out_dir.resolve(), images_dir.resolve()):
            raise CsaError(f"--explain {explain_dir} is the output or the input folder: choose a folder of its own")
    if strategy is not None:
        _check_strategy(strategy)
    files = list_images(images_dir)
    if masks.is_dir() and masks.resolve() == images_dir.resolve():
        files = [p for p in files if not p.stem.endswith("_mask")]
    if not files:
        raise CsaError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {images_dir}")
    if not masks.exists():
        raise CsaError(f"mask not found: {masks}: give a mask file, or a folder of masks named like the images")
    if method.strip().lower() == "csa" and weights is None:
        default_weights_path()  # fail fast, before creating the output folder
    if out_dir.exists() and not out_dir.is_dir():
        raise CsaError(f"output {out_dir} is a file: in folder mode -o names a folder")
    if out_dir.resolve() == images_dir.resolve():
        raise CsaError(f"the output folder is the input folder {images_dir}: choose another -o, inputs would be overwritten")
    try:
        out_dir.mkdir(exist_ok=True)
    except OSError as exc:
        raise CsaError(f"cannot create the output folder {out_dir} ({exc.strerror}): create its parent first") from None
    if explain_dir is not None:
        try:
            explain_dir.mkdir(exist_ok=True)
        except OSError as exc:
            raise CsaError(f"cannot create the --explain folder {explain_dir} ({exc.strerror}): create its parent first") from None
    find_mask = _mask_finder(masks)
    inpainter = Inpainter.from_method(method, weights, device=device, max_pixels=max_pixels)

    report = FolderReport(out_dir)
    stems: dict[str, Path] = {}
    bar = tqdm(files, unit="image", disable=not progress, file=sys.stderr, dynamic_ncols=True)
    say = (lambda m: tqdm.write(m, file=sys.stderr)) if progress else log
    for path in bar:
        try:
            if path.stem in stems:
                raise CsaError(f"{stems[path.stem].name} has the same stem: both would be written to {path.stem}.png")
            stems[path.stem] = path
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", InpaintWarning)
                result = inpainter.inpaint_file(path, find_mask(path), out_dir / f"{path.stem}.png",
                                                invert=invert, mask_from_alpha=mask_from_alpha,
                                                resize_mask=resize_mask, strategy=strategy,
                                                explain=explain_dir / f"{path.stem}.png" if explain_dir else None)
            for w in caught:
                say(f"warning: {path.name}: {w.message}")
            report.done.append(result)
        except CsaError as exc:
            report.failed.append((path, exc.render("cli")))  # folder mode is the command line's
            say(f"error: {path.name}: {exc.render('cli')}")
    bar.close()
    return report
