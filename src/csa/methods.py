"""Every inpainting method behind one abstraction, and the one registry of them by name.

A :class:`Method` is what :mod:`csa.pipeline` runs: it declares its size rules
(:class:`SizeRules`) and implements :meth:`Method.forward` on one canvas; the pipeline owns
the high-resolution strategy and the paste-back. Two kinds:

- :class:`ModelMethod`: the CSA model from a file (a generator written by ``csa train``, a
  release checkpoint converted by ``csa convert``, an ONNX / TorchScript export). It works
  at its training size S and needs sides that are multiples of 256.
- :class:`ClassicalMethod`: one of :mod:`csa.baselines`. It takes any size, so by default
  it runs on the whole image at full resolution; ``crop`` and ``resize`` work on request.

:data:`REGISTRY` holds one :class:`MethodEntry` per name: what the method offers (a line
for the page, whether it can explain its fill, the file kinds it loads, the extra it needs)
without loading anything. :func:`find` and :func:`lookup` are the one lookup that the CLI,
the evaluation and the server use.
"""
from __future__ import annotations

import contextlib
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, ContextManager, Optional, Union

import numpy as np
import torch

from .config import SIDE_MULTIPLE
from .errors import CsaError, InpaintWarning
from .extras import missing

if TYPE_CHECKING:
    from .explain import Frame

#: Where the bundled default model lives (shipped with the package once it is trained).
DEFAULT_WEIGHTS = Path(__file__).resolve().parent / "assets" / "default.safetensors"
STRATEGIES = ("resize", "crop", "native")
#: Cap of the ``native`` strategy, counted after padding to multiples of 256. Measured on CPU
#: with the paper-size model (benchmarks/inference.py): about 3 GB peak at 1024x1024 and about
#: 2.5 GB more per further megapixel, plus the CSA layer's hole x known score matrix, which
#: grows with the square of the size. 2.4 MP admits 1536x1536 and 2048x1024.
NATIVE_MAX_PIXELS = 2_400_000
#: The id of our model.
MODEL_ID = "csa"

PathLike = Union[str, os.PathLike]


def bundled_model_path() -> Path:
    """The bundled default model; a :class:`CsaError` while none is bundled."""
    if not DEFAULT_WEIGHTS.is_file():
        raise CsaError(
            "no default model is bundled with this version of csa yet: pass --weights FILE "
            "(a .safetensors model written by `csa train` or `csa convert`)"
        )
    return DEFAULT_WEIGHTS


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


@dataclass(frozen=True)
class SizeRules:
    """What sizes a method takes, and so how the strategies (:mod:`csa.pipeline`) run it.

    ``size``: ``resize`` and ``crop`` scale a region to fit ``size`` x ``size``.
    ``multiple``: the sides of the method's input must be multiples of this (1: any size);
    a method with a multiple sees a square canvas, mirror-padded around the region.
    ``native_max_pixels``: cap of ``native`` after padding (None: none).
    ``any_size``: no strategy asked for means ``native``; else ``resize`` up to ``size``, ``crop`` above.
    """

    size: int
    multiple: int = 1
    native_max_pixels: Optional[int] = None
    any_size: bool = False

    def default_strategy(self, width: int, height: int) -> str:
        if self.any_size:
            return "native"
        return "crop" if max(width, height) > self.size else "resize"

    def describe_default(self) -> str:
        if self.any_size:
            return "native (the whole image, full resolution)"
        return f"resize up to {self.size} px, crop above"

    def padded(self, height: int, width: int) -> tuple[int, int]:
        """The ``native`` input's sides."""
        return _round_up(height, self.multiple), _round_up(width, self.multiple)

    def canvas(self, fit: tuple[int, int]) -> tuple[int, int]:
        """The input's sides for a region scaled to ``fit`` (``resize`` / ``crop``)."""
        if self.multiple == 1:
            return fit
        side = _round_up(self.size, self.multiple)
        return side, side


class Method:
    """Something that fills a hole on one canvas; :mod:`csa.pipeline` does the rest.

    :meth:`forward` takes ``x`` (1 x 3 x H x W, ``input_dtype``, in [0, 1], the hole grey)
    and ``hole`` (1 x 1 x H x W float, 1 = hole) with H, W as :attr:`rules` allow, and
    returns the filled 1 x 3 x H x W in [0, 1]; ``where`` names the canvas in errors.
    """

    name: str
    rules: SizeRules
    input_dtype: torch.dtype = torch.float32
    device = torch.device("cpu")

    def forward(self, x: torch.Tensor, hole: torch.Tensor, where: str) -> torch.Tensor:
        raise NotImplementedError

    def info(self) -> dict[str, Any]:
        """What is loaded (the first keys of ``Inpainter.model_info()``)."""
        raise NotImplementedError

    def run_label(self, strategy: str) -> str:
        """How a finished run is named to the user (``csa inpaint``'s line)."""
        return strategy

    def explain_refusal(self) -> Optional[CsaError]:
        """None if :meth:`frame` can say where the fill came from, else the error to raise."""
        from .explain import refuse

        return refuse(f"the method {self.name!r}")

    def recording(self, on: bool) -> ContextManager[None]:
        """Context in which the method keeps what :meth:`frame` reads (when ``on``)."""
        return contextlib.nullcontext()

    def frame(self, box: tuple[int, int, int, int], fit: tuple[int, int], offset: tuple[int, int],
              canvas: tuple[int, int]) -> "Frame":
        raise NotImplementedError


