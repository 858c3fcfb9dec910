"""Which backend runs the fast layer: chosen once, as an object, then only called.

``resolve_backend(name, features, mode)`` turns a backend name into one backend object
(numba for CPU float32/float64, Triton on CUDA, torch where neither applies; docs/method.md,
'The CSA layer: fast implementation'). :class:`csa.nn.attention.layer.CoherentSemanticAttention`
resolves once per (device, dtype) and keeps the object; :func:`csa_fast` resolves per call
unless it is handed an object. Neither forward nor backward asks again.
"""
from __future__ import annotations

from typing import Any, Union

from torch import Tensor

from ...config import check_csa_mode
from ...errors import CsaError
from . import numba_backend, triton_backend
from .fast import SEARCH_CHUNK_ELEMENTS, SEARCHES, FastBackend
from .numba_backend import NumbaBackend
from .rules import check_layer_inputs
from .torch_backend import TorchBackend
from .triton_backend import TritonBackend

BACKENDS = ("auto", "numba", "triton", "torch")
_FORCED = {"numba": NumbaBackend, "triton": TritonBackend, "torch": TorchBackend}


def resolve_backend(backend: str, features: Tensor, mode: str = "stable") -> FastBackend:
    """The backend object that will run for features like these ('numba', 'triton' or 'torch' by its ``name``).

    A forced backend that cannot run here raises :class:`CsaError`. ``"auto"`` picks numba
    on CPU float32/float64, Triton on CUDA once its kernels pass a self-check in ``mode``
    (:func:`csa.nn.attention.triton_backend.triton_self_check`: on failure a warning, and
    torch), and torch everywhere else.
    """
    if backend not in BACKENDS:
        raise CsaError(f"CSA backend must be one of {BACKENDS}, got {backend!r}")
    device, dtype = features.device, features.dtype
    if backend != "auto":
        chosen = _FORCED[backend]()
        chosen.require(device, dtype)
        return chosen
    if NumbaBackend.supports(device, dtype) and numba_backend.numba_available():
        return NumbaBackend()
    if (device.type == "cuda" and triton_backend.triton_available()
            and triton_backend.triton_self_check(device, mode)):
        return TritonBackend()
    return TorchBackend()


def csa_fast(
    features: Tensor,
    mask: Tensor,
    mode: str = "stable",
    *,
    backend: Union[str, FastBackend] = "auto",
    search: str = "auto",
    chunk_elements: int = SEARCH_CHUNK_ELEMENTS,
    return_sources: bool = False,
) -> Any:
    """The CSA layer, fast: same result and gradients as :func:`csa.nn.attention.csa_reference`.

    With ``return_sources`` returns (output, :class:`csa.nn.attention.CsaSources`), the same
    choices as the reference's.

    ``features`` N x C x H x W; ``mask`` N x 1 x H x W at feature resolution (1 = hole),
    any values (> 0.5 is hole). Every sample with a hole needs a known position (checked on
    CPU; on accelerators check the mask beforehand with
    :func:`csa.nn.attention.check_known_positions`). ``backend``: a name (resolved on each
    call, see :func:`resolve_backend`; with ``"auto"`` on CUDA that includes the Triton
    self-check) or a backend object it returned: resolve once for calls in a loop, as the
    layer does.
    """
    check_csa_mode(mode)
    if search not in SEARCHES:
        raise CsaError(f"CSA search must be one of {SEARCHES}, got {search!r}")
    check_layer_inputs(features, mask)
    if chunk_elements < 1:
        raise CsaError(f"chunk_elements must be positive, got {chunk_elements}")
    chosen = backend if isinstance(backend, FastBackend) else resolve_backend(backend, features, mode)
    return chosen.run(features, mask, mode, return_sources, search, chunk_elements)
