"""The CSA layer as a module: checks its inputs, keeps its backend object, runs it (docs/method.md, 'The CSA layer')."""
from __future__ import annotations

from typing import Any, Union

import torch
from torch import Tensor, nn

from ...config import check_csa_mode
from ...errors import CsaError
from .dispatch import BACKENDS, resolve_backend
from .fast import FastBackend
from .reference import ReferenceBackend
from .rules import check_layer_inputs
from .sources import CsaSources


class CoherentSemanticAttention(nn.Module):
    """The CSA layer: ``layer(features, mask)`` with the mask at feature resolution.

    mode='official' reproduces the release's arithmetic (for converted checkpoints);
    mode='stable' (default for new training) uses clamped true cosines (docs/method.md, 'The CSA layer: modes').
    No parameters. Every sample must keep a known position: check the mask once with
    :func:`csa.nn.attention.check_known_positions` before the network runs.

    implementation: 'auto' (default) runs the fast layer (compiled numba kernels on CPU
    float32/float64, Triton kernels on CUDA, batched torch code elsewhere); 'numba',
    'triton' or 'torch' force one of its backends; 'reference' runs
    :func:`csa.nn.attention.csa_reference` (slow; the only one with double-backward support).
    The backend object is chosen on the first call per (device, dtype) and kept
    (:meth:`backend_for`).
    """

    IMPLEMENTATIONS = BACKENDS + ("reference",)

    def __init__(self, mode: str = "stable", implementation: str = "auto") -> None:
        super().__init__()
        self._backends: dict[tuple[torch.device, torch.dtype], Union[FastBackend, ReferenceBackend]] = {}
        self.mode = mode
        self.implementation = implementation
        # Set record_sources to keep the layer's choices of each forward in last_sources
        # (csa.inference's explain does); off, the layer computes nothing extra.
        self.record_sources = False
        self.last_sources: CsaSources | None = None

    # Setting either one forgets the backends chosen so far (the Triton self-check is per mode).
    @property
    def mode(self) -> str:
        return self._mode

    @mode.setter
    def mode(self, mode: str) -> None:
        check_csa_mode(mode)
        self._mode = mode
        self._backends.clear()

    @property
    def implementation(self) -> str:
        return self._implementation

    @implementation.setter
    def implementation(self, implementation: str) -> None:
        if implementation not in self.IMPLEMENTATIONS:
            raise CsaError(f"CSA implementation must be one of {self.IMPLEMENTATIONS}, got {implementation!r}")
        self._implementation = implementation
        self._backends.clear()

    def backend_for(self, features: Tensor) -> Union[FastBackend, ReferenceBackend]:
        """The backend object that runs features like these: resolved on first use, then kept."""
        key = (features.device, features.dtype)
        backend = self._backends.get(key)
        if backend is None:
            if self.implementation == "reference":
                backend = ReferenceBackend()
            else:
                backend = resolve_backend(self.implementation, features, self.mode)
            self._backends[key] = backend
        return backend

    def forward(self, features: Tensor, mask: Tensor) -> Tensor:
        check_layer_inputs(features, mask)
        # The search and the recurrence run in float32 with autocast off, whatever the caller's
        # precision: bf16 cosines tie and flip argmaxes, and the numba kernels take float32 only.
        low = features.dtype in (torch.float16, torch.bfloat16)
        x = features.float() if low else features
        with torch.autocast(features.device.type, enabled=False):
            out: Any = self.backend_for(x).run(x, mask, self.mode, return_sources=self.record_sources)
            if self.record_sources:
                out, self.last_sources = out
        # Under autocast the output stays float32 (the next conv casts it itself; the consistency
        # loss reads it as a tap); a network run wholly in low precision gets its dtype back.
        if low and not torch.is_autocast_enabled(features.device.type):
            out = out.to(features.dtype)
        return out

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}, implementation={self.implementation!r}"
