"""csa: Coherent Semantic Attention image inpainting (Liu et al., ICCV 2019).

    from csa import Inpainter
    inpainter = Inpainter.from_pretrained("model.safetensors")  # no path: the bundled model
    result = inpainter("photo.jpg", "mask.png")                 # a PIL image
    result.save("completed.png")

The names that need torch (``Inpainter``, ``load_generator`` / ``load_model``,
``build_generator`` / ``build_model``) are imported on first use, so ``import csa`` and ``csa --help`` stay fast.
"""
from __future__ import annotations

from importlib import import_module
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

from .config import ModelConfig
from .errors import CsaError

try:
    __version__ = version("csa-inpaint")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

# name -> (module, attribute). load_model / build_model are the names README.md, 'Python API' gives
# the public face; they are the generator functions under a second name.
_LAZY = {
    "Inpainter": ("csa.inference", "Inpainter"),
    "load_generator": ("csa.checkpoints", "load_generator"),
    "save_generator": ("csa.checkpoints", "save_generator"),
    "build_generator": ("csa.nn.generator", "build_generator"),
    "load_model": ("csa.checkpoints", "load_generator"),
    "build_model": ("csa.nn.generator", "build_generator"),
}

__all__ = ["CsaError", "Inpainter", "ModelConfig", "__version__", "build_generator", "build_model",
           "load_generator", "load_model", "save_generator"]

if TYPE_CHECKING:  # for type checkers and IDEs; at run time the names load lazily
    from .checkpoints import load_generator, save_generator
    from .checkpoints import load_generator as load_model
    from .inference import Inpainter
    from .nn.generator import build_generator
    from .nn.generator import build_generator as build_model


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        module, attribute = _LAZY[name]
        value = getattr(import_module(module), attribute)
        globals()[name] = value  # later look-ups skip this function
        return value
    raise AttributeError(f"module 'csa' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
