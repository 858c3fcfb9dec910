"""The fast CSA layer's shared machinery: the backend interface, its autograd function, the search.

Same arithmetic as :func:`csa.nn.attention.reference.csa_reference` (docs/method.md, 'The CSA layer'), organised for speed:

* Search: per sample one product of the hole queries against the normalised known keys
  (``holes x C`` times ``C x known``), chunked over the holes so that the score block never
  exceeds ``chunk_elements`` numbers (the Triton kernel works in 32 x 32 tiles); argmax and
  max per hole. No ``HW x HW`` matrix exists, forward or backward.
* Generate: the recurrence over the holes (raster order) runs as compiled code (numba on
  CPU, Triton on CUDA) or, on any device, as a batched torch loop over the hole rank.
* Backward: written by hand as the reverse recurrence; the search contributes only through
  the chosen (hole, key) pairs, so its gradient is O(holes x C), not a dense score gradient.

Each backend is one object (:mod:`.numba_backend`, :mod:`.torch_backend`,
:mod:`.triton_backend`) with a ``forward`` and a ``backward``; :class:`_FastCSA` only hands
over to the object it was given, and :mod:`.dispatch` picks the object once. Search
strategies of the numba and torch backends (``search=``): ``"exact"`` gathers each sample's
known keys (reads the hole counts on the host: free on CPU), ``"padded"`` multiplies all
samples at once against every position with hole keys masked out (batched, for
accelerators), ``"auto"`` picks exact on CPU, padded elsewhere. The Triton backend has its
own fused search.
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple, Optional

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from .rules import EPS, no_known_position
from .sources import CsaSources, collect_sources

# Largest score block of the search, in numbers (16 MiB in float32).
SEARCH_CHUNK_ELEMENTS = 1 << 22
SEARCHES = ("auto", "exact", "padded")


class FastBackend:
    """One way to run the fast layer: ``forward`` / ``backward`` of :class:`_FastCSA`.

    ``forward(ctx, features, mask, stable, search, chunk, sink)`` gets the detached features
    N x C x H x W and returns the output; ``backward(ctx, grad_out)`` returns the features'
    gradient. ``sink``: None, or a list that receives the layer's choices (a CsaSources),
    read from tensors every backend keeps anyway; with None nothing extra is computed.
    """

    name = ""

    def run(
        self, features: Tensor, mask: Tensor, mode: str, return_sources: bool = False,
        search: str = "auto", chunk: int = SEARCH_CHUNK_ELEMENTS,
    ) -> Any:
        sink: Optional[list] = [] if return_sources else None
        out = _FastCSA.apply(features, mask.to(features.device), mode, self, search, int(chunk), sink)
        return (out, sink[0]) if return_sources else out

    def forward(self, ctx: Any, features: Tensor, mask: Tensor, stable: bool, search: str, chunk: int,
                sink: Optional[list]) -> Tensor:
        raise NotImplementedError

    def backward(self, ctx: Any, grad_out: Tensor) -> Tensor:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class _FastCSA(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any, features: Tensor, mask: Tensor, mode: str, backend: FastBackend, search: str, chunk: int,
        sink: Optional[list] = None,
    ) -> Tensor:
        ctx.backend = backend
        return backend.forward(ctx, features.detach(), mask.detach(), mode == "stable", search, chunk, sink)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Optional[Tensor], ...]:
        return (ctx.backend.backward(ctx, grad_out),) + (None,) * 6


# --- the numba and torch backends: plan, search, generate -----------------------------------


class Plan(NamedTuple):
    """Hole bookkeeping of one forward: positions holes-first (N x HW), hole counts (N), the largest L.

    ``order[n]`` lists sample n's hole positions in raster order, then its known positions
    in raster order. ``hole()`` gives the N x HW hole booleans (the padded search's key mask).
    """

    order: Tensor
    nh: Tensor
    length: int
    hole: Callable[[], Tensor]


class SearchedBackend(FastBackend):
    """The numba and torch backends' shared forward: plan, gather queries, search, generate.

    A subclass supplies the steps (``plan``, ``queries``, the exact search's ``unit_keys`` /
    ``score_block`` / ``row_max``, ``generate``, ``reverse``); the order of the steps and the
    no-hole shortcut are written once here.
    """

    def forward(self, ctx: Any, features: Tensor, mask: Tensor, stable: bool, search: str, chunk: int,
                sink: Optional[list]) -> Tensor:
        n, c, h, w = features.shape
        hw = h * w
        x = features.contiguous().view(n, c, hw)
        plan = self.plan(mask, n, hw)
        ctx.meta = (stable, plan.length, (n, c, h, w))
        if plan.length == 0:
            ctx.save_for_backward()
            if sink is not None:
                none = torch.full((n, hw), -1, dtype=torch.long, device=x.device)
                sink.append(CsaSources(none, torch.zeros(n, hw, device=x.device), none.clone(), (h, w)))
            return features.clone()
        if search == "auto":
            search = "exact" if x.device.type == "cpu" else "padded"
        hole_pos, q = self.queries(x, plan, padded=search == "padded")
        if search == "exact":
            dmax, arg = search_exact(x, q, plan.order, plan.nh.tolist(), chunk, self)
            src = None  # known positions: order[n, nh[n] + arg]
        else:
            dmax, src = search_padded(x, q, plan.hole(), chunk)
            arg = None
        out, src, valid, saved = self.generate(x, q, hole_pos, plan, dmax, arg, src, stable)
        ctx.save_for_backward(*saved)
        if sink is not None:
            ok = valid if valid is not None else torch.arange(plan.length) < plan.nh[:, None]
            stats = saved[-1]
            sink.append(collect_sources(hole_pos[:, : plan.length], src, stats[..., 0], stats[..., 1], ok, (h, w)))
        return out.view(n, c, h, w)

    def backward(self, ctx: Any, grad_out: Tensor) -> Tensor:
        stable, length, (n, c, h, w) = ctx.meta
        if length == 0:
            return grad_out.clone()
        go = grad_out.contiguous().view(n, c, h * w)
        return self.reverse(go, ctx.saved_tensors, length, stable).view(n, c, h, w)

    # The steps, per backend:

    def plan(self, mask: Tensor, n: int, hw: int) -> Plan:
        raise NotImplementedError

    def queries(self, x: Tensor, plan: Plan, padded: bool) -> tuple[Tensor, Tensor]:
        """(hole positions as the saved tensors index them, hole queries N x L x C)."""
        raise NotImplementedError

    def unit_keys(self, xi: Tensor, known: Tensor) -> Tensor:
        """One sample's known keys (C x nk), each divided by its norm."""
        raise NotImplementedError

    def score_block(self, rows: int, nk: int, dtype: torch.dtype) -> Optional[Tensor]:
        """A buffer for one rows x nk score block, or None to allocate each block."""
        raise NotImplementedError

    def row_max(self, block: Tensor, dmax: Tensor, arg: Tensor) -> None:
        """Each row's max into ``dmax`` and its first argmax into ``arg``."""
        raise NotImplementedError

    def generate(self, x: Tensor, q: Tensor, hole_pos: Tensor, plan: Plan, dmax: Tensor, arg: Optional[Tensor],
                 src: Optional[Tensor], stable: bool) -> tuple[Tensor, Tensor, Optional[Tensor], tuple]:
        """The recurrence: (output N x C x HW, sources, valid slots or None, tensors saved, stats last)."""
        raise NotImplementedError

    def reverse(self, go: Tensor, saved: tuple[Tensor, ...], length: int, stable: bool) -> Tensor:
        """The reverse recurrence: the features' gradient N x C x HW from the output's."""
        raise NotImplementedError


def search_exact(
    x: Tensor, q: Tensor, order: Tensor, counts: list[int], chunk: int, backend: SearchedBackend
) -> tuple[Tensor, Tensor]:
    """Per sample: hole queries (rows of q) against that sample's known keys.

    Returns (max score, argmax as an index into the sample's known list ``order[i, m:]``).
    """
    n, _, hw = x.shape
    length = q.shape[1]
    dmax = q.new_zeros(n, length)
    arg = torch.zeros(n, length, dtype=torch.long, device=x.device)
    for i, m in enumerate(counts):
        if m == 0:
            continue
        known = order[i, m:]
        nk = hw - m
        if nk == 0:
            raise no_known_position([i])
        rows = max(1, chunk // nk)
        keys = backend.unit_keys(x[i], known)
        scores = backend.score_block(min(m, rows), nk, x.dtype)
        for r0 in range(0, m, rows):
            r1 = min(m, r0 + rows)
            block = torch.mm(q[i, r0:r1], keys, out=None if scores is None else scores[: r1 - r0])
            backend.row_max(block, dmax[i, r0:r1], arg[i, r0:r1])
    return dmax, arg


def search_padded(x: Tensor, q: Tensor, hole: Tensor, chunk: int) -> tuple[Tensor, Tensor]:
    """All samples at once: queries against every position's unit key, hole keys masked out."""
    n, _, hw = x.shape
    length = q.shape[1]
    keys = x / (torch.linalg.vector_norm(x, dim=1, keepdim=True) + EPS)  # N x C x HW
    masked = hole[:, None, :]
    rows = max(1, chunk // max(1, n * hw))
    dmax = q.new_empty(n, length)
    src = torch.empty(n, length, dtype=torch.long, device=x.device)
    for r0 in range(0, length, rows):
        r1 = min(length, r0 + rows)
        scores = torch.bmm(q[:, r0:r1], keys).masked_fill_(masked, float("-inf"))
        best, arg = scores.max(dim=2)
        dmax[:, r0:r1] = best
        src[:, r0:r1] = arg
    return dmax, src
