"""What ``POST /api/v1/inpaint`` can run: the served model and the installed classical methods.

``GET /api/v1/methods`` lists them and the page's method selector is fed from it. The
methods, their descriptions and the extras they need are :data:`csa.methods.REGISTRY`'s
(a method whose modules are missing is not offered). The server offers the classical
methods as it always has: on the whole image at full resolution (their default, which is
what the model's ``native`` strategy means), so ``native`` is the one strategy they accept.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Optional

from ..errors import CsaError
from ..methods import CLASSICAL, MODEL_ID, REGISTRY

#: The strategy a classical method accepts here: it always runs at full resolution.
FULL_RESOLUTION = ("native",)


@dataclass(frozen=True)
class Method:
    """One thing the server can run: an id, a line for the page, the strategies it takes.

    ``inpainter`` has ``inpaint_inputs(inputs, strategy=None)`` (an
    :class:`~csa.inference.Inpainter`, or a stand-in with that method).
    """

    id: str
    description: str
    strategies: tuple[str, ...]
    default_strategy: str
    inpainter: Any

    def public(self) -> dict[str, Any]:
        return {"id": self.id, "description": self.description, "strategies": list(self.strategies),
                "default_strategy": self.default_strategy}

    def check_strategy(self, strategy: Optional[str]) -> Optional[str]:
        """The strategy to pass on (None: the method's default); refuses one it does not take."""
        if strategy is None:
            return None
        key = strategy.strip().lower()
        if key not in self.strategies:
            takes = ", ".join(self.strategies) if self.strategies else "no strategy"
            raise CsaError(f"method {self.id!r} does not take strategy {strategy!r}: it takes {takes}")
        return key


def model_method(inpainter: Any) -> Method:
    """The served model, described by its ``model_info()``."""
    info = inpainter.model_info() if hasattr(inpainter, "model_info") else {}
    name = info.get("name") or "unnamed"
    if info.get("method", MODEL_ID) == MODEL_ID:
        description = f"the CSA model ({name}): {REGISTRY[MODEL_ID].description}"
    else:
        description = f"the method this server was started with ({name})"
    return Method(MODEL_ID, description,
                  tuple(info.get("strategies") or ()), str(info.get("default_strategy") or "its own"), inpainter)


def classical_methods() -> dict[str, Method]:
    """The classical methods whose packages are installed, in the registry's order."""
    from ..inference import Inpainter

    methods = {}
    for key, entry in CLASSICAL.items():
        if not entry.installed():
            continue
        inpainter = Inpainter.from_method(key)
        methods[key] = Method(key, entry.description, FULL_RESOLUTION, inpainter.rules.describe_default(), inpainter)
    return methods


def served_methods(inpainter: Any, extra: Optional[Mapping[str, Method]] = None) -> dict[str, Method]:
    """``csa`` first, then the installed classical methods, then ``extra`` (tests add stand-ins)."""
    methods = {MODEL_ID: model_method(inpainter), **classical_methods()}
    methods.update(extra or {})
    return methods


def pick(methods: Mapping[str, Method], name: Optional[str]) -> Method:
    """The method called ``name`` (None or empty: the model); unknown: an error listing them."""
    key = (name or MODEL_ID).strip().lower()
    if key not in methods:
        raise CsaError(f"unknown method {name!r}: this server runs {', '.join(methods)} (GET /api/v1/methods)")
    return methods[key]
