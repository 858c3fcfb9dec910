"""The Coherent Semantic Attention (CSA) layer (docs/method.md, 'The CSA layer').

One package, one home per piece:

=================  ==========================================================================
``rules``          shared constants, input shapes, the feature mask, the known-position rule
``reference``      :func:`csa_reference`, the plain statement every backend is tested against
``sources``        :class:`CsaSources`: what the layer chose, for explanations
``fast``           the fast layer's backend interface, its autograd function, the search
``*_backend``      one object per backend: numba (CPU), Triton (CUDA), torch (anywhere)
``dispatch``       :func:`resolve_backend` (a name to a backend object) and :func:`csa_fast`
``layer``          :class:`CoherentSemanticAttention`, which keeps its backend per (device, dtype)
=================  ==========================================================================

From the rest of csa it imports only :mod:`csa.errors` and :mod:`csa.config`.
"""
from .dispatch import BACKENDS, csa_fast, resolve_backend
from .fast import SEARCH_CHUNK_ELEMENTS, FastBackend
from .layer import CoherentSemanticAttention
from .reference import ReferenceBackend, blend_weights, csa_reference, search
from .rules import (
    CSA_DOWNSAMPLINGS,
    EPS,
    FEATURE_MASK_THRESHOLD,
    check_known_positions,
    checked_feature_mask,
    feature_mask,
    known_per_sample,
)
from .sources import CsaSources, collect_sources

__all__ = [
    "BACKENDS",
    "CSA_DOWNSAMPLINGS",
    "CoherentSemanticAttention",
    "CsaSources",
    "EPS",
    "FEATURE_MASK_THRESHOLD",
    "FastBackend",
    "ReferenceBackend",
    "SEARCH_CHUNK_ELEMENTS",
    "blend_weights",
    "check_known_positions",
    "checked_feature_mask",
    "collect_sources",
    "csa_fast",
    "csa_reference",
    "feature_mask",
    "known_per_sample",
    "resolve_backend",
    "search",
]
