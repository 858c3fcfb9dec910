"""What every CSA implementation shares: its constants, its input shapes, the feature mask and the known-position rule.

The feature mask and the rule that every sample keeps a known position live here once
(docs/method.md, 'The CSA layer: feature mask'); the generator, the exported runtimes and
the fast layer's CPU search all ask this module.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ...errors import CsaError

# Threshold of the release's mask downsampling: a feature position is hole when more
# than 5/16 of its (box-filtered) receptive field is hole.
FEATURE_MASK_THRESHOLD = 5.0 / 16.0
EPS = 1e-8
CSA_DOWNSAMPLINGS = 3  # the CSA layer works at 1/8 of the input resolution


def feature_mask(mask: Tensor, downsamplings: int = CSA_DOWNSAMPLINGS) -> Tensor:
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


def known_per_sample(mask_feat: Tensor) -> Tensor:
    """N booleans: whether sample n's feature mask keeps a known position (something to copy from)."""
    return (mask_feat < 0.5).flatten(1).any(dim=1)


def no_known_position(samples: list[int]) -> CsaError:
    """The error for samples whose mask leaves no known feature position."""
    return CsaError(
        f"the mask of sample(s) {samples} covers (almost) the whole image: at feature resolution no known "
        "position is left, so the CSA layer has no known feature position to copy from. "
        "Leave more of the image unmasked."
    )


def check_known_positions(mask_feat: Tensor) -> None:
    """Refuse masks that leave a sample no known feature position (the layer has nothing to copy).

    Done once on the mask, before the network runs, never inside the CSA layer (a check
    there would force a host-device sync on every forward).
    """
    known = known_per_sample(mask_feat)
    if not bool(known.all()):
        raise no_known_position((~known).nonzero().flatten().tolist())


def checked_feature_mask(mask: Tensor, dtype: torch.dtype) -> Tensor:
    """The CSA layer's mask (``dtype``) for a pixel mask (> 0.5 is hole), refused when a sample keeps no known position."""
    mask_feat = feature_mask((mask > 0.5).to(dtype), CSA_DOWNSAMPLINGS)
    check_known_positions(mask_feat)
    return mask_feat


def check_layer_inputs(features: Tensor, mask: Tensor) -> None:
    """Features N x C x H x W and one mask per sample at their resolution, N x 1 x H x W."""
    if features.dim() != 4:
        raise CsaError(f"CSA features must be N x C x H x W, got shape {tuple(features.shape)}")
    if tuple(mask.shape) != (features.shape[0], 1, *features.shape[2:]):
        raise CsaError(
            f"CSA mask shape {tuple(mask.shape)} does not match features {tuple(features.shape)}: "
            "expected N x 1 x H x W at feature resolution"
        )
