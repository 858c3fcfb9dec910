"""The package's optional parts ("extras") and the one message for a missing one.

``pip install csa-inpaint`` alone runs the model (``csa inpaint``, ``csa demo``,
``csa masks``); the rest needs an extra. A command or method that needs one calls
:func:`require` before importing anything from it, so a user sees one line that says
what to install instead of a ``ModuleNotFoundError`` traceback.
"""
from __future__ import annotations

import importlib.util

from .errors import CsaError

#: Import names each extra provides (pyproject.toml's [project.optional-dependencies]).
EXTRAS: dict[str, tuple[str, ...]] = {
    "serve": ("fastapi", "uvicorn", "multipart", "fastapi_offline"),
    "eval": ("skimage", "matplotlib", "patchmatch"),
    "train": ("tensorboard", "onnx"),
    "onnx": ("onnxruntime", "onnx"),
}

#: The PyPI name of this package, for the install hint.
DISTRIBUTION = "csa-inpaint"


def missing(extra: str, modules: tuple[str, ...] | None = None) -> list[str]:
    """The import names of ``extra`` (or just ``modules`` of it) that are not installed."""
    return [name for name in (modules or EXTRAS[extra]) if importlib.util.find_spec(name) is None]


def install_hint(extra: str) -> str:
    return f"pip install '{DISTRIBUTION}[{extra}]' (or '.[{extra}]' in a clone)"


def require(extra: str, what: str, modules: tuple[str, ...] | None = None) -> None:
    """Raise :class:`CsaError` naming ``extra`` when any of its modules is missing.

    ``what`` names the thing in the user's terms, e.g. ``"csa serve"`` or
    ``"the biharmonic method"``; ``modules`` narrows the check to what that thing imports.
    """
    if extra not in EXTRAS:
        raise ValueError(f"unknown extra {extra!r}")
    absent = missing(extra, modules)
    if absent:
        raise CsaError(f"{what} needs the [{extra}] extra (missing: {', '.join(absent)}): {install_hint(extra)}")
