"""Reading and writing images and masks: the one mask reader and the one pixel limit.

Every command and the server read images through :func:`read_image` and masks through
:func:`read_mask` / :func:`mask_from_array`, so the rules below hold everywhere:

- The pixel limit (default 50 megapixels) is checked from the header, before decoding,
  so a decompression bomb is refused without allocating it.
- A mask pixel is hole when the maximum over its colour channels is >= 128 (alpha is
  ignored unless ``from_alpha``; then a transparent pixel is hole). ``invert`` flips it.
- Outputs are written to a temporary file in the target folder and renamed, so a failure
  never leaves a half-written file.
"""
from __future__ import annotations

import io
import os
import tempfile
import warnings
from pathlib import Path
from typing import Callable, Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import CsaError

DEFAULT_MAX_PIXELS = 50_000_000
_UMASK = os.umask(0)
os.umask(_UMASK)  # read once: there is no way to read the umask without setting it
ImageSource = Union[str, os.PathLike, bytes, Image.Image, np.ndarray]


def _open(source: Union[str, os.PathLike, bytes], what: str) -> tuple[Image.Image, str]:
    if isinstance(source, (bytes, bytearray)):
        name = f"the uploaded {what}"
        if len(source) == 0:
            raise CsaError(f"{name} is empty (0 bytes): send an image file")
        fp = io.BytesIO(source)
    else:
        path = Path(source)
        name = str(path)
        if not path.exists():
            raise CsaError(f"{what} not found: {path}: check the path")
        if path.is_dir():
            raise CsaError(f"{what} {path} is a folder, not a file: give an image file")
        if path.stat().st_size == 0:
            raise CsaError(f"{what} {path} is empty (0 bytes): give a real image file")
        fp = path.open("rb")
    try:
        with warnings.catch_warnings():
            # Our own pixel limit replaces Pillow's bomb warning.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(fp)
    except UnidentifiedImageError:
        raise CsaError(f"{name} is not a readable image (corrupt, truncated or not an image): give a PNG, JPEG, WebP, BMP or TIFF file") from None
    except Image.DecompressionBombError:
        raise CsaError(f"{name} is too large to open safely", http_status=413, kind="too_large") from None
    except (OSError, SyntaxError, ValueError) as exc:  # a known signature with a broken header
        raise CsaError(f"{name} could not be read ({exc}): the file is truncated or corrupt") from None
    return img, name


def check_pixels(width: int, height: int, name: str, max_pixels: int = DEFAULT_MAX_PIXELS) -> None:
    """Refuse an image over the pixel limit (from its header, before decoding)."""
    if width * height > max_pixels:
        raise CsaError(
            f"{name} has {width}x{height} = {width * height:,} pixels, over the limit of "
            f"{max_pixels:,}: downscale it or raise --max-pixels",
            http_status=413,
            kind="too_large",
        )


def _decode(source: Union[str, os.PathLike, bytes], what: str, max_pixels: int) -> Image.Image:
    img, name = _open(source, what)
    check_pixels(img.width, img.height, name, max_pixels)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            saved = Image.MAX_IMAGE_PIXELS
            Image.MAX_IMAGE_PIXELS = None  # already checked against our own limit
            try:
                img.load()
            finally:
                Image.MAX_IMAGE_PIXELS = saved
    except (OSError, SyntaxError, ValueError) as exc:
        raise CsaError(f"{name} could not be decoded ({exc}): the file is truncated or corrupt") from None
    # Phone photos store rotation in EXIF: apply it so image and mask line up as displayed.
    return ImageOps.exif_transpose(img)


