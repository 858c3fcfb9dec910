"""Mirror padding of any width: how :mod:`csa.pipeline` pads a region out to a method's canvas,
and so how :mod:`csa.explain` maps canvas positions back onto the region (one function for both,
so that the two cannot drift apart)."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def pad_mirror(x: torch.Tensor, top: int, bottom: int, left: int, right: int) -> torch.Tensor:
    """Reflect padding of any width (reflection needs pad < side: repeat it while it grows)."""
    while top or bottom or left or right:
        h, w = x.shape[-2:]
        t, b, l, r = min(top, h - 1), min(bottom, h - 1), min(left, w - 1), min(right, w - 1)
        if h == 1 or w == 1:  # nothing to reflect: replicate
            return F.pad(x, (left, right, top, bottom), mode="replicate")
        x = F.pad(x, (l, r, t, b), mode="reflect")
        top, bottom, left, right = top - t, bottom - b, left - l, right - r
    return x
