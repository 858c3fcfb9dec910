"""Inference: a photo and a mask in, the completed photo out.

:class:`Inpainter` holds one method (:mod:`csa.methods`: the CSA model, loaded once, or a
classical method; calls are serialised by a lock, so one instance can serve several
threads) and hides the pre- and post-processing:

- Inputs (:mod:`csa.inputs`): paths, bytes, PIL images or arrays (uint8, uint16, or float
  in [0, 1]); PNG, JPEG, WebP, BMP, TIFF; EXIF orientation applied; grey, grey + alpha,
  RGB, RGBA; 8 or 16 bits. Grey stays grey, alpha is kept as it is, 16 bits stay 16 bits.
- Any size, by one of three strategies, ``resize``, ``crop`` and ``native``
  (:mod:`csa.pipeline`). The model works at its training size S = ``config.image_size``
  and crops above it by default; the classical methods run at full resolution by default.
- Known pixels always equal the input exactly: the final composite happens at the
  original resolution in the original dtype; resampling only ever touches the hole.

``csa inpaint``'s file and folder modes are :mod:`csa.folder`.
"""
from __future__ import annotations

import os
import threading
import time
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Sequence, Union

import numpy as np
import torch
from PIL import Image

from .devices import resolve_device
from .errors import CsaError, InpaintWarning  # InpaintWarning: importable from here too
from .imageio import DEFAULT_MAX_PIXELS, ImageSource, array_to_8bit, array_to_pil, output_format, save_array
from .inputs import InpaintOptions, Inputs, load_inputs
from .methods import (
    DEFAULT_WEIGHTS,
    MODEL_ID,
    NATIVE_MAX_PIXELS,
    STRATEGIES,
    ClassicalMethod,
    FillFn,
    Method,
    ModelMethod,
    bundled_model_path,
    lookup,
)
from . import pipeline

if TYPE_CHECKING:
    from .explain import Explanation

__all__ = ["DEFAULT_WEIGHTS", "NATIVE_MAX_PIXELS", "STRATEGIES", "FileResult", "InpaintOptions", "InpaintWarning",
           "Inpainter", "Inputs", "default_weights_path", "load_inputs", "resolve_device", "to_pil"]

#: Formats that store pixels exactly; any other output format gets a warning.
LOSSLESS_FORMATS = ("PNG", "TIFF", "BMP", "PPM", "TGA")
#: ``native_max_pixels`` not given: the method's own cap (the model's NATIVE_MAX_PIXELS, none for classical methods).
_METHODS_OWN: Any = object()

#: The old name of :func:`csa.methods.bundled_model_path` (the VGG16 file is csa.weights.vgg16_source()).
default_weights_path = bundled_model_path



@dataclass
class FileResult:
    output: Path
    size: tuple[int, int]  # width, height
    hole_pixels: int
    strategy: str  # how the run is named: the strategy used (the baseline's name at full resolution)
    seconds: float


