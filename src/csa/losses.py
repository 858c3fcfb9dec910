"""The training objective (docs/method.md, 'Losses'): L1 on both stages, the consistency loss, RaLSGAN.

Unlike the release, the consistency loss reaches the generator (masked to the hole on
both sides), and the feature discriminator's generator term sees VGG(fake) with gradient.
"""
from __future__ import annotations

import math
from typing import Literal, NamedTuple, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import LossConfig
from .errors import CsaError
from .nn.generator import GeneratorOutput, init_weights

VGG_TAP_CHANNELS = 512  # VGG16 relu4_3


# Loss arithmetic runs in float32 with autocast off, its inputs cast up: under bf16
# autocast the networks' outputs arrive in bf16, and squares, means and sums there keep
# only 8 significant bits. The networks themselves stay under the caller's autocast.


def _float32(*tensors: Tensor) -> list[Tensor]:
    """bf16 / fp16 tensors as float32; float32 and float64 ones as they are."""
    return [t.float() if t.dtype in (torch.float16, torch.bfloat16) else t for t in tensors]


def ralsgan_d(real: Tensor, fake: Tensor) -> Tensor:
    """Relativistic average LSGAN, discriminator side (means over all elements)."""
    with torch.autocast(real.device.type, enabled=False):
        real, fake = _float32(real, fake)
        return 0.5 * (((real - fake.mean() - 1) ** 2).mean() + ((fake - real.mean() + 1) ** 2).mean())


def ralsgan_g(real: Tensor, fake: Tensor) -> Tensor:
    """Relativistic average LSGAN, generator side: the D loss with the targets swapped."""
    with torch.autocast(real.device.type, enabled=False):
        real, fake = _float32(real, fake)
        return 0.5 * (((real - fake.mean() + 1) ** 2).mean() + ((fake - real.mean() - 1) ** 2).mean())


def masked_mse(pred: Tensor, target: Tensor, mask: Tensor) -> Tensor:
    """Mean squared error over the positions where mask is 1, all channels."""
    with torch.autocast(pred.device.type, enabled=False):
        pred, target, mask = _float32(pred, target, mask)
        weight = mask.expand_as(pred)
        return ((pred - target) ** 2 * weight).sum() / weight.sum().clamp(min=1.0)


class ConsistencyLoss(nn.Module):
    """MSE between each consistency tap and VGG16 relu4_3 of the ground truth, hole only.

    When the taps are narrower than 512 channels (a reduced-width model), each tap gets a
    learned 1x1 projection to 512, used only by this loss (trained with the generator).
    """

    def __init__(self, tap_channels: int, target_channels: int = VGG_TAP_CHANNELS, taps: int = 2) -> None:
        super().__init__()
        if tap_channels == target_channels:
            self.projections = nn.ModuleList([nn.Identity() for _ in range(taps)])
        else:
            self.projections = nn.ModuleList([nn.Conv2d(tap_channels, target_channels, 1) for _ in range(taps)])
            init_weights(self.projections)  # the release's N(0, 0.02) like every other conv

    def forward(self, taps: Sequence[Tensor], target: Tensor, mask_feat: Tensor) -> Tensor:
        # The 1x1 projections belong to the loss: float32 too.
        with torch.autocast(target.device.type, enabled=False):
            return sum(masked_mse(proj(*_float32(tap)), target, mask_feat) for proj, tap in zip(self.projections, taps))


# The loss weights have one home, the config's loss section (docs/method.md, 'Losses'); the
# objective reads them from a LossConfig, and this name stays for code written against it.
LossWeights = LossConfig


def weighted_l1(output: Tensor, target: Tensor, mask: Tensor, hole_weight: float = 1.0) -> Tensor:
    """Mean absolute error over all pixels, hole pixels (mask > 0.5) counted ``hole_weight`` times.

    ``hole_weight`` 1 is the paper's plain L1; e.g. 6 is the hole / valid balance of Liu et al.
    2018 (partial convolutions): L1_valid + 6 L1_hole, both means over the whole image.
    """
    with torch.autocast(output.device.type, enabled=False):
        output, target = _float32(output, target)
        if hole_weight == 1.0:
            return F.l1_loss(output, target)
        weight = torch.where(mask > 0.5, hole_weight, 1.0).to(output.dtype)
        return ((output - target).abs() * weight).mean()


