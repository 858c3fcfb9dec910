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
#: The suffixes taken as images wherever a folder is listed (inpainting, training, evaluation, masks).
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
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
    return _load(img, name)


def _load(img: Image.Image, name: str) -> Image.Image:
    """Decode an opened image (its size already checked) and apply its EXIF orientation."""
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
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (1, 2, 3, 4)):
        raise CsaError(f"an image array must be HxW, HxWx2, HxWx3 or HxWx4, got shape {arr.shape}")
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if arr.dtype == np.uint8:
        return Image.fromarray(arr)  # HxWx2 becomes LA
    if arr.dtype == np.uint16:
        if arr.ndim == 2:
            return Image.fromarray(arr)  # I;16 (Pillow 13 refuses an explicit mode here)
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
            raise CsaError("{mask_from_alpha} needs a mask with an alpha channel (RGBA or LA PNG)",
                           options=("mask_from_alpha",))
        return mask_from_alpha_channel(np.asarray(img.convert("RGBA"))[:, :, 3], invert=invert)
    else:
        if img.mode in ("I;16", "I;16B", "I;16L", "I"):
            arr = np.asarray(img).astype(np.int64)
            hole = arr >= (128 * 257 if arr.max() > 255 else 128)
        else:
            rgb = np.asarray(img.convert("RGBA") if "A" in img.getbands() else img.convert("RGB"))
            hole = rgb[:, :, :3].max(axis=2) >= 128
    return ~hole if invert else hole


def mask_from_alpha_channel(alpha: np.ndarray, *, invert: bool = False) -> np.ndarray:
    """The alpha rule: a transparent pixel (alpha below half of full scale) is hole."""
    half = 32768 if alpha.dtype == np.uint16 else 128
    hole = np.asarray(alpha) < half
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
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
    except OSError as exc:  # e.g. a read-only file system, where os.access may still say yes
        raise CsaError(f"cannot write in the output folder {folder} ({exc.strerror}): choose another output path") from None
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes files private; give the usual mode
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


#: Output suffixes a user is offered (Pillow writes more; these are the common ones).
OUTPUT_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff", ".bmp")


def format_for_suffix(path: Path) -> str:
    """Pillow's format name for an output path's suffix; a clear error for an unknown one."""
    fmt = Image.registered_extensions().get(path.suffix.lower())
    if fmt is None or fmt not in Image.SAVE:
        shown = path.suffix or "no suffix"
        raise CsaError(f"cannot write {path}: unknown image format ({shown}); use .png (keeps known pixels "
                       f"exact), .jpg, .webp, .tif or .bmp")
    return fmt


def save_image(img: Image.Image, path: Union[str, os.PathLike]) -> None:
    """Write an image atomically; the format follows the suffix (PNG if none is known)."""
    path = Path(path)
    fmt = format_for_suffix(path)
    if fmt == "JPEG" and img.mode not in ("RGB", "L"):
        img = img.convert("RGB")
    atomic_write(path, lambda tmp: img.save(tmp, format=fmt))


# --- images as arrays: every channel layout and bit depth the inpainter keeps -----------------
#
# read_image_array / save_image(array) carry an image as an H x W x C array, C = 1 (grey),
# 2 (grey + alpha), 3 (RGB) or 4 (RGBA), dtype uint8 or uint16, so grey stays grey, alpha
# stays alpha and 16 bits stay 16 bits. Pillow decodes 16-bit *colour* PNG and TIFF files to
# 8 bits, so those (only those) are decoded and encoded with OpenCV.

# EXIF orientation -> the numpy operation that shows the image upright (Pillow's table).
_ORIENTATION = {
    2: lambda a: a[:, ::-1],  # mirror
    3: lambda a: a[::-1, ::-1],  # rotate 180
    4: lambda a: a[::-1],  # flip
    5: lambda a: a.swapaxes(0, 1),  # transpose
    6: lambda a: np.rot90(a, -1),  # rotate 90 clockwise
    7: lambda a: np.rot90(a, -1)[::-1],  # transverse
    8: lambda a: np.rot90(a, 1),  # rotate 90 counter-clockwise
}


def apply_orientation(arr: np.ndarray, orientation: int) -> np.ndarray:
    """Apply an EXIF orientation value (1-8) to an H x W (x C) array, as Pillow's exif_transpose."""
    op = _ORIENTATION.get(int(orientation))
    return np.ascontiguousarray(op(arr)) if op else arr


def _is_deep_colour(img: Image.Image) -> bool:
    """A 16-bit-per-channel colour image, which Pillow would decode to 8 bits."""
    if img.mode not in ("RGB", "RGBA", "LA"):
        return False
    for tile in img.tile:
        args = tile[3]
        rawmode = args if isinstance(args, str) else (args[0] if args else "")
        if isinstance(rawmode, str) and ";16" in rawmode:
            return True
    return False


def _cv2(why: str):
    try:
        import cv2
    except ImportError:
        raise CsaError(f"{why} needs OpenCV: pip install opencv-python-headless (or convert the image to 8 bits)") from None
    return cv2


def _decode_deep_colour(source: Union[str, os.PathLike, bytes], img: Image.Image, name: str) -> np.ndarray:
    orientation = img.getexif().get(0x0112, 1)
    size = (img.height, img.width)
    # Let Pillow read it once (to 8 bits) first: it rejects truncated or corrupt files with a
    # clean error, where OpenCV would print codec warnings on stderr.
    _load(img, name)
    cv2 = _cv2(f"{name} is a 16-bit colour image; keeping its 16 bits")
    data = bytes(source) if isinstance(source, (bytes, bytearray)) else Path(source).read_bytes()
    arr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if arr is None or arr.shape[:2] != size:
        raise CsaError(f"{name} could not be decoded as a 16-bit image: the file is truncated or corrupt")
    if arr.ndim == 2:
        arr = arr[:, :, None]
    elif arr.shape[2] >= 3:  # OpenCV's BGR(A) -> RGB(A)
        arr = arr[:, :, [2, 1, 0, 3][: arr.shape[2]]]
    return apply_orientation(arr, orientation)