# --- our model ------------------------------------------------------------------------------


class ModelMethod(Method):
    """The CSA model (any ``nn.Module`` with ``model(image, mask).composite`` and ``.config``)."""

    def __init__(self, model: torch.nn.Module, name: str = MODEL_ID, weights: Optional[PathLike] = None,
                 native_max_pixels: Optional[int] = NATIVE_MAX_PIXELS) -> None:
        self.model = model.eval()
        self.name = name
        self.weights = Path(weights) if weights is not None else None
        config = getattr(model, "config", None)  # a bare module (tests): refused by explain, never run
        size = int(config.image_size) if config is not None else SIDE_MULTIPLE
        self.rules = SizeRules(size, SIDE_MULTIPLE, native_max_pixels)

    @classmethod
    def load(cls, path: Optional[PathLike] = None, device: Union[str, torch.device] = "cpu",
             name: Optional[str] = None, **kwargs: Any) -> "ModelMethod":
        """A model file (None: the bundled model); its content decides how it runs
        (:func:`csa.runtime.load_inference_model`)."""
        from .devices import resolve_device
        from .runtime import load_inference_model

        weights = Path(path) if path is not None else bundled_model_path()
        model = load_inference_model(weights, device=resolve_device(device))
        return cls(model, name or weights.stem, weights, **kwargs)

    @property
    def device(self) -> torch.device:  # type: ignore[override]
        first = next(self.model.parameters(), None)  # an ONNX model (csa.runtime) has none: CPU
        return first.device if first is not None else torch.device("cpu")

    def forward(self, x: torch.Tensor, hole: torch.Tensor, where: str) -> torch.Tensor:
        """The generator on [0, 1] inputs with sides multiples of 256; returns the composite in [0, 1]."""
        from .nn.attention import CSA_DOWNSAMPLINGS, feature_mask, known_per_sample

        if not bool(known_per_sample(feature_mask(hole, CSA_DOWNSAMPLINGS)).all()):
            raise CsaError(
                f"{where}, the mask leaves no known area at the model's feature resolution (1/8 of its input): "
                "there is nothing to copy from. Leave more of the image unmasked, or try another --strategy"
            )
        with torch.inference_mode():
            out = self.model(x * 2.0 - 1.0, hole)
        return (out.composite.float() + 1.0) / 2.0

    def info(self) -> dict[str, Any]:
        weights = self.weights
        return {
            "name": self.name,
            "method": MODEL_ID,
            "weights": str(weights) if weights else None,
            "file_size": weights.stat().st_size if weights and weights.is_file() else None,
            "parameters": getattr(self.model, "parameter_count", None) or sum(p.numel() for p in self.model.parameters()),
            "runtime": getattr(self.model, "runtime", "pytorch"),
            "config": self.model.config.to_dict(),
        }

    def _csa_layers(self) -> list:
        from .nn.attention import CoherentSemanticAttention

        return [m for m in self.model.modules() if isinstance(m, CoherentSemanticAttention)]

    def explain_refusal(self) -> Optional[CsaError]:
        from .explain import refuse

        runtime = getattr(self.model, "runtime", None)
        if runtime is not None:  # csa.runtime's exports: the graph runs as a whole, its layer's choices stay inside
            return refuse(f"the exported {runtime} model {self.name!r}", "an export runs the CSA layer inside its graph")
        if len(self._csa_layers()) != 1:
            return refuse(f"the model {self.name!r}", "it has no single CSA layer")
        return None

    def recording(self, on: bool) -> ContextManager[None]:
        return _recording(self._csa_layers() if on else [])

    def frame(self, box: tuple[int, int, int, int], fit: tuple[int, int], offset: tuple[int, int],
              canvas: tuple[int, int]) -> "Frame":
        from .explain import frame_from_layer

        (layer,) = self._csa_layers()
        return frame_from_layer(layer.last_sources, box, fit, offset, canvas)


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


# --- the classical methods ------------------------------------------------------------------