def gram(features: Tensor) -> Tensor:
    """N x C x C Gram matrices of N x C x H x W features, divided by C * H * W (float32)."""
    with torch.autocast(features.device.type, enabled=False):
        (f,) = _float32(features)
        n, c, h, w = f.shape
        f = f.reshape(n, c, h * w)
        return f @ f.transpose(1, 2) / (c * h * w)


def _relative_l1(fake: Tensor, real: Tensor) -> Tensor:
    """mean |fake - real| / mean |real|: the same size whatever the scale of the VGG file."""
    with torch.autocast(fake.device.type, enabled=False):
        fake, real = _float32(fake, real)
        return (fake - real).abs().mean() / real.abs().mean().detach().clamp(min=1e-8)


def perceptual_loss(fake_pools: Sequence[Tensor], real_pools: Sequence[Tensor]) -> Tensor:
    """Mean over VGG's three pools of the relative L1 distance of the features.

    Not in the paper: a feature-space reconstruction term (Johnson et al. 2016; Liu et al.
    2018 use it for inpainting), relative to the real features' size so that its weight
    does not depend on how the VGG file scales its activations.
    """
    return sum(_relative_l1(f, r) for f, r in zip(fake_pools, real_pools)) / len(real_pools)


def style_loss(fake_pools: Sequence[Tensor], real_pools: Sequence[Tensor]) -> Tensor:
    """Mean over VGG's three pools of the relative L1 distance of the Gram matrices.

    Not in the paper: Gatys et al.'s texture statistics, used for inpainting by Liu et al.
    2018: a fill whose feature correlations differ from the photo's (a smooth smear in
    grass) costs, whatever the exact pixels.
    """
    return sum(_relative_l1(gram(f), gram(r)) for f, r in zip(fake_pools, real_pools)) / len(real_pools)


GRID_PERIOD = 8  # the up path's three 2x transposed convs below the CSA level: grids of 2, 4 and 8 px
GRID_NEIGHBOUR = 2  # a harmonic's power is compared with the bins this far away on either axis
GRID_TOLERANCE = 2.0  # harmonics up to this many times their neighbours' power are free (photos: about 1)
GRID_MIN_SIDE = 4 * GRID_PERIOD  # a smaller hole is measured in a box of this side around it
# The term's views of a fill: (how much the hole's box grows on each side, as a fraction of its
# side; grid period; neighbour distance in bins). The hole's own box sees an 8-px mesh in the
# hole's middle at full contrast, but its window gives the border little weight; a box grown by
# a third holds the border inside the window and sees the mesh there and the 2-px checkerboard,
# with the neighbours further out (a grid confined to the hole spreads over box / hole bins).
GRID_VIEWS = ((0.0, GRID_PERIOD, GRID_NEIGHBOUR), (1 / 3, GRID_PERIOD, 6), (1 / 3, 2, 6))


def _windowed_power(region: Tensor) -> Tensor:
    """The power spectrum of ``region`` (... x H x W) with its mean removed and a 2-D Hann window applied."""
    h, w = region.shape[-2:]
    x = region - region.mean((-2, -1), keepdim=True)
    window = torch.outer(torch.hann_window(h, periodic=False, dtype=x.dtype, device=x.device),
                         torch.hann_window(w, periodic=False, dtype=x.dtype, device=x.device))
    return torch.fft.fft2(x * window).abs().pow(2)