def read_image(source: ImageSource, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Open and fully decode an image (path, bytes, PIL image or array), EXIF-rotated.

    The mode is kept as stored (RGB, RGBA, L, I;16, ...); :mod:`csa.inference` decides
    how to treat it. Raises :class:`CsaError` for every problem a user can cause.
    """
    if isinstance(source, Image.Image):
        check_pixels(source.width, source.height, "the image", max_pixels)
        return source
    if isinstance(source, np.ndarray):
        check_pixels(source.shape[1], source.shape[0], "the image array", max_pixels)
        return array_to_pil(source)
    return _decode(source, "image", max_pixels)


def array_to_pil(arr: np.ndarray) -> Image.Image:
    """uint8 / uint16 arrays as they are; floats are taken to be in [0, 1]."""
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (1, 3, 4)):
        raise CsaError(f"an image array must be HxW, HxWx3 or HxWx4, got shape {arr.shape}")
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if arr.dtype == np.uint8:
        return Image.fromarray(arr)
    if arr.dtype == np.uint16:
        if arr.ndim == 2:
            return Image.fromarray(arr, mode="I;16")
        raise CsaError("16-bit colour arrays are not supported in the Python API: pass a 16-bit PNG path")
    if np.issubdtype(arr.dtype, np.floating):
        if not np.isfinite(arr).all():
            raise CsaError("the image array has NaN or infinite values")
        return Image.fromarray((np.clip(arr, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8))
    raise CsaError(f"unsupported image array dtype {arr.dtype}: use uint8, or float in [0, 1]")


def mask_from_pil(img: Image.Image, *, invert: bool = False, from_alpha: bool = False) -> np.ndarray:
    """The one mask rule: HxW bool, True = hole."""
    if from_alpha:
        if "A" not in img.getbands() and img.mode != "P":
            raise CsaError("--mask-from-alpha needs a mask with an alpha channel (RGBA or LA PNG)")
        alpha = np.asarray(img.convert("RGBA"))[:, :, 3]
        hole = alpha < 128  # transparent = missing
    else:
        if img.mode in ("I;16", "I;16B", "I;16L", "I"):
            arr = np.asarray(img).astype(np.int64)
            hole = arr >= (128 * 257 if arr.max() > 255 else 128)
        else:
            rgb = np.asarray(img.convert("RGBA") if "A" in img.getbands() else img.convert("RGB"))
            hole = rgb[:, :, :3].max(axis=2) >= 128
    return ~hole if invert else hole


def mask_from_array(arr: np.ndarray, *, invert: bool = False) -> np.ndarray:
    """Python-API masks: bool, 0/1 or 0-255 arrays (HxW or HxWxC) -> HxW bool, True = hole."""
    arr = np.asarray(arr)
    if arr.ndim == 3:
        arr = arr[:, :, :3].max(axis=2) if arr.shape[2] >= 3 else arr[:, :, 0]
    if arr.ndim != 2:
        raise CsaError(f"a mask array must be HxW or HxWxC, got shape {arr.shape}")
    if arr.dtype == bool:
        hole = arr
    elif np.issubdtype(arr.dtype, np.floating):
        hole = arr >= 0.5 if arr.max(initial=0) <= 1.0 else arr >= 128
    else:
        hole = arr >= 1 if arr.max(initial=0) <= 1 else arr >= 128
    return ~hole if invert else hole


def read_mask(
    source: ImageSource,
    *,
    invert: bool = False,
    from_alpha: bool = False,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> np.ndarray:
    """Read a mask file / bytes / PIL image / array into HxW bool (True = hole)."""
    if isinstance(source, np.ndarray):
        check_pixels(source.shape[1], source.shape[0], "the mask array", max_pixels)
        return mask_from_array(source, invert=invert)
    if isinstance(source, Image.Image):
        check_pixels(source.width, source.height, "the mask", max_pixels)
        return mask_from_pil(source, invert=invert, from_alpha=from_alpha)
    return mask_from_pil(_decode(source, "mask", max_pixels), invert=invert, from_alpha=from_alpha)


def atomic_write(path: Union[str, os.PathLike], write: Callable[[str], None]) -> None:
    """Call ``write(tmp_path)`` then rename onto ``path``; nothing is left behind on failure."""
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise CsaError(f"output folder {folder} does not exist: create it first")
    if not os.access(folder, os.W_OK):
        raise CsaError(f"output folder {folder} is not writable: choose another output path")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes files private; give the usual mode
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def save_image(img: Image.Image, path: Union[str, os.PathLike]) -> None:
    """Write an image atomically; the format follows the suffix (PNG if none is known)."""
    path = Path(path)
    fmt = Image.registered_extensions().get(path.suffix.lower())
    if fmt is None:
        raise CsaError(f"unknown output format {path.suffix!r} for {path}: use .png")
    if fmt == "JPEG" and img.mode not in ("RGB", "L"):
        img = img.convert("RGB")
    atomic_write(path, lambda tmp: img.save(tmp, format=fmt))
