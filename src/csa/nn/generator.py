"""The two-stage CSA generator: a rough U-Net, then a refine U-Net with the CSA layer (docs/method.md, 'The two stages').

Both U-Nets keep the release's nested ``model.model.N`` module layout, so the release's
state dicts load by key with only a prefix added (see :mod:`csa.checkpoints`).
Widths scale with ``ngf``; at ngf=64 the parameter counts equal the release's.

Note on skips: every inner block of the release starts with an *in-place* LeakyReLU,
which also rewrites the tensor kept for the skip connection, so the skip carries
LeakyReLU(x), not x. We reproduce that explicitly (without in-place ops) so converted
checkpoints compute the same function.
"""
from __future__ import annotations

from typing import NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import SIDE_MULTIPLE, ModelConfig
from ..errors import CsaError
# CSA_DOWNSAMPLINGS is defined with the CSA layer; it stays importable from here for older code.
from .attention import CSA_DOWNSAMPLINGS, CoherentSemanticAttention, checked_feature_mask  # noqa: F401

# The release's constant for the rough stage's hole fill: (123, 104, 117) / 255 in [-1, 1].
HOLE_FILL = tuple(v / 255.0 * 2.0 - 1.0 for v in (123, 104, 117))


def _norm(channels: int) -> nn.InstanceNorm2d:
    return nn.InstanceNorm2d(channels, affine=True)


def _run(layers: nn.Sequential, x: Tensor, start: int, stop: int) -> Tensor:
    for i in range(start, stop):
        x = layers[i](x)
    return x


# --- rough network P: the pix2pix unet_256 ----------------------------------------------


class RoughBlock(nn.Module):
    """One level of the rough U-Net: 4x4 stride-2 conv down, submodule, 4x4 transposed conv up."""

    def __init__(self, outer: int, inner: int, submodule: Optional[nn.Module] = None,
                 in_channels: Optional[int] = None, outermost: bool = False) -> None:
        super().__init__()
        self.outermost = outermost
        in_channels = in_channels or outer
        down = nn.Conv2d(in_channels, inner, 4, stride=2, padding=1)
        if outermost:
            layers = [down, submodule, nn.ReLU(), nn.ConvTranspose2d(inner * 2, outer, 4, 2, 1), nn.Tanh()]
        elif submodule is None:  # innermost: no norm on the way down
            layers = [nn.LeakyReLU(0.2), down, nn.ReLU(), nn.ConvTranspose2d(inner, outer, 4, 2, 1), _norm(outer)]
        else:
            layers = [nn.LeakyReLU(0.2), down, _norm(inner), submodule, nn.ReLU(),
                      nn.ConvTranspose2d(inner * 2, outer, 4, 2, 1), _norm(outer)]
        self.model = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        if self.outermost:
            return self.model(x)
        x = self.model[0](x)  # the skip carries LeakyReLU(x), as in the release
        return torch.cat([_run(self.model, x, 1, len(self.model)), x], 1)


class RoughUNet(nn.Module):
    """Rough network P: 8 downsamplings, channels ngf * (1, 2, 4, 8, 8, 8, 8, 8), Tanh output."""

    def __init__(self, ngf: int = 64, in_channels: int = 3, out_channels: int = 3) -> None:
        super().__init__()
        block = RoughBlock(ngf * 8, ngf * 8)
        for _ in range(3):
            block = RoughBlock(ngf * 8, ngf * 8, block)
        block = RoughBlock(ngf * 4, ngf * 8, block)
        block = RoughBlock(ngf * 2, ngf * 4, block)
        block = RoughBlock(ngf, ngf * 2, block)
        self.model = RoughBlock(out_channels, ngf, block, in_channels=in_channels, outermost=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)


# --- refine network G: the U-Net with the CSA layer -------------------------------------


class _Context:
    """What the refine U-Net's blocks share during one forward: the feature mask, the taps."""

    def __init__(self, mask_feat: Tensor) -> None:
        self.mask_feat = mask_feat
        self.tap_enc: Optional[Tensor] = None
        self.tap_dec: Optional[Tensor] = None