class Inpainter:
    """One method behind one call: ``inpainter(image, mask) -> PIL image``.

    Build it with :meth:`from_pretrained` (a model file, or the bundled default model) or
    :meth:`from_method` (any name of :data:`csa.methods.REGISTRY`); ``Inpainter(method)``
    takes a :class:`csa.methods.Method` or a bare model (``nn.Module``). Every call takes
    the per-call options as an :class:`~csa.inputs.InpaintOptions` or as its keywords.
    Calls are serialised by a lock: one instance may be shared by threads.
    """

    def __init__(
        self,
        method: Union[Method, torch.nn.Module, None] = None,
        *,
        fill: Optional[FillFn] = None,
        name: Optional[str] = None,
        weights: Optional[Union[str, os.PathLike]] = None,
        strategy: Optional[str] = None,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        native_max_pixels: Optional[int] = _METHODS_OWN,
    ) -> None:
        if (method is None) == (fill is None):
            raise ValueError("give exactly one of a method (or model) and fill")
        if fill is not None:
            method = ClassicalMethod(name or getattr(fill, "__name__", "fill"), fill)
        elif isinstance(method, torch.nn.Module):
            method = ModelMethod(method, name or MODEL_ID, weights)
        self.method: Method = method
        rules = method.rules
        self.rules = rules if native_max_pixels is _METHODS_OWN else replace(rules, native_max_pixels=native_max_pixels)
        self.strategy = pipeline.check_strategy(strategy) if strategy is not None else None
        self.max_pixels = max_pixels
        self._lock = threading.Lock()

    @classmethod
    def from_pretrained(
        cls,
        path: Optional[Union[str, os.PathLike]] = None,
        device: Union[str, torch.device] = "cpu",
        **kwargs: Any,
    ) -> "Inpainter":
        """Load a model file (None: the bundled default model) onto ``device``.

        The file's content decides how it runs (:func:`csa.runtime.load_inference_model`):
        a .safetensors generator in PyTorch, an ONNX export in onnxruntime, a TorchScript
        export in ``torch.jit.load`` (which runs the file's code: trusted sources only).
        """
        return cls(ModelMethod.load(path, device, name=kwargs.pop("name", None)), **kwargs)

    @classmethod
    def from_method(
        cls,
        method: str = MODEL_ID,
        weights: Optional[Union[str, os.PathLike]] = None,
        device: Union[str, torch.device] = "cpu",
        **kwargs: Any,
    ) -> "Inpainter":
        """``csa`` (our model: ``weights`` or the default) or a classical method by name."""
        return cls(lookup(method, weights, device), **kwargs)

    # -- facts ---------------------------------------------------------------------------------

    @property
    def name(self) -> str:
        return self.method.name

    @property
    def model(self) -> Optional[torch.nn.Module]:
        """The model's module (None for a classical method)."""
        return getattr(self.method, "model", None)

    @property
    def weights(self) -> Optional[Path]:
        return getattr(self.method, "weights", None)

    @property
    def image_size(self) -> int:
        """The method's working size S (the ``resize`` / ``crop`` strategies scale to it)."""
        return self.rules.size

    @property
    def native_max_pixels(self) -> Optional[int]:
        return self.rules.native_max_pixels

    @property
    def device(self) -> torch.device:
        return self.method.device

    def model_info(self) -> dict[str, Any]:
        """What is loaded, for ``GET /api/v1/model`` and reports."""
        return {
            **self.method.info(),
            "image_size": self.image_size,
            "device": str(self.device),
            "strategies": list(STRATEGIES),
            "default_strategy": self.strategy or self.rules.describe_default(),
            "native_max_pixels": self.native_max_pixels,
            "max_pixels": self.max_pixels,
        }

    def resolve_strategy(self, strategy: Optional[str], width: int, height: int) -> str:
        """The strategy a call uses: the one asked for, the instance's, or the method's default for the size."""
        return pipeline.resolve_strategy(self.rules, strategy or self.strategy, width, height)

    # -- calls -----------------------------------------------------------------------------------

    def __call__(self, image: ImageSource, mask: Optional[ImageSource] = None,
                 options: Optional[InpaintOptions] = None, **keywords: Any) -> Image.Image:
        """Inpaint one image; returns a PIL image of the input's size (grey stays grey, alpha is kept).

        ``image`` and ``mask``: paths, bytes, PIL images or arrays. Mask arrays may be bool,
        0/1 or 0-255 (True / 1 / >= 128 = hole); mask files: white (>= 128) = hole.
        ``options`` or its keywords: ``invert``, ``mask_from_alpha``, ``resize_mask``, ``strategy``.
        16-bit colour images come back as 8-bit PIL images (Pillow has no such mode): use
        :meth:`inpaint_array` or :meth:`inpaint_file` to keep 16 bits.
        """
        return to_pil(self.inpaint_array(image, mask, options, **keywords))

    def inpaint_array(self, image: ImageSource, mask: Optional[ImageSource] = None,
                      options: Optional[InpaintOptions] = None, **keywords: Any) -> np.ndarray:
        """Like calling the inpainter, but returns an array: H x W (grey) or H x W x C, the input's dtype."""
        opts = InpaintOptions.of(options, **keywords)
        inputs = load_inputs(image, mask, opts, max_pixels=self.max_pixels)
        out = self.inpaint_inputs(inputs, strategy=opts.strategy)
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
        options: Optional[InpaintOptions] = None,
        *,
        explain: Optional[Union[str, os.PathLike]] = None,
        **keywords: Any,
    ) -> FileResult:
        """Inpaint and write ``output`` atomically (16 bits kept in PNG); checks ``output`` first.

        ``explain``: also write the sources picture there (a .png) and its arrays next to it
        (.npz), see :meth:`explain`.
        """
        opts = InpaintOptions.of(options, **keywords)
        fmt = output_format(output)
        if explain is not None:
            from .explain import check_map_path

            check_map_path(explain)
        t0 = time.perf_counter()
        inputs = image if isinstance(image, Inputs) else load_inputs(image, mask, opts, max_pixels=self.max_pixels)
        _warn_format(fmt, inputs.image, output)
        used = self.method.run_label(self.resolve_strategy(opts.strategy, *inputs.size))
        if explain is not None:
            explanation = self.explain(inputs, options=opts)
            out = explanation.result
            save_array(out, output)
            explanation.save(explain)
        else:
            out = self.inpaint_inputs(inputs, strategy=opts.strategy)
            save_array(out, output)
        return FileResult(Path(output), inputs.size, int(inputs.hole.sum()), used, time.perf_counter() - t0)

    def inpaint_inputs(
        self, inputs: Inputs, strategy: Optional[str] = None, trace: Optional[list] = None
    ) -> np.ndarray:
        """The core: fill the hole of checked inputs (:func:`csa.pipeline.run`); H x W x C in the input's dtype.

        ``trace``: a list that receives one :class:`csa.explain.Frame` per model run (what
        :meth:`explain` reads); None records nothing.
        """
        with self._lock:
            return pipeline.run(self.method, self.rules, inputs, strategy or self.strategy, trace)

    def explain(self, image: Union[ImageSource, Inputs], mask: Optional[ImageSource] = None,
                options: Optional[InpaintOptions] = None, **keywords: Any) -> "Explanation":
        """Inpaint like a call and say where each filled region came from (:mod:`csa.explain`).

        Returns a :class:`csa.explain.Explanation`: ``result`` (the inpainted array),
        ``sources`` / ``dominant`` (H x W x 2 int32, input-image coordinates), ``blend`` and
        ``picture()``. Only our PyTorch model has the CSA layer's choices: classical methods
        and exported (ONNX, TorchScript) models raise CsaError.
        """
        from .explain import build

        refusal = self.method.explain_refusal()
        if refusal is not None:
            raise refusal
        opts = InpaintOptions.of(options, **keywords)
        inputs = image if isinstance(image, Inputs) else load_inputs(image, mask, opts, max_pixels=self.max_pixels)
        frames: list = []
        out = self.inpaint_inputs(inputs, strategy=opts.strategy, trace=frames)
        used = self.resolve_strategy(opts.strategy, *inputs.size)
        return build(inputs.image, out, inputs.hole, used, frames)


def rgb8_function(method: Method) -> FillFn:
    """``method`` as ``(uint8 H x W x 3, bool H x W) -> uint8 H x W x 3`` (for csa evaluate): a
    classical method's own fill function (no pipeline, as the evaluation always ran it), any
    other method through the pipeline."""
    if isinstance(method, ClassicalMethod):
        return method.fill
    inpainter = Inpainter(method)

    def run(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
        return np.asarray(inpainter(image, mask).convert("RGB"))

    run.__name__ = method.name
    return run


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
