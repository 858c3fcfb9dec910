"""The fast CSA layer's functional API at its earlier import path; it lives in :mod:`csa.nn.attention`.

``csa_fast``, ``resolve_backend`` and the availability checks are re-exported here so that
code importing them from ``csa.nn.fast_attention`` keeps working; nothing is defined here.
"""
from .attention.dispatch import BACKENDS, csa_fast, resolve_backend
from .attention.fast import SEARCH_CHUNK_ELEMENTS, SEARCHES
from .attention.numba_backend import numba_available
from .attention.triton_backend import triton_available, triton_interpreted

__all__ = ["BACKENDS", "SEARCHES", "SEARCH_CHUNK_ELEMENTS", "csa_fast", "numba_available", "resolve_backend",
           "triton_available", "triton_interpreted"]
