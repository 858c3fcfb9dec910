"""The two discriminators (docs/method.md, 'Discriminators'): a 70x70 PatchGAN on images and a patch discriminator
on VGG16 pool3 features. Module layouts follow the release (``model.N`` keys)."""
from __future__ import annotations

from typing import Literal

from torch import Tensor, nn


class PatchDiscriminator(nn.Module):
    """70x70 PatchGAN: 256^2 image -> 30x30 logits (2,766,529 parameters at ndf=64)."""

    def __init__(self, in_channels: int = 3, ndf: int = 64) -> None:
        super().__init__()
        widths = [ndf, ndf * 2, ndf * 4, ndf * 8]
        layers: list[nn.Module] = [nn.Conv2d(in_channels, widths[0], 4, 2, 1), nn.LeakyReLU(0.2)]
        for prev, cur, stride in zip(widths[:-1], widths[1:], (2, 2, 1)):
            layers += [nn.Conv2d(prev, cur, 4, stride, 1), nn.InstanceNorm2d(cur, affine=True), nn.LeakyReLU(0.2)]
        layers.append(nn.Conv2d(widths[-1], 1, 4, 1, 1))
        self.model = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)


FeatureDVariant = Literal["release", "paper"]


class FeatureDiscriminator(nn.Module):
    """Patch discriminator on VGG16 pool3 features (256 x H/8 x W/8).

    variant='release': strides 2, 2, 2 (32 -> 4x4 logits; 10,487,296 parameters).
    variant='paper': strides 2, 1, 1, as drawn in the paper's figure (32 -> 14x14 logits).
    The middle InstanceNorm has no affine parameters, as in the release.
    """

    def __init__(self, in_channels: int = 256, width: int = 512, variant: FeatureDVariant = "release") -> None:
        super().__init__()
        if variant not in ("release", "paper"):
            raise ValueError(f"feature discriminator variant must be 'release' or 'paper', got {variant!r}")
        s2, s3 = (2, 2) if variant == "release" else (1, 1)
        self.variant = variant
        self.model = nn.Sequential(
            nn.Conv2d(in_channels, width, 4, 2, 1), nn.LeakyReLU(0.2),
            nn.Conv2d(width, width, 4, s2, 1), nn.InstanceNorm2d(width), nn.LeakyReLU(0.2),
            nn.Conv2d(width, width, 4, s3, 1),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)
