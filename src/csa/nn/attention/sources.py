"""What the CSA layer chose per hole position (:class:`CsaSources`), for explanations.

Every implementation reports its choices through :func:`collect_sources`, so the reference
and each fast backend describe them the same way (csa.inference's explain reads them).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


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
