"""The Coherent Semantic Attention (CSA) layer and the feature-mask rule (docs/method.md, 'The CSA layer').

Plain, readable reference implementation: a loop over samples and holes with autograd
doing the gradients. :mod:`csa.nn.fast_attention` holds the fast path; this module stays
the reference it is tested against and the fallback.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import CsaError

# Threshold of the release's mask downsampling: a feature position is hole when more
# than 5/16 of its (box-filtered) receptive field is hole.
FEATURE_MASK_THRESHOLD = 5.0 / 16.0
EPS = 1e-8


@dataclass
class CsaSources:
    """What the CSA layer chose, per feature position (raster index p = row * W + column).

    ``source`` N x HW int64: for a hole position the known position its search picked (the
    argmax; an exact tie goes to the first known position in raster order), -1 at known
    positions. ``blend`` N x HW float: b, the weight of that match in the generate step
    ``out = a * previous + b * match`` (1 for the first hole, which copies its match; 0 at
    known positions). ``dominant`` N x HW int64: the known position with the largest weight
    in the affine combination the recurrence builds for that hole's output (-1 at known
    positions). ``size`` is the feature map's (H, W).
    """

    source: Tensor
    blend: Tensor
    dominant: Tensor
    size: tuple[int, int]


def collect_sources(
    hole_pos: Tensor, src: Tensor, a: Tensor, b: Tensor, valid: Tensor, size: tuple[int, int]
) -> CsaSources:
    """Scatter per-hole choices (N x L, holes in raster order, ``valid`` marks real holes) into a CsaSources.

    The dominant source follows the recurrence in O(1) per step: every earlier term's weight
    is multiplied by a_j, so the largest of them stays the largest; it competes with the new
    term b_j (their weights add when both are the same position). Run only when asked.
    """
    n, length = src.shape
    hw = size[0] * size[1]
    a = torch.where(valid, a.double(), 0.0)
    b = torch.where(valid, b.double(), 0.0)
    b[:, :1] = torch.where(valid[:, :1], 1.0, 0.0)  # the first hole copies its match
    # A plain Python loop over lists: per step a few float operations, far cheaper than
    # launching tensor ops (this runs once per explained call, never in training).
    dom_rows = []
    for s_row, a_row, b_row in zip(src.tolist(), a.abs().tolist(), b.abs().tolist()):
        dom_row = s_row[:]
        weight = b_row[0] if length else 0.0
        for j in range(1, length):
            carried, new = a_row[j] * weight, b_row[j]
            if s_row[j] == dom_row[j - 1]:
                weight = carried + new
            elif carried > new:
                dom_row[j], weight = dom_row[j - 1], carried
            else:
                weight = new
        dom_rows.append(dom_row)
    dom = torch.tensor(dom_rows, dtype=torch.long, device=src.device).reshape(n, length)
    pos = torch.where(valid, hole_pos, hw)  # padding slots go to a spare column, dropped below
    full = lambda fill, dtype: torch.full((n, hw + 1), fill, dtype=dtype, device=src.device)  # noqa: E731
    source = full(-1, torch.long).scatter_(1, pos, torch.where(valid, src, -1))[:, :hw]
    dominant = full(-1, torch.long).scatter_(1, pos, torch.where(valid, dom, -1))[:, :hw]
    blend = full(0.0, torch.float32).scatter_(1, pos, b.float())[:, :hw]
    return CsaSources(source, blend, dominant, size)


def feature_mask(mask: Tensor, downsamplings: int = 3) -> Tensor:
    """Mask at feature resolution: ``downsamplings`` 4x4/stride-2/pad-1 box filters, then > 5/16.

    ``mask`` is N x 1 x H x W (1 = hole); returns N x 1 x H/2^d x W/2^d in {0, 1}, same dtype.
    No thresholding happens between the filters (the release's rule).
    """
    if mask.dim() != 4 or mask.shape[1] != 1:
        raise CsaError(f"mask must be N x 1 x H x W, got shape {tuple(mask.shape)}")
    m = mask.float()
    box = torch.full((1, 1, 4, 4), 1.0 / 16.0, dtype=m.dtype, device=m.device)
    # Autocast off: in bf16 the box sums round (8 significant bits), and a cell just above
    # 5/16 could land on it, changing which positions are hole.
    with torch.autocast(m.device.type, enabled=False):
        for _ in range(downsamplings):
            m = F.conv2d(m, box, stride=2, padding=1)
    return (m > FEATURE_MASK_THRESHOLD).to(mask.dtype if mask.dtype.is_floating_point else torch.float32)


def check_known_positions(mask_feat: Tensor) -> None:
    """Refuse masks that leave a sample no known feature position (the layer has nothing to copy).

    Done once on the mask, before the network runs, never inside the CSA layer (a check
    there would force a host-device sync on every forward).
    """
    known = (mask_feat < 0.5).flatten(1).any(dim=1)
    if not bool(known.all()):
        bad = (~known).nonzero().flatten().tolist()
        raise CsaError(
            f"the mask of sample(s) {bad} covers (almost) the whole image: at feature resolution "
            "no known position is left to fill the hole from. Leave more of the image unmasked."
        )


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


class CoherentSemanticAttention(nn.Module):
    """The CSA layer: ``layer(features, mask)`` with the mask at feature resolution.

    mode='official' reproduces the release's arithmetic (for converted checkpoints);
    mode='stable' (default for new training) uses clamped true cosines (docs/method.md, 'The CSA layer: modes').
    No parameters. Every sample must keep a known position: check the mask once with
    :func:`check_known_positions` before the network runs.

    implementation: 'auto' (default) runs the fast layer of :mod:`csa.nn.fast_attention`
    (compiled numba kernels on CPU float32/float64, Triton kernels on CUDA, its batched
    torch code elsewhere); 'numba', 'triton' or 'torch' force one of its backends;
    'reference' runs :func:`csa_reference` (slow; the only one with double-backward support).
    """

    IMPLEMENTATIONS = ("auto", "numba", "triton", "torch", "reference")

    def __init__(self, mode: str = "stable", implementation: str = "auto") -> None:
        super().__init__()
        if mode not in ("official", "stable"):
            raise CsaError(f"CSA mode must be 'official' or 'stable', got {mode!r}")
        if implementation not in self.IMPLEMENTATIONS:
            raise CsaError(f"CSA implementation must be one of {self.IMPLEMENTATIONS}, got {implementation!r}")
        self.mode = mode
        self.implementation = implementation
        # Set record_sources to keep the layer's choices of each forward in last_sources
        # (csa.inference's explain does); off, the layer computes nothing extra.
        self.record_sources = False
        self.last_sources: CsaSources | None = None

    def forward(self, features: Tensor, mask: Tensor) -> Tensor:
        if mask.shape[0] != features.shape[0] or mask.shape[1] != 1 or mask.shape[2:] != features.shape[2:]:
            raise CsaError(
                f"CSA mask shape {tuple(mask.shape)} does not match features {tuple(features.shape)}: "
                "expected N x 1 x H x W at feature resolution"
            )
        from .fast_attention import csa_fast  # imported here: fast_attention imports this module

        # The search and the recurrence run in float32 with autocast off, whatever the caller's
        # precision: bf16 cosines tie and flip argmaxes, and the numba kernels take float32 only.
        low = features.dtype in (torch.float16, torch.bfloat16)
        x = features.float() if low else features
        with torch.autocast(features.device.type, enabled=False):
            if self.implementation == "reference":
                out = csa_reference(x, mask, self.mode, return_sources=self.record_sources)
            else:
                out = csa_fast(x, mask, self.mode, backend=self.implementation, return_sources=self.record_sources)
            if self.record_sources:
                out, self.last_sources = out
        # Under autocast the output stays float32 (the next conv casts it itself; the consistency
        # loss reads it as a tap); a network run wholly in low precision gets its dtype back.
        if low and not torch.is_autocast_enabled(features.device.type):
            out = out.to(features.dtype)
        return out

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}, implementation={self.implementation!r}"