def grid_ratio(region: Tensor, period: int = GRID_PERIOD, neighbour: int = GRID_NEIGHBOUR) -> Tensor:
    """Power at a ``period``-pixel grid's harmonics over the power beside them, per channel.

    ``region``: ... x C x H x W (sides divisible by ``period``) -> ... x C. The region's mean
    is removed and a 2-D Hann window applied; over the (period^2 - 1) harmonic bins
    (a H / period, b W / period) of each channel's power spectrum the summed power is divided
    by the summed mean power of the four bins ``neighbour`` away. Photographic texture
    spreads its power over neighbouring frequencies (about 1); a pattern locked to the pixel
    grid, as stride-2 transposed convs paint, puts it in the harmonic bins alone (far above 1).
    The harmonics of an 8-px grid include those of the 4- and 2-px grids.
    """
    h, w = region.shape[-2:]
    power = _windowed_power(region)
    fy = torch.arange(0, h, h // period, device=power.device)[:, None]
    fx = torch.arange(0, w, w // period, device=power.device)[None, :]
    not_dc = (torch.arange(period * period, device=power.device) > 0).view(period, period)
    offsets = ((neighbour, 0), (-neighbour, 0), (0, neighbour), (0, -neighbour))
    around = sum(power[..., (fy + dy) % h, (fx + dx) % w] for dy, dx in offsets) / len(offsets)
    floor = 1e-8 * power.sum((-2, -1)).detach() + 1e-30  # a flat region: 1, not 0 / 0
    return ((power[..., fy, fx] * not_dc).sum((-2, -1)) + floor) / ((around * not_dc).sum((-2, -1)) + floor)


def hole_box(hole: Tensor, period: int = GRID_PERIOD, min_side: int = GRID_MIN_SIDE,
             grow: float = 0.0) -> Optional[tuple[slice, slice]]:
    """The bounding box of ``hole`` (H x W, true in the hole) with ``grow`` times its side added on
    each side, grown to sides that are multiples of ``period`` and at least ``min_side``, inside
    the image; None for an empty hole."""
    rows, cols = torch.nonzero(hole, as_tuple=True)
    if rows.numel() == 0:
        return None
    box = []
    for lo, hi, size in ((int(rows.min()), int(rows.max()) + 1, hole.shape[0]), (int(cols.min()), int(cols.max()) + 1, hole.shape[1])):
        wanted = (hi - lo) + 2 * round(grow * (hi - lo))
        side = min(max(min_side, -(-wanted // period) * period), size // period * period)
        start = min(max(0, (lo + hi - side) // 2), size - side)
        box.append(slice(start, start + side))
    return box[0], box[1]


def grid_loss(composite: Tensor, mask: Tensor) -> Tensor:
    """``log`` of :func:`grid_ratio` above ``log GRID_TOLERANCE``, summed over ``GRID_VIEWS`` of
    each sample's hole, averaged over channels and samples.

    ``mask``: N x 1 x H x W, 1 in the hole. Not in the paper: a penalty on a periodic grid over
    the fill (docs/method.md, 'Losses: beyond the paper').
    """
    with torch.autocast(composite.device.type, enabled=False):
        composite, mask = _float32(composite, mask)
        costs = []
        for image, hole in zip(composite, mask[:, 0] > 0.5):
            cost = []
            for grow, period, neighbour in GRID_VIEWS:
                box = hole_box(hole, grow=grow)
                if box is not None:
                    ratio = grid_ratio(image[:, box[0], box[1]], period, neighbour)
                    cost.append(F.relu(torch.log(ratio) - math.log(GRID_TOLERANCE)).mean())
            if cost:
                costs.append(torch.stack(cost).sum())
        return torch.stack(costs).mean() if costs else composite.new_zeros(())


PEAK_INNER = 1  # a bin's power is the mean over the (2 r + 1)^2 bins around it: a Hann-windowed line's main lobe
PEAK_OUTER = 4  # ... compared with the mean over the ring out to this many bins (the inner square left out)
PEAK_DC = 4  # bins this close to 0 frequency are left out: a photo's steep low-frequency slope is no peak
PEAK_TOLERANCE = 3.0  # a bin up to this many times its ring is free (photos: rarely above)
PEAK_SCALE = 100.0  # the cost's unit: the bundled csa-texture's centre fills cost about 3, photos 0.1


def _box_mean(power: Tensor, radius: int) -> Tensor:
    """Circular mean of ``power`` (... x H x W) over a (2 radius + 1)^2 square around each bin."""
    side = 2 * radius + 1
    flat = power.reshape(-1, 1, *power.shape[-2:])
    padded = F.pad(flat, (radius,) * 4, mode="circular")
    return F.avg_pool2d(padded, side, stride=1).reshape(power.shape)


def peak_excess(region: Tensor) -> Tensor:
    """How much narrow peaks stand out of ``region``'s spectrum, per channel (... x C x H x W -> ... x C).

    With the mean removed and a 2-D Hann window applied, each bin's power (averaged over its
    3 x 3 square) is compared with the mean power of the ring around it out to ``PEAK_OUTER``
    bins; the excess of ``log`` of that ratio over ``log PEAK_TOLERANCE`` is averaged over every
    bin further than ``PEAK_DC`` from 0 frequency, times ``PEAK_SCALE``. A pattern locked to
    the pixel grid at any period or angle puts its power in isolated bins and scores high;
    photographic texture spreads its power and scores near 0. The ring is not differentiated:
    the only way down is to take power out of the peak, not to add noise around it.
    """
    h, w = region.shape[-2:]
    power = _windowed_power(region)
    inner = _box_mean(power, PEAK_INNER)
    n_in, n_out = (2 * PEAK_INNER + 1) ** 2, (2 * PEAK_OUTER + 1) ** 2
    ring = ((_box_mean(power, PEAK_OUTER) * n_out - inner * n_in) / (n_out - n_in)).detach()
    fy = torch.fft.fftfreq(h, device=power.device) * h
    fx = torch.fft.fftfreq(w, device=power.device) * w
    far = (fy[:, None] ** 2 + fx[None, :] ** 2) > PEAK_DC ** 2
    floor = 1e-8 * power.sum((-2, -1), keepdim=True).detach() + 1e-30  # a flat region: 0, not 0 / 0
    excess = F.relu(torch.log((inner + floor) / (ring + floor)) - math.log(PEAK_TOLERANCE)) * far
    return PEAK_SCALE * excess.sum((-2, -1)) / far.sum()


def peak_loss(composite: Tensor, gt: Tensor, mask: Tensor) -> Tensor:
    """:func:`peak_excess` of the fill in each hole's box above that of the truth in the same box,
    averaged over channels and samples (a truth with real periodic texture, a fence or bricks,
    lets the fill have as much).

    ``mask``: N x 1 x H x W, 1 in the hole. Not in the paper (docs/method.md, 'Losses: beyond
    the paper').
    """
    with torch.autocast(composite.device.type, enabled=False):
        composite, gt, mask = _float32(composite, gt, mask)
        costs = []
        for image, truth, hole in zip(composite, gt, mask[:, 0] > 0.5):
            box = hole_box(hole)
            if box is not None:
                with torch.no_grad():
                    allowed = peak_excess(truth[:, box[0], box[1]])
                costs.append(F.relu(peak_excess(image[:, box[0], box[1]]) - allowed).mean())
        return torch.stack(costs).mean() if costs else composite.new_zeros(())


class VGGPair(NamedTuple):
    """VGG16 features of the ground truth (no gradient) and of the fake (with gradient)."""

    real_pool3: Optional[Tensor]
    real_relu43: Optional[Tensor]
    fake_pool3: Optional[Tensor]
    real_pools: tuple[Tensor, ...] = ()  # pool1, pool2, pool3: the texture terms
    fake_pools: tuple[Tensor, ...] = ()


class Objective(nn.Module):
    """Generator and discriminator losses of one step, as dicts of named terms plus 'total'.

    ``vgg`` is a frozen :class:`csa.nn.vgg.VGG16Features` (may be None when no term needs it).
    ``d_input``: what the discriminators see as fake, the raw refined output (release) or
    the composite.
    """

    def __init__(self, vgg: Optional[nn.Module], tap_channels: int, weights: Optional[LossWeights] = None,
                 d_input: Literal["raw", "composite"] = "raw") -> None:
        super().__init__()
        self.weights = weights or LossWeights()
        if self.weights.needs_vgg and vgg is None:
            raise CsaError("the consistency, feature-GAN and texture terms need VGG16 weights: pass "
                           "vgg=csa.weights.load_vgg16_default() (its file comes from `csa weights fetch vgg16`)")
        if d_input not in ("raw", "composite"):
            raise CsaError(f"d_input must be 'raw' or 'composite', got {d_input!r}")
        self.vgg = vgg
        self.d_input = d_input
        self.consistency = ConsistencyLoss(tap_channels)

    def fake(self, out: GeneratorOutput) -> Tensor:
        return out.refined if self.d_input == "raw" else out.composite

    def vgg_features(self, out: GeneratorOutput, gt: Tensor) -> VGGPair:
        """One VGG pass on the ground truth and one on the fake, shared by the D and G steps."""
        if not self.weights.needs_vgg:
            return VGGPair(None, None, None)
        with torch.no_grad():
            real = self.vgg(gt)
        fake = self.vgg(self.fake(out), stop_at_pool3=True) if self.weights.needs_fake_vgg else None
        return VGGPair(real.pool3, real.relu4_3, fake.pool3 if fake is not None else None,
                       real.pools, fake.pools if fake is not None else ())

    def discriminator_loss(self, d_image: nn.Module, d_feature: nn.Module, out: GeneratorOutput,
                           gt: Tensor, feats: VGGPair) -> dict[str, Tensor]:
        """0.5 * RaLSGAN_D(D_img) + 0.5 * RaLSGAN_D(D_feat), fakes detached."""
        terms: dict[str, Tensor] = {}
        if self.weights.gan_image > 0:
            terms["d_image"] = ralsgan_d(d_image(gt), d_image(self.fake(out).detach()))
        if self.weights.gan_feature > 0:
            terms["d_feature"] = ralsgan_d(d_feature(feats.real_pool3), d_feature(feats.fake_pool3.detach()))
        terms["total"] = 0.5 * sum(terms.values()) if terms else gt.new_zeros(())
        return terms

    def generator_loss(self, d_image: Optional[nn.Module], d_feature: Optional[nn.Module], out: GeneratorOutput,
                       gt: Tensor, mask: Tensor, feats: VGGPair) -> dict[str, Tensor]:
        """The weighted generator objective (docs/method.md, 'Losses'); unweighted terms are returned too."""
        w = self.weights
        terms = {"l1_refined": weighted_l1(out.refined, gt, mask, w.l1_hole_weight),
                 "l1_rough": weighted_l1(out.rough, gt, mask, w.l1_hole_weight)}
        total = w.l1 * (terms["l1_refined"] + terms["l1_rough"])
        if w.consistency > 0:
            terms["consistency"] = self.consistency((out.tap_enc, out.tap_dec), feats.real_relu43, out.mask_feat)
            total = total + w.consistency * terms["consistency"]
        if w.gan_image > 0:
            terms["g_image"] = ralsgan_g(d_image(gt).detach(), d_image(self.fake(out)))
            total = total + w.gan_image * terms["g_image"]
        if w.gan_feature > 0:
            terms["g_feature"] = ralsgan_g(d_feature(feats.real_pool3).detach(), d_feature(feats.fake_pool3))
            total = total + w.gan_feature * terms["g_feature"]
        if w.perceptual > 0:
            terms["perceptual"] = perceptual_loss(feats.fake_pools, feats.real_pools)
            total = total + w.perceptual * terms["perceptual"]
        if w.style > 0:
            terms["style"] = style_loss(feats.fake_pools, feats.real_pools)
            total = total + w.style * terms["style"]
        if w.grid > 0:
            terms["grid"] = grid_loss(out.composite, mask)
            total = total + w.grid * terms["grid"]
        if w.peak > 0:
            terms["peak"] = peak_loss(out.composite, gt, mask)
            total = total + w.peak * terms["peak"]
        terms["total"] = total
        return terms
