"""The one inference pipeline: strategy, fill, paste, for any :class:`csa.methods.Method`.

The method works on a canvas its :class:`~csa.methods.SizeRules` allow; the strategies
bring any image to such canvases (S = the rules' ``size``):

``resize``  the whole image scaled to fit S x S (aspect kept; mirror-padded to the
            method's square canvas when it needs one), filled, scaled back; only the
            hole's pixels are pasted back.
``crop``    for each connected hole region (regions whose crops would touch are merged),
            a square crop of ``CROP_CONTEXT`` times the region's size (at least S), scaled
            to fit S x S, filled, scaled back and pasted.
``native``  the image mirror-padded to the method's side multiple and run at full
            resolution, up to the rules' ``native_max_pixels``.

Known pixels always equal the input exactly: the final composite happens at the original
resolution in the original dtype; resampling only ever touches the hole.
"""
from __future__ import annotations

import math
import warnings
from typing import TYPE_CHECKING, Optional

import numpy as np
import torch
import torch.nn.functional as F

from .errors import CsaError, InpaintWarning
from .methods import STRATEGIES, SizeRules
from .padding import pad_mirror

if TYPE_CHECKING:
    from .inputs import Inputs
    from .methods import Method

#: ``crop``: a crop's side is this many times the hole region's longer side (at least S), so
#: the hole covers at most about a quarter of what the model sees.
CROP_CONTEXT = 2.0
#: Hole pixels are unknown: they are set to neutral grey before any resampling so that no
#: garbage from inside the hole bleeds into the known pixels the model sees.
HOLE_PLACEHOLDER = 0.5
#: Luma weights for grey images (ITU-R 601, as Pillow's RGB -> L).
LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)

Box = tuple[int, int, int, int]  # top, left, bottom, right (exclusive)


def check_strategy(strategy: str) -> str:
    key = str(strategy).strip().lower()
    if key not in STRATEGIES:
        raise CsaError(f"unknown strategy {strategy!r}: choose one of {', '.join(STRATEGIES)}")
    return key


def resolve_strategy(rules: SizeRules, strategy: Optional[str], width: int, height: int) -> str:
    """The strategy asked for (checked), or the rules' default for this size."""
    if strategy is not None:
        return check_strategy(strategy)
    return rules.default_strategy(width, height)


def run(method: "Method", rules: SizeRules, inputs: "Inputs", strategy: Optional[str] = None,
        trace: Optional[list] = None) -> np.ndarray:
    """Fill the hole of checked inputs; returns H x W x C in the input's dtype.

    ``trace``: a list that receives one :class:`csa.explain.Frame` per method run; None
    records nothing.
    """
    arr, hole = inputs.image, inputs.hole
    if not hole.any():
        warnings.warn(InpaintWarning("the mask has no hole pixels: the image is returned unchanged"), stacklevel=3)
        return arr.copy()
    if hole.all():
        raise CsaError("the mask covers the whole image: nothing is left to fill the hole from. "
                       "Leave part of the image unmasked (or pass {invert} if black marks the hole)", options=("invert",))
    used = resolve_strategy(rules, strategy, arr.shape[1], arr.shape[0])
    out = arr.copy()
    with method.recording(trace is not None):
        if used == "native":
            _fill_native(method, rules, arr, hole, out, trace)
        elif used == "crop":
            for box in crop_boxes(hole, rules.size):
                _fill_region(method, rules, arr, hole, out, box, trace)
        else:
            _fill_region(method, rules, arr, hole, out, (0, 0, arr.shape[0], arr.shape[1]), trace)
    if inputs.alpha_is_mask:  # the hole was transparent: the filled pixels must show
        out[:, :, -1][hole] = np.iinfo(out.dtype).max
    return out


# --- the strategies ---------------------------------------------------------------------------


def _fill_region(method: "Method", rules: SizeRules, arr: np.ndarray, hole: np.ndarray, out: np.ndarray,
                 box: Box, trace: Optional[list]) -> None:
    """resize / crop: the region scaled to fit S x S, padded to the canvas, filled, scaled back, pasted."""
    top, left, bottom, right = box
    x, h = _tensor(arr[top:bottom, left:right], hole[top:bottom, left:right], method)
    height, width = bottom - top, right - left
    size = rules.size
    scale = size / max(height, width)
    fit = (max(1, min(size, round(height * scale))), max(1, min(size, round(width * scale))))
    xs, hs = _resize(x, fit), _resize_hole_t(h, fit)
    canvas = rules.canvas(fit)
    pt, pl = (canvas[0] - fit[0]) // 2, (canvas[1] - fit[1]) // 2
    pads = (pt, canvas[0] - fit[0] - pt, pl, canvas[1] - fit[1] - pl)
    xs = pad_mirror(xs, *pads)
    hs = F.pad(hs, (pads[2], pads[3], pads[0], pads[1]), value=0.0)  # padding counts as known
    where = f"scaled to the model's {canvas[1]}x{canvas[0]} input"
    filled = method.forward(xs, hs, where)[:, :, pt:pt + fit[0], pl:pl + fit[1]]
    _paste(out, box, _resize(filled, (height, width)), hole[top:bottom, left:right])
    if trace is not None:
        trace.append(method.frame(box, fit, (pt, pl), canvas))


def _fill_native(method: "Method", rules: SizeRules, arr: np.ndarray, hole: np.ndarray, out: np.ndarray,
                 trace: Optional[list]) -> None:
    """native: mirror-pad to the side multiple and run at full resolution."""
    height, width = hole.shape
    ph, pw = rules.padded(height, width)
    if rules.native_max_pixels is not None and ph * pw > rules.native_max_pixels:
        raise CsaError(
            f"--strategy native runs the whole image at full resolution and is limited to "
            f"{rules.native_max_pixels:,} pixels after padding to multiples of {rules.multiple} "
            f"(this one: {ph}x{pw} = {ph * pw:,}): use --strategy crop or resize"
        )
    x, h = _tensor(arr, hole, method)
    x = pad_mirror(x, 0, ph - height, 0, pw - width)
    h = F.pad(h, (0, pw - width, 0, ph - height), value=0.0)
    filled = method.forward(x, h, f"at full resolution ({pw}x{ph})")[:, :, :height, :width]
    _paste(out, (0, 0, height, width), filled, hole)
    if trace is not None:
        trace.append(method.frame((0, 0, height, width), (height, width), (0, 0), (ph, pw)))


# --- in and out ---------------------------------------------------------------------------------


def _tensor(arr: np.ndarray, hole: np.ndarray, method: "Method") -> tuple[torch.Tensor, torch.Tensor]:
    """H x W x C integers -> 1 x 3 x H x W in [0, 1] (hole grey) and 1 x 1 x H x W hole, on the method's device."""
    colour = arr[:, :, :3] if arr.shape[2] >= 3 else np.repeat(arr[:, :, :1], 3, axis=2)
    scale = float(np.iinfo(arr.dtype).max)
    # Move the compact integers, convert on the device.
    src = colour.astype(np.int32) if arr.dtype == np.uint16 else np.ascontiguousarray(colour)  # no uint16 math in torch
    if not src.flags.writeable:  # arrays from Pillow are read-only; torch wants writable memory
        src = src.copy()
    device = method.device
    x = torch.from_numpy(src).to(device).permute(2, 0, 1)[None].to(method.input_dtype) / scale
    h = torch.from_numpy(np.array(hole, dtype=bool)).to(device)[None, None].float()
    return torch.where(h > 0.5, torch.full_like(x, HOLE_PLACEHOLDER), x), h


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


# --- resampling helpers (float tensors in [0, 1], N x C x H x W) ----------------------------


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
