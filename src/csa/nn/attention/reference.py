"""The CSA layer written plainly, the statement every fast backend is tested against (docs/method.md, 'The CSA layer').

A loop over samples and holes with autograd doing the gradients: slow, but the only
implementation with double-backward, and the layer's ``implementation="reference"``.
"""
from __future__ import annotations

from typing import Union

import torch
from torch import Tensor

from .rules import EPS
from .sources import CsaSources, collect_sources


def _unit(v: Tensor) -> Tensor:
    """v / (|v| + eps) along the last dim: the release's normalisation."""
    return v / (v.norm(dim=-1, keepdim=True) + EPS)


def search(queries: Tensor, keys: Tensor) -> tuple[Tensor, Tensor]:
    """For each query row, the best key by <q, k/|k|>: returns (argmax index, max score)."""
    scores = queries @ _unit(keys).transpose(0, 1)
    dmax, idx = scores.max(dim=1)
    return idx, dmax


def blend_weights(dad: Tensor, dmax: Tensor, mode: str, eps: float = EPS) -> tuple[Tensor, Tensor]:
    """The recurrence weights (a, b) from the two similarities, in either mode.

    In 'stable' mode the inputs are cosines; they are clamped at 0, and when both are 0
    the new position copies its own best match (b = 1). In 'official' mode this is the
    release's unguarded ratio. TorchScript compiles it (csa.export): hence ``eps`` as a
    default argument, since scripted code cannot read a module's float constants.
    """
    if mode == "official":
        s = dad + dmax
        return dad / s, dmax / s
    dad, dmax = dad.clamp(min=0), dmax.clamp(min=0)
    s = dad + dmax
    ok = s > eps
    safe = torch.where(ok, s, torch.ones_like(s))
    a = torch.where(ok, dad / safe, torch.zeros_like(s))
    b = torch.where(ok, dmax / safe, torch.ones_like(s))
    return a, b


def csa_reference(
    features: Tensor, mask: Tensor, mode: str = "stable", return_sources: bool = False
) -> Union[Tensor, tuple[Tensor, CsaSources]]:
    """The CSA layer, written plainly: one sample and one hole at a time (docs/method.md, 'The CSA layer').

    ``features`` N x C x H x W; ``mask`` N x 1 x H x W at feature resolution (1 = hole).
    Known positions pass through; each hole becomes a blend of its best-matching known
    feature and the previous hole's output (raster order). Gradients come from autograd.
    With ``return_sources`` also returns the layer's choices (:class:`CsaSources`).
    """
    n, c, h, w = features.shape
    outputs = []
    chosen = []  # per sample: (hole positions, source positions, a, b)
    for i in range(n):
        flat = features[i].reshape(c, h * w).transpose(0, 1)  # HW x C
        hole = mask[i].reshape(h * w) > 0.5
        hole_idx = hole.nonzero().flatten()
        known_idx = (~hole).nonzero().flatten()
        if hole_idx.numel() == 0:
            outputs.append(features[i])
            chosen.append((hole_idx, hole_idx, [], []))
            continue
        queries = flat[hole_idx]
        best, dmax = search(queries, flat[known_idx])
        sources = flat[known_idx[best]]  # the best known feature for each hole
        if mode == "stable":
            dmax = dmax / (queries.norm(dim=1) + EPS)  # a true cosine
        generated = [sources[0]]
        weights_a, weights_b = [1.0], [1.0]  # the first hole copies its match (a unused)
        for j in range(1, hole_idx.numel()):
            prev = generated[-1]
            dad = (prev * _unit(queries[j])).sum()
            if mode == "stable":
                dad = dad / (prev.norm() + EPS)
            a, b = blend_weights(dad, dmax[j], mode)
            generated.append(a * prev + b * sources[j])
            if return_sources:
                weights_a.append(float(a))
                weights_b.append(float(b))
        out = flat.index_copy(0, hole_idx, torch.stack(generated))
        outputs.append(out.transpose(0, 1).reshape(c, h, w))
        chosen.append((hole_idx, known_idx[best], weights_a, weights_b))
    result = torch.stack(outputs)
    if not return_sources:
        return result
    length = max(len(pos) for pos, _, _, _ in chosen)
    pad = lambda rows, dtype: torch.tensor(  # noqa: E731
        [list(r) + [0] * (length - len(r)) for r in rows], dtype=dtype
    ).reshape(n, length)
    valid = pad([[1] * len(pos) for pos, _, _, _ in chosen], torch.bool)
    info = collect_sources(
        pad([p.tolist() for p, _, _, _ in chosen], torch.long), pad([s.tolist() for _, s, _, _ in chosen], torch.long),
        pad([a for _, _, a, _ in chosen], torch.float64), pad([b for _, _, _, b in chosen], torch.float64), valid, (h, w),
    )
    return result, info


class ReferenceBackend:
    """The layer's ``implementation="reference"``: :func:`csa_reference`, gradients by autograd."""

    name = "reference"

    def run(self, features: Tensor, mask: Tensor, mode: str, return_sources: bool = False) -> Union[Tensor, tuple]:
        return csa_reference(features, mask, mode, return_sources=return_sources)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"
