"""Configuration as data: dataclasses with defaults, stored next to every checkpoint.

A model's :class:`ModelConfig` travels as JSON in the metadata of its safetensors file,
so one file rebuilds its model.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, fields
from typing import Any, Literal

from .errors import CsaError

CsaMode = Literal["official", "stable"]


@dataclass
class ModelConfig:
    """The two-stage generator. Defaults are the paper's / release's configuration."""

    rough_ngf: int = 64  # rough U-Net base width (release: 64)
    refine_ngf: int = 64  # refine U-Net base width (release: 64)
    csa_mode: CsaMode = "stable"  # 'official' reproduces released checkpoints
    image_size: int = 256  # the size the model was trained at
    detach_rough: bool = True  # release: no gradient from the refine stage into the rough net

    def __post_init__(self) -> None:
        if self.csa_mode not in ("official", "stable"):
            raise CsaError(f"csa_mode must be 'official' or 'stable', got {self.csa_mode!r}")
        for name in ("rough_ngf", "refine_ngf"):
            if getattr(self, name) < 1:
                raise CsaError(f"{name} must be positive")

    @property
    def tap_channels(self) -> int:
        """Channels of the CSA layer and both consistency taps (512 at the paper's width)."""
        return self.refine_ngf * 8

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ModelConfig":
        return from_dict(cls, data)


def from_dict(cls, data: dict[str, Any]):
    """Build a dataclass from a dict, refusing unknown keys with a clear message."""
    known = {f.name for f in fields(cls)}
    unknown = set(data) - known
    if unknown:
        raise CsaError(f"unknown {cls.__name__} keys {sorted(unknown)}; known keys: {sorted(known)}")
    return cls(**data)
