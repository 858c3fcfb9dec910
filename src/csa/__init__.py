"""csa: Coherent Semantic Attention image inpainting (Liu et al., ICCV 2019).

    from csa import Inpainter
    inpainter = Inpainter.from_pretrained("model.safetensors")  # no path: the bundled model
    result = inpainter("photo.jpg", "mask.png")                 # a PIL image
    result.save("completed.png")

The names that need torch (``Inpainter``, ``load_generator``, ``save_generator``,
``build_generator``) are imported on first use, so ``import csa`` and ``csa --help`` stay fast.
``load_model`` / ``build_model`` are deprecated second names of ``load_generator`` /
``build_generator`` (they warn; kept for one release).
"""
from __future__ import annotations

import warnings
from importlib import import_module
from typing import TYPE_CHECKING, Any

from .config import ModelConfig
from .errors import CsaError
from .version import __version__

# name -> (module, attribute), imported on first use.
_LAZY = {
    "Inpainter": ("csa.inference", "Inpainter"),
    "load_generator": ("csa.checkpoints", "load_generator"),
    "save_generator": ("csa.checkpoints", "save_generator"),
    "build_generator": ("csa.nn.generator", "build_generator"),
}
# Deprecated second names -> the kept name (README.md, 'Python API'): they warn on every use,
# stay for this release only (and in __all__ until then).
_DEPRECATED = {"load_model": "load_generator", "build_model": "build_generator"}

__all__ = ["CsaError", "Inpainter", "ModelConfig", "__version__", "build_generator", "build_model",
           "load_generator", "load_model", "save_generator"]

if TYPE_CHECKING:  # for type checkers and IDEs; at run time the names load lazily
    from .checkpoints import load_generator, save_generator
    from .checkpoints import load_generator as load_model
    from .inference import Inpainter
    from .nn.generator import build_generator
    from .nn.generator import build_generator as build_model


def __getattr__(name: str) -> Any:
    if name in _DEPRECATED:
        kept = _DEPRECATED[name]
        warnings.warn(f"csa.{name} is deprecated: use csa.{kept} (the same function)", DeprecationWarning, stacklevel=2)
        return __getattr__(kept)  # not cached under the old name, so every use warns
    if name in _LAZY:
        module, attribute = _LAZY[name]
        value = getattr(import_module(module), attribute)
        globals()[name] = value  # later look-ups skip this function
        return value
    raise AttributeError(f"module 'csa' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY) | set(_DEPRECATED))
