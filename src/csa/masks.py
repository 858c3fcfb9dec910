"""Masks: seeded generators, mask-folder reading, PConv-style augmentation, a per-sample sampler.

Every mask here is an ``H x W`` bool array, True = hole (docs/conventions.md, 'Tensors and arrays'). Generators are
deterministic given a seed (an int or a :class:`numpy.random.Generator`):

=============== ==============================================================================
kind            what (sizes are for 256 x 256 and scale with the shorter side)
=============== ==============================================================================
``centre``      a centred square half the shorter side (128 on 256): hole ratio 0.25
``centre:N``    a centred N x N square (``centre:120`` is the release's setting)
``rect``        one axis-aligned rectangle, each side U[1/4, 1/2] of the image side, anywhere
``rect:N``      an N x N square anywhere in the image
``freeform``    DeepFill v2 free-form brush strokes (docs/method.md, 'Masks')
``lama-thin``   LaMa's "thin" strokes
``lama-medium`` LaMa's "medium" strokes, or boxes
``lama-thick``  LaMa's "thick" strokes, or boxes
=============== ==============================================================================

Kinds join with ``+`` into a union (``freeform+rect``), drawn in order from one generator.
``center`` is accepted for ``centre``. Drawing uses Pillow only (no OpenCV), so training
needs no optional dependency.
"""
from __future__ import annotations

import csv
import io
import math
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Optional, Sequence, Union

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from .errors import CsaError
from .imageio import DEFAULT_MAX_PIXELS, IMAGE_SUFFIXES, atomic_write, read_mask

SeedLike = Union[int, np.random.Generator]
Size = Union[int, tuple[int, int]]

#: Hole-ratio buckets of the NVIDIA irregular mask set and of later papers' tables:
#: (low, high, name), a ratio r falls in a bucket when ``low < r <= high`` (PConv's intervals).
RATIO_BUCKETS: tuple[tuple[float, float, str], ...] = (
    (0.01, 0.1, "0.01-0.1"),
    (0.1, 0.2, "0.1-0.2"),
    (0.2, 0.3, "0.2-0.3"),
    (0.3, 0.4, "0.3-0.4"),
    (0.4, 0.5, "0.4-0.5"),
    (0.5, 0.6, "0.5-0.6"),
)
OTHER_BUCKET = "other"
BUCKET_NAMES: tuple[str, ...] = tuple(b[2] for b in RATIO_BUCKETS) + (OTHER_BUCKET,)

MASK_SUFFIXES = IMAGE_SUFFIXES  # one list: csa.imageio.IMAGE_SUFFIXES
POLARITIES = ("white-hole", "black-hole", "auto")


def ratio_bucket(ratio: float) -> str:
    """The bucket name of a hole ratio: "0.01-0.1", ..., "0.5-0.6", or "other".

    Intervals are open below and closed above, (0.01, 0.1], (0.1, 0.2], ... as in PConv;
    a ratio of at most 0.01 or above 0.6 is "other".
    """
    for low, high, name in RATIO_BUCKETS:
        if low < ratio <= high:
            return name
    return OTHER_BUCKET


def hole_ratio(mask: np.ndarray) -> float:
    """Fraction of hole pixels."""
    return float(np.count_nonzero(mask)) / float(mask.size)


# --- generators ---------------------------------------------------------------------------


def _rng(seed: SeedLike) -> np.random.Generator:
    if isinstance(seed, np.random.Generator):
        return seed
    if isinstance(seed, (int, np.integer)) and not isinstance(seed, bool):
        if seed < 0:
            raise CsaError(f"a mask seed must be >= 0, got {seed}")
        return np.random.default_rng(int(seed))
    raise CsaError(f"a mask seed must be an int or numpy Generator, got {type(seed).__name__}")


def _hw(size: Size) -> tuple[int, int]:
    if isinstance(size, (int, np.integer)):
        h = w = int(size)
    else:
        try:
            h, w = (int(s) for s in size)
        except (TypeError, ValueError):
            raise CsaError(f"mask size must be an int or (height, width), got {size!r}") from None
    if h < 8 or w < 8:
        raise CsaError(f"mask size must be at least 8 x 8, got {h} x {w}")
    return h, w