def _refine_down(outer: int, inner: int) -> list[nn.Module]:
    # LeakyReLU, dilated 4x4 stride-2 conv, IN, LeakyReLU, 3x3 conv to the inner width
    return [nn.LeakyReLU(0.2), nn.Conv2d(outer, outer, 4, stride=2, padding=3, dilation=2), _norm(outer),
            nn.LeakyReLU(0.2), nn.Conv2d(outer, inner, 3, padding=1)]


def _refine_up(outer: int, inner: int) -> list[nn.Module]:
    # ReLU, 3x3 transposed conv back to the outer width, IN, ReLU, 4x4 stride-2 transposed conv, IN
    return [nn.ReLU(), nn.ConvTranspose2d(inner * 2, outer, 3, padding=1), _norm(outer),
            nn.ReLU(), nn.ConvTranspose2d(outer, outer, 4, stride=2, padding=1), _norm(outer)]


class RefineInnermost(nn.Module):
    """Innermost level: dilated conv down (2x2 -> 1x1 at 256^2), transposed conv up; no 3x3 convs."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.model = nn.Sequential(
            nn.LeakyReLU(0.2), nn.Conv2d(channels, channels, 4, stride=2, padding=3, dilation=2),
            nn.ReLU(), nn.ConvTranspose2d(channels, channels, 4, stride=2, padding=1), _norm(channels),
        )

    def forward(self, x: Tensor, ctx: _Context) -> Tensor:
        x = self.model[0](x)
        return torch.cat([_run(self.model, x, 1, len(self.model)), x], 1)


class RefineBlock(nn.Module):
    """A plain level of the refine U-Net (docs/method.md, 'The refine network')."""

    def __init__(self, outer: int, inner: int, submodule: nn.Module) -> None:
        super().__init__()
        self.model = nn.Sequential(*_refine_down(outer, inner), _norm(inner), submodule, *_refine_up(outer, inner))

    def forward(self, x: Tensor, ctx: _Context) -> Tensor:
        x = self.model[0](x)
        h = _run(self.model, x, 1, 6)
        h = self.model[6](h, ctx)
        return torch.cat([_run(self.model, h, 7, len(self.model)), x], 1)


class CSABlock(nn.Module):
    """The level at 1/8 resolution: 3x3 conv, CSA layer, tap #1, IN, submodule, tap #2, up path.

    Slots 5 (CSA), 6 and 9 (the consistency taps) hold no tensors, as in the release.
    """

    def __init__(self, outer: int, inner: int, submodule: nn.Module, mode: str) -> None:
        super().__init__()
        self.model = nn.Sequential(
            *_refine_down(outer, inner), CoherentSemanticAttention(mode), nn.Identity(), _norm(inner),
            submodule, nn.Identity(), *_refine_up(outer, inner),
        )
        self.inner = inner

    def forward(self, x: Tensor, ctx: _Context) -> Tensor:
        x = self.model[0](x)
        h = _run(self.model, x, 1, 5)  # raw (signed) 3x3 conv output
        h = self.model[5](h, ctx.mask_feat)
        ctx.tap_enc = h  # consistency tap #1: the CSA output
        inner_out = self.model[8](self.model[7](h), ctx)
        ctx.tap_dec = inner_out[:, : self.inner]  # tap #2: the inner level's up output
        return torch.cat([_run(self.model, inner_out, 10, len(self.model)), x], 1)


class RefineUNet(nn.Module):
    """Refine network G: 6-channel input, the CSA block at 1/8 resolution, no output activation."""

    def __init__(self, ngf: int = 64, in_channels: int = 6, out_channels: int = 3, mode: str = "stable") -> None:
        super().__init__()
        block: nn.Module = RefineInnermost(ngf * 8)
        for _ in range(4):
            block = RefineBlock(ngf * 8, ngf * 8, block)
        block = CSABlock(ngf * 4, ngf * 8, block, mode)
        block = RefineBlock(ngf * 2, ngf * 4, block)
        block = RefineBlock(ngf, ngf * 2, block)
        self.model = RefineOutermost(in_channels, out_channels, ngf, block)

    def forward(self, x: Tensor, mask_feat: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        ctx = _Context(mask_feat)
        out = self.model(x, ctx)
        return out, ctx.tap_enc, ctx.tap_dec


class RefineOutermost(nn.Module):
    """Full resolution: 3x3 conv in, ReLU + 3x3 transposed conv out (no activation)."""

    def __init__(self, in_channels: int, out_channels: int, ngf: int, submodule: nn.Module) -> None:
        super().__init__()
        self.model = nn.Sequential(
            nn.Conv2d(in_channels, ngf, 3, padding=1), submodule,
            nn.ReLU(), nn.ConvTranspose2d(ngf * 2, out_channels, 3, padding=1),
        )

    def forward(self, x: Tensor, ctx: _Context) -> Tensor:
        h = self.model[1](self.model[0](x), ctx)
        return self.model[3](self.model[2](h))


# --- the two-stage generator ------------------------------------------------------------

# smooth_fill relaxes each pyramid level this many times: many on the small coarse
# levels (cheap), a few on the large fine ones (measured on 204 free-form validation
# pairs: 22 ms per 256x256 image on one core, PSNR in the hole 19.5 dB vs 17.7 without).
FILL_ITERATIONS_COARSE, FILL_ITERATIONS_FINE, FILL_FINE_SIDE = 32, 4, 128
# smooth_fill reads only the known pixels within this many pixels of the hole: farther ones
# (a dark object beside it) would tint a large hole through the coarse levels. Measured on
# 98 validation crops: PSNR in the hole 16.92 / 19.53 dB (centre / free-form) vs 16.94 / 19.51
# reading every known pixel; on the synthetic scenes of tests/synthetic_scenes.py the block
# holes' mean colour error falls from 1.9-5.7 levels to under 0.1.
FILL_BAND = 4


def fill_domain(hole: Tensor, band: int = FILL_BAND) -> Tensor:
    """What smooth_fill solves for: the hole and every pixel farther than ``band`` from it."""
    near = F.max_pool2d(hole.to(torch.float32), 2 * band + 1, stride=1, padding=band) > 0
    return hole | ~near


def smooth_fill(image: Tensor, hole: Tensor) -> Tensor:
    """``image`` with its hole filled by a smooth, nearly harmonic blend of the known colours.

    A multigrid relaxation over the known band around the hole (:func:`fill_domain`): its
    pixels are averaged down a pyramid (each level weighted by how much of it is known); on
    the way up, each level starts from the one above and its unknown part is repeatedly
    replaced by its neighbours' mean, the known part held. A thin stroke gets its
    neighbours' colours, a large hole a smooth extension of its border. ``hole`` is a
    boolean N x 1 x H x W; the image must have a known pixel.
    Runs in float32 (or float64) with autocast off: a bf16 relaxation would band smooth gradients.
    """
    if image.dtype in (torch.float16, torch.bfloat16):
        return smooth_fill(image.float(), hole).to(image.dtype)
    with torch.autocast(image.device.type, enabled=False):
        return torch.where(hole, _smooth_fill(image, fill_domain(hole)), image)


def _smooth_fill(image: Tensor, hole: Tensor) -> Tensor:
    known = (~hole).to(image.dtype)
    # where, not a product: NaN or garbage in the hole must not reach the sums
    sums, weights = [torch.where(hole, torch.zeros_like(image), image)], [known]
    while min(sums[-1].shape[-2:]) > 1:
        sums.append(F.avg_pool2d(sums[-1], 2))
        weights.append(F.avg_pool2d(weights[-1], 2))
    total = weights[-1].sum(dim=(2, 3), keepdim=True).clamp_min(1e-12)
    est = (sums[-1].sum(dim=(2, 3), keepdim=True) / total).expand_as(sums[-1])
    for level_sum, level_weight in zip(reversed(sums[:-1]), reversed(weights[:-1])):
        est = F.interpolate(est, size=level_sum.shape[-2:], mode="bilinear", align_corners=False)
        fine = min(level_sum.shape[-2:]) >= FILL_FINE_SIDE
        for _ in range(FILL_ITERATIONS_FINE if fine else FILL_ITERATIONS_COARSE):
            # level_sum is the known pixels' mean times how known the cell is
            neighbours = F.avg_pool2d(est, 3, stride=1, padding=1, count_include_pad=False)
            est = level_sum + (1.0 - level_weight) * neighbours
    return torch.where(hole, est, image)


class GeneratorOutput(NamedTuple):
    rough: Tensor  # rough stage output, N x 3 x H x W
    refined: Tensor  # refine stage output (no activation), N x 3 x H x W
    composite: Tensor  # refined (clamped to [-1, 1]) in the hole, the input elsewhere
    tap_enc: Tensor  # consistency tap #1 (CSA output), N x 8ngf x H/8 x W/8
    tap_dec: Tensor  # consistency tap #2 (decoder feature), N x 8ngf x H/8 x W/8
    mask_feat: Tensor  # the hole mask at the CSA layer's resolution (the consistency loss's too), N x 1 x H/8 x W/8


def check_inputs(image: Tensor, mask: Tensor) -> None:
    """Refuse shapes the generator cannot use, naming both shapes."""
    if image.dim() != 4 or image.shape[1] != 3:
        raise CsaError(f"image must be N x 3 x H x W in [-1, 1], got shape {tuple(image.shape)}")
    expected = (image.shape[0], 1, *image.shape[2:])
    if tuple(mask.shape) != expected:
        raise CsaError(
            f"mask shape {tuple(mask.shape)} does not match image shape {tuple(image.shape)}: "
            f"expected {expected} (1 = hole)"
        )
    side = SIDE_MULTIPLE
    if image.shape[2] % side or image.shape[3] % side:
        raise CsaError(f"image sides must be multiples of {side}, got {tuple(image.shape[2:])}: resize or pad first")


class CSAGenerator(nn.Module):
    """Rough U-Net, composite, refine U-Net with CSA; ``forward(image, mask)`` (docs/method.md, 'The two stages').

    The hole's pixels are never read: they are replaced (not multiplied) before use, so
    NaNs or garbage in the hole cannot leak into the output.
    """

    def __init__(self, config: Optional[ModelConfig] = None) -> None:
        super().__init__()
        self.config = config or ModelConfig()
        extra = int(self.config.mask_channel)
        self.rough = RoughUNet(self.config.rough_ngf, in_channels=3 + extra)
        self.refine = RefineUNet(self.config.refine_ngf, in_channels=6 + extra, mode=self.config.csa_mode)
        self.register_buffer("fill_colour", torch.tensor(HOLE_FILL).view(1, 3, 1, 1), persistent=False)

    def forward(self, image: Tensor, mask: Tensor) -> GeneratorOutput:
        check_inputs(image, mask)
        hole = mask > 0.5
        mask_feat = checked_feature_mask(mask, image.dtype)

        if self.config.hole_fill == "smooth":
            filled = smooth_fill(image, hole)
        else:
            filled = torch.where(hole, self.fill_colour.to(image.dtype), image)
        mask_in = [hole.to(image.dtype)] if self.config.mask_channel else []
        rough = self.rough(torch.cat([filled, *mask_in], 1))
        coarse = torch.where(hole, rough, image)
        if self.config.detach_rough:
            coarse = coarse.detach()
        zero_hole = torch.where(hole, torch.zeros_like(image), image)
        refined, tap_enc, tap_dec = self.refine(torch.cat([coarse, zero_hole, *mask_in], 1), mask_feat)
        composite = torch.where(hole, refined.clamp(-1.0, 1.0), image)
        return GeneratorOutput(rough, refined, composite, tap_enc, tap_dec, mask_feat)


def build_generator(config: Optional[ModelConfig] = None) -> CSAGenerator:
    """A freshly initialised generator (N(0, 0.02) conv weights, zero biases; docs/method.md, 'Training recipe')."""
    model = CSAGenerator(config)
    init_weights(model)
    return model


def init_weights(module: nn.Module, std: float = 0.02) -> None:
    """The release's init: N(0, std) conv / transposed-conv weights, zero bias; IN weight 1."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.normal_(m.weight, 0.0, std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