#: A fill function: (RGB uint8 H x W x 3, bool H x W hole) -> RGB uint8 H x W x 3 (csa.baselines).
FillFn = Callable[[np.ndarray, np.ndarray], np.ndarray]


class ClassicalMethod(Method):
    """A fill function of :mod:`csa.baselines` (or any with its signature); any size, CPU."""

    # float64: quantising the canvas back to 8 bits then gives exactly the input's 8-bit
    # values (for 16-bit inputs those of csa.imageio.array_to_8bit), as before the pipeline.
    input_dtype = torch.float64

    def __init__(self, name: str, fill: FillFn) -> None:
        self.name = name
        self.fill = fill
        self.rules = SizeRules(SIDE_MULTIPLE, any_size=True)

    def forward(self, x: torch.Tensor, hole: torch.Tensor, where: str) -> torch.Tensor:
        rgb8 = np.clip(np.rint(x[0].permute(1, 2, 0).cpu().numpy() * 255.0), 0, 255).astype(np.uint8)
        mask = (hole[0, 0] > 0.5).cpu().numpy()
        filled = np.asarray(self.fill(rgb8, mask), dtype=np.float32) / 255.0
        return torch.from_numpy(filled).permute(2, 0, 1)[None]

    def info(self) -> dict[str, Any]:
        return {"name": self.name, "method": self.name, "weights": None, "file_size": None, "parameters": 0,
                "runtime": None, "config": None}

    def run_label(self, strategy: str) -> str:
        return self.name if strategy == "native" else f"{self.name} ({strategy})"

    def explain_refusal(self) -> Optional[CsaError]:
        from .explain import refuse

        return refuse(f"the classical method {self.name!r}", "it has no attention layer")


# --- the registry ---------------------------------------------------------------------------


@dataclass(frozen=True)
class MethodEntry:
    """One method by name, and what it offers, known without loading it."""

    name: str
    description: str
    create: Callable[[Optional[PathLike], Union[str, torch.device]], Method]
    explains: bool = False  # can say where its fill came from (csa.explain)
    loads: tuple[str, ...] = ()  # the file suffixes it loads (--weights)
    #: (extra, import names) it needs beyond the core install; None when the core suffices.
    needs: Optional[tuple[str, tuple[str, ...]]] = None

    def installed(self) -> bool:
        return self.needs is None or not missing(*self.needs)


def _classical(name: str, description: str, needs: Optional[tuple[str, tuple[str, ...]]] = None) -> MethodEntry:
    def create(weights: Optional[PathLike], device: Union[str, torch.device]) -> Method:
        from . import baselines

        if weights is not None:
            warnings.warn(InpaintWarning(f"--weights is ignored by --method {name}"), stacklevel=4)
        return ClassicalMethod(name, baselines.BASELINES[name])

    return MethodEntry(name, description, create, needs=needs)


#: Every method by name: our model first, then every baseline of csa.baselines.BASELINES.
REGISTRY: dict[str, MethodEntry] = {
    MODEL_ID: MethodEntry(MODEL_ID, "a learned fill, best on large holes in smooth or shaded areas",
                          lambda weights, device: ModelMethod.load(weights, device),
                          explains=True, loads=(".safetensors", ".onnx", ".ts")),
    "telea": _classical("telea", "OpenCV fast marching (Telea): quick diffusion from the rim; thin scratches and wires"),
    "ns": _classical("ns", "OpenCV Navier-Stokes: diffusion along edges; thin scratches and wires"),
    "biharmonic": _classical("biharmonic", "scikit-image biharmonic: smooth fill; slow on large holes",
                             ("eval", ("skimage",))),
    "patchmatch": _classical("patchmatch", "PatchMatch: copies texture from elsewhere in the photo (grass, brick, "
                             "foliage)", ("eval", ("patchmatch",))),
    "smooth": _classical("smooth", "the model's smooth starting fill alone, without the network"),
}
#: The classical methods' entries, in the registry's order.
CLASSICAL: dict[str, MethodEntry] = {k: e for k, e in REGISTRY.items() if k != MODEL_ID}


def find(name: str) -> MethodEntry:
    """The entry called ``name`` (case-insensitive); a clear error lists the others."""
    key = name.strip().lower()
    if key not in REGISTRY:
        raise CsaError(f"unknown method {name!r}: choose {MODEL_ID} or one of {', '.join(CLASSICAL)}")
    return REGISTRY[key]


def lookup(name: str = MODEL_ID, weights: Optional[PathLike] = None,
           device: Union[str, torch.device] = "cpu") -> Method:
    """The method called ``name``, ready to run: ``csa`` loads ``weights`` (None: the bundled model)."""
    return find(name).create(weights, device)