class _Canvas:
    """A Pillow 'L' image to draw holes on (255 = hole)."""

    def __init__(self, h: int, w: int) -> None:
        self.img = Image.new("L", (w, h), 0)
        self.draw = ImageDraw.Draw(self.img)

    def stroke(self, points: Sequence[tuple[float, float]], width: float) -> None:
        """A polyline with round caps and joints: segments plus a disc at every vertex."""
        w = max(1, int(round(width)))
        pts = [(float(x), float(y)) for x, y in points]
        if len(pts) > 1:
            self.draw.line(pts, fill=255, width=w)
        r = w / 2.0
        for x, y in pts:
            self.draw.ellipse((x - r, y - r, x + r, y + r), fill=255)

    def box(self, x0: int, y0: int, x1: int, y1: int) -> None:
        """Fill [x0, x1) x [y0, y1)."""
        if x1 > x0 and y1 > y0:
            self.draw.rectangle((x0, y0, x1 - 1, y1 - 1), fill=255)

    def array(self) -> np.ndarray:
        return np.asarray(self.img) >= 128


def _centre(h: int, w: int, rng: np.random.Generator, arg: Optional[int]) -> np.ndarray:
    """Centred square, side ``arg`` or half the shorter side. Ratio side^2 / (H W); no randomness."""
    side = min(h, w) // 2 if arg is None else arg
    if side > min(h, w):
        raise CsaError(f"centre:{side} does not fit in a {h} x {w} image: use a side of at most {min(h, w)}")
    mask = np.zeros((h, w), dtype=bool)
    top, left = (h - side) // 2, (w - side) // 2
    mask[top : top + side, left : left + side] = True
    return mask