def pil_to_array(img: Image.Image) -> np.ndarray:
    """A PIL image as H x W x C (C = 1, 2, 3 or 4), uint8 or uint16; other modes are converted."""
    mode = img.mode
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        arr = np.asarray(img)
        if mode == "I" and (arr.min(initial=0) < 0 or arr.max(initial=0) > 65535):
            raise CsaError("a 32-bit integer image with values outside 0..65535 is not supported: "
                           "convert it to an 8- or 16-bit image")
        return arr.astype(np.uint16)[:, :, None]
    if mode == "F":
        raise CsaError("32-bit float images are not supported: convert the image to 8 or 16 bits")
    if mode in ("1", "L"):
        return np.asarray(img.convert("L"))[:, :, None]
    if mode in ("LA", "La"):
        return np.asarray(img.convert("LA"))
    if mode in ("RGBA", "RGBa", "PA") or (mode == "P" and "transparency" in img.info):
        return np.asarray(img.convert("RGBA"))
    return np.asarray(img.convert("RGB"))  # RGB, RGBX, P, CMYK, YCbCr, LAB, HSV


def _array_image(arr: np.ndarray) -> np.ndarray:
    """Python-API image arrays: uint8 / uint16 as they are, floats in [0, 1] to uint8."""
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim != 3 or arr.shape[2] not in (1, 2, 3, 4):
        raise CsaError(f"an image array must be HxW, HxWx2, HxWx3 or HxWx4, got shape {arr.shape}")
    if arr.dtype in (np.uint8, np.uint16):
        return arr
    if np.issubdtype(arr.dtype, np.floating):
        if not np.isfinite(arr).all():
            raise CsaError("the image array has NaN or infinite values")
        return (np.clip(arr, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    raise CsaError(f"unsupported image array dtype {arr.dtype}: use uint8, uint16, or float in [0, 1]")


def read_image_array(source: ImageSource, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Read an image (path, bytes, PIL image or array) as H x W x C, uint8 or uint16, EXIF-rotated.

    C is 1 (grey), 2 (grey + alpha), 3 (RGB) or 4 (RGBA). 16-bit files keep their 16 bits.
    The pixel limit is checked from the header, before decoding.
    """
    if isinstance(source, np.ndarray):
        check_pixels(source.shape[1], source.shape[0], "the image array", max_pixels)
        return _array_image(source)
    if isinstance(source, Image.Image):
        check_pixels(source.width, source.height, "the image", max_pixels)
        return pil_to_array(source)
    img, name = _open(source, "image")
    check_pixels(img.width, img.height, name, max_pixels)
    if _is_deep_colour(img):
        return _decode_deep_colour(source, img, name)
    return pil_to_array(_load(img, name))


def array_to_8bit(arr: np.ndarray) -> np.ndarray:
    """uint16 -> uint8 with rounding (65535 -> 255); uint8 unchanged."""
    if arr.dtype == np.uint8:
        return arr
    return ((arr.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)


def output_format(path: Union[str, os.PathLike]) -> str:
    """Check an output path before any work is done; return its Pillow format name.

    Refuses a missing or unwritable folder, a folder given as the file, and a suffix
    Pillow cannot write.
    """
    path = Path(path)
    if path.is_dir():
        raise CsaError(f"output {path} is a folder: give a file name such as {path / 'out.png'}")
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise CsaError(f"output folder {folder} does not exist: create it first")
    if not os.access(folder, os.W_OK):
        raise CsaError(f"output folder {folder} is not writable: choose another output path")
    try:  # the real test (root passes os.access everywhere, even on a read-only file system)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        raise CsaError(f"cannot write in the output folder {folder} ({exc.strerror}): choose another output path") from None
    return format_for_suffix(path)


def _encode_16bit_colour(arr: np.ndarray, fmt: str) -> bytes:
    cv2 = _cv2("writing a 16-bit colour image")
    if arr.shape[2] == 2:  # OpenCV writes 1, 3 or 4 channels: grey + alpha goes out as RGBA
        arr = np.dstack([arr[:, :, 0]] * 3 + [arr[:, :, 1]])
    bgr = arr[:, :, [2, 1, 0, 3][: arr.shape[2]]]
    ok, buf = cv2.imencode(".png" if fmt == "PNG" else ".tif", np.ascontiguousarray(bgr))
    if not ok:
        raise CsaError(f"OpenCV could not encode a 16-bit {fmt} image")
    return buf.tobytes()


def save_array(arr: np.ndarray, path: Union[str, os.PathLike]) -> None:
    """Write an H x W x C uint8 / uint16 array atomically (format from the suffix).

    16 bits are kept in PNG and TIFF; other formats get 8 bits.
    """
    fmt = output_format(path)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.dtype == np.uint16 and fmt in ("PNG", "TIFF"):
        if arr.shape[2] == 1:
            img = Image.fromarray(np.ascontiguousarray(arr[:, :, 0]))  # I;16
            atomic_write(path, lambda tmp: img.save(tmp, format=fmt))
        else:
            data = _encode_16bit_colour(arr, fmt)
            atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))
        return
    save_image(array_to_pil(np.ascontiguousarray(array_to_8bit(arr))), path)