def _rect(h: int, w: int, rng: np.random.Generator, arg: Optional[int]) -> np.ndarray:
    """One rectangle fully inside the image.

    ``rect``: height U{H//4..H//2}, width U{W//4..W//2} (integers), so the hole ratio is in
    [1/16, 1/4] up to rounding. ``rect:N``: an N x N square, ratio N^2 / (H W).
    """
    if arg is None:
        bh = int(rng.integers(h // 4, h // 2 + 1))
        bw = int(rng.integers(w // 4, w // 2 + 1))
    else:
        if arg > min(h, w):
            raise CsaError(f"rect:{arg} does not fit in a {h} x {w} image: use a side of at most {min(h, w)}")
        bh = bw = arg
    top = int(rng.integers(0, h - bh + 1))
    left = int(rng.integers(0, w - bw + 1))
    mask = np.zeros((h, w), dtype=bool)
    mask[top : top + bh, left : left + bw] = True
    return mask


def _freeform(h: int, w: int, rng: np.random.Generator, arg: Optional[int]) -> np.ndarray:
    """DeepFill v2 free-form strokes (docs/method.md, 'Masks').

    1-3 strokes; each starts at a random pixel and makes 4-11 moves. A stroke picks an
    angle band [2pi/5 - U(0, 2pi/15), 2pi/5 + U(0, 2pi/15)] and its moves alternate
    between an angle in the band and 2pi minus one, so strokes zig-zag instead of
    curling. Move length ~ N(r, r/2) clipped to [0, 2r], r = sqrt(H^2 + W^2) / 8; points
    are clipped to the image. Width U(12, 40) pixels at 256 (scaled with the shorter
    side), round caps and joints. Then a random horizontal and vertical flip.

    Hole ratio at 256 (1,000 masks, seeds 0-999): 0.008 to 0.51, median 0.15, mean 0.16;
    never empty (a stroke of zero-length moves is still a disc).
    """
    scale = min(h, w) / 256.0
    r = math.sqrt(h * h + w * w) / 8.0
    mean_angle, angle_range = 2 * math.pi / 5, 2 * math.pi / 15
    canvas = _Canvas(h, w)
    for _ in range(int(rng.integers(1, 4))):
        moves = int(rng.integers(4, 12))
        lo = mean_angle - rng.uniform(0, angle_range)
        hi = mean_angle + rng.uniform(0, angle_range)
        x, y = float(rng.integers(0, w)), float(rng.integers(0, h))
        points = [(x, y)]
        for i in range(moves):
            angle = rng.uniform(lo, hi)
            if i % 2 == 0:
                angle = 2 * math.pi - angle
            length = float(np.clip(rng.normal(r, r / 2), 0, 2 * r))
            x = float(np.clip(x + length * math.cos(angle), 0, w - 1))
            y = float(np.clip(y + length * math.sin(angle), 0, h - 1))
            points.append((x, y))
        canvas.stroke(points, rng.uniform(12, 40) * scale)
    mask = canvas.array()
    if rng.random() < 0.5:
        mask = mask[:, ::-1]
    if rng.random() < 0.5:
        mask = mask[::-1, :]
    return np.ascontiguousarray(mask)


def _lama_strokes(
    canvas: _Canvas, h: int, w: int, rng: np.random.Generator, scale: float,
    min_times: int, max_times: int, max_width: int, max_len: int, max_angle: int = 4,
) -> None:
    """LaMa's irregular strokes: ``times`` chains of 1-5 straight segments.

    Segment angle 0.01 + U{0..max_angle-1} radians (mirrored to 2pi - angle on every other
    chain), length 10 + U{0..max_len-1}, width 5 + U{0..max_width-1} (pixels at 256).
    """
    for i in range(int(rng.integers(min_times, max_times + 1))):
        x, y = float(rng.integers(0, w)), float(rng.integers(0, h))
        for _ in range(1 + int(rng.integers(0, 5))):
            angle = 0.01 + float(rng.integers(0, max_angle))
            if i % 2 == 0:
                angle = 2 * math.pi - angle
            length = (10 + int(rng.integers(0, max_len))) * scale
            width = (5 + int(rng.integers(0, max_width))) * scale
            ex = float(np.clip(x + length * math.sin(angle), 0, w - 1))
            ey = float(np.clip(y + length * math.cos(angle), 0, h - 1))
            canvas.stroke([(x, y), (ex, ey)], width)
            x, y = ex, ey


def _lama_boxes(
    canvas: _Canvas, h: int, w: int, rng: np.random.Generator, scale: float,
    margin: int, min_size: int, max_size: int, min_times: int, max_times: int,
) -> None:
    """LaMa's boxes: ``times`` rectangles with sides U{min_size..max_size-1}, ``margin`` from the border."""
    m = int(round(margin * scale))
    lo = max(1, int(round(min_size * scale)))
    hi = min(int(round(max_size * scale)), h - 2 * m, w - 2 * m)
    hi = max(hi, lo + 1)
    for _ in range(int(rng.integers(min_times, max_times + 1))):
        bw, bh = int(rng.integers(lo, hi)), int(rng.integers(lo, hi))
        x0 = int(rng.integers(m, max(m, w - m - bw) + 1))
        y0 = int(rng.integers(m, max(m, h - m - bh) + 1))
        canvas.box(x0, y0, x0 + bw, y0 + bh)


# LaMa's mixed generator draws strokes with weight 1 and boxes with weight 0.3, i.e. one
# family per mask, boxes with probability 0.3 / 1.3.
_LAMA_BOX_P = 0.3 / 1.3


def _lama_thin(h: int, w: int, rng: np.random.Generator, arg: Optional[int]) -> np.ndarray:
    """LaMa thin: 4-50 chains, width 5-14, segment length 10-49 (at 256); no boxes.

    Hole ratio at 256 (1,000 masks, seeds 0-999): 0.025 to 0.51, median 0.29.
    """
    scale = min(h, w) / 256.0
    canvas = _Canvas(h, w)
    _lama_strokes(canvas, h, w, rng, scale, 4, 50, max_width=10, max_len=40)
    return canvas.array()


def _lama_medium(h: int, w: int, rng: np.random.Generator, arg: Optional[int]) -> np.ndarray:
    """LaMa medium: 4-5 chains, width 5-54, length 10-109; or (p = 0.3/1.3) 1-5 boxes of 10-49 px.

    Hole ratio at 256 (1,000 masks, seeds 0-999): 0.003 to 0.55, median 0.25.
    """
    scale = min(h, w) / 256.0
    canvas = _Canvas(h, w)
    if rng.random() < _LAMA_BOX_P:
        _lama_boxes(canvas, h, w, rng, scale, margin=0, min_size=10, max_size=50, min_times=1, max_times=5)
    else:
        _lama_strokes(canvas, h, w, rng, scale, 4, 5, max_width=50, max_len=100)
    return canvas.array()


def _lama_thick(h: int, w: int, rng: np.random.Generator, arg: Optional[int]) -> np.ndarray:
    """LaMa thick: 1-5 chains, width 5-104, length 10-209; or (p = 0.3/1.3) 1-3 boxes of 30-149 px, margin 10.

    Hole ratio at 256 (1,000 masks, seeds 0-999): 0.005 to 0.96, median 0.35; a
    mask that leaves no known feature position is redrawn by :class:`MaskSampler`.
    """
    scale = min(h, w) / 256.0
    canvas = _Canvas(h, w)
    if rng.random() < _LAMA_BOX_P:
        _lama_boxes(canvas, h, w, rng, scale, margin=10, min_size=30, max_size=150, min_times=1, max_times=3)
    else:
        _lama_strokes(canvas, h, w, rng, scale, 1, 5, max_width=100, max_len=200)
    return canvas.array()


_GENERATORS: dict[str, tuple[Callable[..., np.ndarray], bool]] = {
    # name: (function, takes an optional ':N' argument)
    "centre": (_centre, True),
    "rect": (_rect, True),
    "freeform": (_freeform, False),
    "lama-thin": (_lama_thin, False),
    "lama-medium": (_lama_medium, False),
    "lama-thick": (_lama_thick, False),
}
_ALIASES = {"center": "centre", "free-form": "freeform"}
KINDS: tuple[str, ...] = tuple(_GENERATORS)


def parse_kind(kind: str) -> list[tuple[str, Optional[int]]]:
    """Split ``"freeform+centre:120"`` into ``[("freeform", None), ("centre", 120)]``; CsaError if unknown."""
    if not isinstance(kind, str) or not kind.strip():
        raise CsaError(f"empty mask kind: use one of {', '.join(KINDS)} (or unions such as freeform+rect)")
    parts = []
    for raw in kind.split("+"):
        item = raw.strip().lower()
        name, _, arg_text = item.partition(":")
        name = _ALIASES.get(name, name)
        if name not in _GENERATORS:
            raise CsaError(
                f"unknown mask kind {raw.strip()!r} in {kind!r}: use one of {', '.join(KINDS)}, "
                "centre:N or rect:N, joined with + for a union"
            )
        arg: Optional[int] = None
        if arg_text:
            if not _GENERATORS[name][1]:
                raise CsaError(f"mask kind {name!r} takes no ':N' size (only centre:N and rect:N do)")
            try:
                arg = int(arg_text)
            except ValueError:
                raise CsaError(f"{item!r}: the part after ':' must be a whole number of pixels") from None
            if arg < 1:
                raise CsaError(f"{item!r}: the size must be at least 1 pixel")
        parts.append((name, arg))
    return parts


def is_kind(spec: str) -> bool:
    """True if ``spec`` parses as a generator kind (or union of kinds)."""
    try:
        parse_kind(spec)
    except CsaError:
        return False
    return True


def generate_mask(kind: str, size: Size, seed: SeedLike) -> np.ndarray:
    """Draw one mask: H x W bool, True = hole. Deterministic given ``seed``.

    ``kind`` is a generator name (see the module docstring) or a ``+`` union of them;
    ``size`` an int (square) or (height, width); ``seed`` an int or a numpy Generator
    (which is advanced). A union draws its parts in order from the same generator.
    """
    parts = parse_kind(kind)
    h, w = _hw(size)
    rng = _rng(seed)
    mask = np.zeros((h, w), dtype=bool)
    for name, arg in parts:
        mask |= _GENERATORS[name][0](h, w, rng, arg)
    return mask


# --- reading mask folders -----------------------------------------------------------------


def list_mask_files(root: Union[str, os.PathLike], recursive: bool = True) -> list[Path]:
    """Mask image files under ``root``, sorted by relative path; CsaError if none."""
    root = Path(root)
    if not root.exists():
        raise CsaError(f"mask folder not found: {root}: check the path")
    if not root.is_dir():
        raise CsaError(f"{root} is not a folder: give a folder of mask images")
    pattern = "**/*" if recursive else "*"
    files = sorted(
        (p for p in root.glob(pattern) if p.suffix.lower() in MASK_SUFFIXES and p.is_file()),
        key=lambda p: p.relative_to(root).as_posix(),
    )
    if not files:
        raise CsaError(
            f"mask folder {root} has no mask images ({', '.join(MASK_SUFFIXES)}): "
            "give a folder with PNG masks (white = hole)"
        )
    return files


def centre_square(arr: np.ndarray) -> np.ndarray:
    """The largest centred square of an H x W (x C) array."""
    h, w = arr.shape[:2]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    return arr[top : top + side, left : left + side]


def resize_mask(mask: np.ndarray, size: int) -> np.ndarray:
    """Centre-crop to a square, then nearest-neighbour resize to ``size`` x ``size``."""
    sq = centre_square(mask)
    if sq.shape[0] == size:
        return np.ascontiguousarray(sq)
    img = Image.fromarray(sq.astype(np.uint8) * 255).resize((size, size), Image.NEAREST)
    return np.asarray(img) >= 128


class MaskFolder:
    """A folder of mask images (e.g. the NVIDIA irregular mask set), read with ``csa.imageio.read_mask``.

    Files (``.png``, ``.jpg``, ``.bmp``, ``.webp``, ``.tif``; recursive) are sorted by
    relative path. ``polarity``: ``"white-hole"`` (the project's rule: a pixel is hole
    when its brightest channel is >= 128), ``"black-hole"`` (inverted), or ``"auto"``:
    look at up to 64 evenly spaced files and take black as hole when the median white
    fraction is above one half (hole sets such as NVIDIA's have at most 60% holes). The
    choice is made once per folder, never per file, and is kept in :attr:`polarity`.
    """

    def __init__(
        self,
        root: Union[str, os.PathLike],
        polarity: str = "white-hole",
        *,
        recursive: bool = True,
        max_pixels: int = DEFAULT_MAX_PIXELS,
    ) -> None:
        if polarity not in POLARITIES:
            raise CsaError(f"polarity must be one of {', '.join(POLARITIES)}, got {polarity!r}")
        self.root = Path(root)
        self.files = list_mask_files(self.root, recursive)
        self.max_pixels = max_pixels
        self.white_fraction: Optional[float] = None
        if polarity == "auto":
            polarity = self._detect_polarity()
        self.polarity = polarity
        self._invert = polarity == "black-hole"

    def _detect_polarity(self) -> str:
        n = len(self.files)
        picks = sorted({int(i) for i in np.linspace(0, n - 1, num=min(n, 64))})
        fractions = []
        for i in picks:
            try:
                fractions.append(hole_ratio(read_mask(self.files[i], max_pixels=self.max_pixels)))
            except (CsaError, OSError):
                continue  # a bad file is reported when it is read for real
        if not fractions:
            raise CsaError(f"none of the sampled masks in {self.root} could be read: check the files")
        self.white_fraction = float(np.median(fractions))
        return "black-hole" if self.white_fraction > 0.5 else "white-hole"

    def __len__(self) -> int:
        return len(self.files)

    @property
    def names(self) -> list[str]:
        """File stems (no folder, no suffix), in file order."""
        return [p.stem for p in self.files]

    def read(self, index: int) -> np.ndarray:
        """Mask ``index`` at its own size: H x W bool, True = hole. CsaError if unreadable."""
        try:
            return read_mask(self.files[index], invert=self._invert, max_pixels=self.max_pixels)
        except OSError as exc:  # Pillow raises OSError for some broken headers
            raise CsaError(f"{self.files[index]} could not be read ({exc}): the file is truncated or corrupt") from None

    def load(self, index: int, size: int) -> np.ndarray:
        """Mask ``index`` centre-cropped to a square and resized (nearest) to ``size``."""
        return resize_mask(self.read(index), size)

    def ratios(self) -> list[Optional[float]]:
        """Hole ratio of every file at its own size (None for an unreadable file)."""
        out: list[Optional[float]] = []
        for i in range(len(self)):
            try:
                out.append(hole_ratio(self.read(i)))
            except CsaError:
                out.append(None)
        return out


# --- PConv-style augmentation ---------------------------------------------------------------


def augment_mask(mask: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """PConv-style training augmentation of a mask file, output ``size`` x ``size``.

    In order: a random square crop (side U[0.6, 1.0] of the shorter side, anywhere),
    nearest resize to ``size``; a rotation by U[0, 360) degrees (nearest, corners become
    known); a dilation by a (2k+1)-pixel max filter, k = U{0..3} at 256 (scaled with size);
    a translation by up to size/8 in each axis (the uncovered border is known); random
    horizontal and vertical flips.
    """
    h, w = mask.shape
    side = min(h, w)
    crop = int(round(side * rng.uniform(0.6, 1.0)))
    crop = max(1, min(crop, side))
    top = int(rng.integers(0, h - crop + 1))
    left = int(rng.integers(0, w - crop + 1))
    img = Image.fromarray(mask[top : top + crop, left : left + crop].astype(np.uint8) * 255)
    img = img.resize((size, size), Image.NEAREST)
    img = img.rotate(float(rng.uniform(0, 360)), resample=Image.NEAREST, fillcolor=0)
    k = int(round(int(rng.integers(0, 4)) * size / 256))
    if k > 0:
        img = img.filter(ImageFilter.MaxFilter(2 * k + 1))
    out = np.asarray(img) >= 128
    limit = max(1, size // 8)
    dy, dx = (int(v) for v in rng.integers(-limit, limit + 1, size=2))
    shifted = np.zeros_like(out)
    ys, yd = (slice(0, size - dy), slice(dy, size)) if dy >= 0 else (slice(-dy, size), slice(0, size + dy))
    xs, xd = (slice(0, size - dx), slice(dx, size)) if dx >= 0 else (slice(-dx, size), slice(0, size + dx))
    shifted[yd, xd] = out[ys, xs]
    if rng.random() < 0.5:
        shifted = shifted[:, ::-1]
    if rng.random() < 0.5:
        shifted = shifted[::-1, :]
    return np.ascontiguousarray(shifted)


# --- the trainer's mask source ---------------------------------------------------------------


def has_known_feature(mask: np.ndarray) -> bool:
    """True if the mask leaves a known position at feature resolution (docs/method.md, 'The CSA layer: feature mask')."""
    import torch

    from .nn.attention import CSA_DOWNSAMPLINGS, feature_mask, known_per_sample

    t = torch.from_numpy(np.ascontiguousarray(mask, dtype=np.float32))[None, None]
    return bool(known_per_sample(feature_mask(t, CSA_DOWNSAMPLINGS)).all())


class MaskSampler:
    """Per-sample masks for training: ``sampler(index_or_rng) -> size x size bool``.

    ``spec`` is a generator kind (``"freeform"``, ``"freeform+rect"``), several kinds
    separated by commas and drawn with equal probability (``"centre,freeform"``; repeat
    one to weight it), a mask folder path, or a mix of kinds and folders. With
    ``augment`` folder masks get :func:`augment_mask` (generated masks are random
    already); without it they are centre-cropped and resized.

    Called with an int ``i`` it draws from ``default_rng([seed, i])``; called with a
    Generator it uses that (the datasets pass one derived from seed, epoch and index).
    A mask with no hole, or one that leaves no known position at feature resolution
    (:func:`csa.nn.attention.feature_mask` all ones), is redrawn; :attr:`resampled`
    counts redraws. An unreadable folder mask is skipped with a warning (counted in
    :attr:`skipped`). After ``max_tries`` failed draws it raises CsaError.
    """

    def __init__(
        self,
        spec: str,
        size: int,
        seed: int = 0,
        augment: bool = False,
        *,
        polarity: str = "white-hole",
        max_tries: int = 100,
        max_pixels: int = DEFAULT_MAX_PIXELS,
    ) -> None:
        if size < 8:
            raise CsaError(f"mask size must be at least 8, got {size}")
        self.spec, self.size, self.seed, self.augment = spec, int(size), int(seed), bool(augment)
        self.max_tries = max_tries
        self.sources: list[Union[str, MaskFolder]] = []
        items = [spec] if Path(spec).is_dir() else [s.strip() for s in spec.split(",")]
        for item in items:
            if not item:
                raise CsaError(f"empty item in mask spec {spec!r}: separate kinds with single commas")
            if is_kind(item):
                self.sources.append(item)
            elif Path(item).exists() or os.sep in item or "/" in item:
                self.sources.append(MaskFolder(item, polarity=polarity, max_pixels=max_pixels))
            else:
                parse_kind(item)  # raises the message listing the known kinds
        self.resampled = 0
        self.skipped = 0

    def _draw(self, rng: np.random.Generator) -> Optional[np.ndarray]:
        src = self.sources[int(rng.integers(0, len(self.sources)))] if len(self.sources) > 1 else self.sources[0]
        if isinstance(src, str):
            return generate_mask(src, self.size, rng)
        index = int(rng.integers(0, len(src)))
        try:
            raw = src.read(index)
        except CsaError as exc:
            self.skipped += 1
            warnings.warn(f"skipping unreadable mask {src.files[index]}: {exc.message}", stacklevel=3)
            return None
        return augment_mask(raw, self.size, rng) if self.augment else resize_mask(raw, self.size)

    def __call__(self, key: Union[int, np.random.Generator]) -> np.ndarray:
        if isinstance(key, np.random.Generator):
            rng = key
        else:
            if int(key) < 0:
                raise CsaError(f"mask index must be >= 0, got {key}")
            rng = np.random.default_rng([self.seed, int(key)])
        for attempt in range(self.max_tries):
            mask = self._draw(rng)
            if mask is not None and mask.any() and has_known_feature(mask):
                return mask
            if mask is not None:
                self.resampled += 1
        raise CsaError(
            f"mask spec {self.spec!r} gave no usable mask in {self.max_tries} draws at size {self.size} "
            "(each was empty, unreadable, or covered the whole image at feature resolution): "
            "use smaller holes or another mask folder"
        )


# --- writing and summarising folders ---------------------------------------------------------


@dataclass
class MaskStats:
    """Per-bucket counts of a mask folder."""

    root: Path
    counts: dict[str, int] = field(default_factory=lambda: {b: 0 for b in BUCKET_NAMES})
    ratios: list[float] = field(default_factory=list)
    unreadable: list[Path] = field(default_factory=list)
    polarity: str = "white-hole"

    @property
    def total(self) -> int:
        return len(self.ratios)

    def format(self) -> str:
        """A small table: bucket, count, share; then the ratio summary."""
        lines = [f"{'bucket':<10} {'count':>7} {'share':>7}"]
        for name in BUCKET_NAMES:
            n = self.counts[name]
            share = 100.0 * n / self.total if self.total else 0.0
            lines.append(f"{name:<10} {n:>7} {share:>6.1f}%")
        lines.append(f"{'total':<10} {self.total:>7}")
        if self.ratios:
            r = np.asarray(self.ratios)
            lines.append(
                f"hole ratio: mean {r.mean():.3f}, median {np.median(r):.3f}, "
                f"min {r.min():.3f}, max {r.max():.3f} (polarity {self.polarity})"
            )
        if self.unreadable:
            lines.append(f"unreadable: {len(self.unreadable)} file(s), e.g. {self.unreadable[0]}")
        return "\n".join(lines)


def folder_stats(
    root: Union[str, os.PathLike], polarity: str = "white-hole", *, progress: bool = False
) -> MaskStats:
    """Read every mask of a folder and count them per hole-ratio bucket (at each file's own size)."""
    folder = MaskFolder(root, polarity=polarity)
    stats = MaskStats(Path(root), polarity=folder.polarity)
    indices: Iterable[int] = range(len(folder))
    if progress:
        from tqdm import tqdm

        indices = tqdm(indices, desc="reading masks", unit="mask", disable=None)
    for i in indices:
        try:
            r = hole_ratio(folder.read(i))
        except CsaError:
            stats.unreadable.append(folder.files[i])
            continue
        stats.ratios.append(r)
        stats.counts[ratio_bucket(r)] += 1
    return stats


def _png_bytes(mask: np.ndarray) -> bytes:
    buf = io.BytesIO()
    # Fixed encoder settings and no metadata: one seed gives byte-identical files.
    Image.fromarray(mask.astype(np.uint8) * 255, mode="L").save(buf, format="PNG", optimize=False, compress_level=6)
    return buf.getvalue()


def write_mask_folder(
    outdir: Union[str, os.PathLike],
    kind: str,
    count: int,
    size: Size = 256,
    seed: int = 0,
    *,
    force: bool = False,
    progress: bool = False,
) -> MaskStats:
    """Write ``count`` masks as PNGs (white = hole) plus ``manifest.csv``; return their stats.

    Mask ``i`` is ``generate_mask(kind, size, numpy.random.default_rng([seed, i]))``, so
    any one mask can be rebuilt alone. Files are ``00000.png``, ``00001.png``, ...;
    ``manifest.csv`` has ``file,hole_ratio,bucket`` and no timestamps, so two runs with
    one seed give byte-identical folders. A non-empty ``outdir`` is refused unless ``force``.
    """
    parse_kind(kind)
    h, w = _hw(size)
    if count < 1:
        raise CsaError(f"--count must be at least 1, got {count}")
    if seed < 0:
        raise CsaError(f"--seed must be >= 0, got {seed}")
    out = Path(outdir)
    if out.exists() and not out.is_dir():
        raise CsaError(f"{out} exists and is not a folder: give a folder path")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise CsaError(f"output folder {out} is not empty: give a new folder, or --force to write into it")
    out.mkdir(parents=True, exist_ok=True)
    digits = max(5, len(str(count - 1)))
    stats = MaskStats(out)
    rows = []
    indices: Iterable[int] = range(count)
    if progress:
        from tqdm import tqdm

        indices = tqdm(indices, desc="writing masks", unit="mask", disable=None)
    for i in indices:
        mask = generate_mask(kind, (h, w), np.random.default_rng([seed, i]))
        name = f"{i:0{digits}d}.png"
        data = _png_bytes(mask)

        def write(tmp: str, data: bytes = data) -> None:
            with open(tmp, "wb") as fh:
                fh.write(data)

        atomic_write(out / name, write)
        r = hole_ratio(mask)
        bucket = ratio_bucket(r)
        stats.ratios.append(r)
        stats.counts[bucket] += 1
        rows.append((name, f"{r:.6f}", bucket))

    def write_manifest(tmp: str) -> None:
        with open(tmp, "w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh, lineterminator="\n")
            writer.writerow(("file", "hole_ratio", "bucket"))
            writer.writerows(rows)

    atomic_write(out / "manifest.csv", write_manifest)
    return stats
