"""The objective: gradients reach the nets the paper says they reach (unlike the release)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from csa.config import ModelConfig
from csa.losses import ConsistencyLoss, LossWeights, Objective, masked_mse, ralsgan_d, ralsgan_g, weighted_l1
from csa.nn import FeatureDiscriminator, PatchDiscriminator, build_generator
from csa.nn.vgg import VGG16Features


def test_ralsgan_matches_the_formula() -> None:
    real, fake = torch.tensor([1.0, 2.0]), torch.tensor([0.0, -1.0])
    # mean real 1.5, mean fake -0.5
    d = 0.5 * (((real + 0.5 - 1) ** 2).mean() + ((fake - 1.5 + 1) ** 2).mean())
    g = 0.5 * (((real + 0.5 + 1) ** 2).mean() + ((fake - 1.5 - 1) ** 2).mean())
    assert torch.isclose(ralsgan_d(real, fake), d)
    assert torch.isclose(ralsgan_g(real, fake), g)


def test_masked_mse_counts_only_the_hole() -> None:
    pred, target = torch.zeros(1, 2, 2, 2), torch.ones(1, 2, 2, 2)
    target[0, :, 0, 0] = 3.0  # the only hole position: error 9 in both channels
    mask = torch.zeros(1, 1, 2, 2)
    mask[0, 0, 0, 0] = 1
    assert masked_mse(pred, target, mask).item() == pytest.approx(9.0)


def test_consistency_projection_only_for_narrow_taps() -> None:
    assert all(isinstance(p, torch.nn.Identity) for p in ConsistencyLoss(512).projections)
    assert all(isinstance(p, torch.nn.Conv2d) for p in ConsistencyLoss(32).projections)


@pytest.fixture(scope="module")
def step():
    torch.manual_seed(0)
    g = build_generator(ModelConfig(rough_ngf=4, refine_ngf=4))
    d_img, d_feat = PatchDiscriminator(ndf=8), FeatureDiscriminator(width=16)
    objective = Objective(VGG16Features(), tap_channels=32)
    gt = torch.rand(2, 3, 256, 256) * 2 - 1
    mask = torch.zeros(2, 1, 256, 256)
    mask[:, :, 64:192, 64:192] = 1
    return g, d_img, d_feat, objective, gt, mask


def grads_of(loss: torch.Tensor, module: torch.nn.Module) -> float:
    params = [p for p in module.parameters() if p.requires_grad]
    grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
    return sum(float(gr.abs().sum()) for gr in grads if gr is not None)


def generator_terms(step, weights: LossWeights) -> dict:
    g, d_img, d_feat, objective, gt, mask = step
    objective.weights = weights
    out = g(gt * (1 - mask), mask)
    feats = objective.vgg_features(out, gt)
    return objective.generator_loss(d_img, d_feat, out, gt, mask, feats)


def test_consistency_and_feature_gan_terms_reach_the_refine_net(step) -> None:
    g = step[0]
    terms = generator_terms(step, LossWeights())
    assert grads_of(terms["consistency"], g.refine) > 0
    assert grads_of(terms["g_feature"], g.refine) > 0
    assert grads_of(terms["g_image"], g.refine) > 0
    assert all(torch.isfinite(v) for v in terms.values())


def test_rough_net_learns_only_from_its_own_l1(step) -> None:
    g = step[0]
    terms = generator_terms(step, LossWeights())
    assert grads_of(terms["l1_rough"], g.rough) > 0
    for name in ("l1_refined", "consistency", "g_image", "g_feature"):
        assert grads_of(terms[name], g.rough) == 0, name


def test_discriminator_loss_trains_only_the_discriminators(step) -> None:
    g, d_img, d_feat, objective, gt, mask = step
    objective.weights = LossWeights()
    out = g(gt * (1 - mask), mask)
    terms = objective.discriminator_loss(d_img, d_feat, out, gt, objective.vgg_features(out, gt))
    assert grads_of(terms["total"], d_img) > 0 and grads_of(terms["total"], d_feat) > 0
    assert grads_of(terms["total"], g) == 0


def test_vgg_can_stop_at_pool3() -> None:
    vgg = VGG16Features()
    x = torch.rand(1, 3, 64, 64) * 2 - 1
    full, short = vgg(x), vgg(x, stop_at_pool3=True)
    assert short.relu4_3 is None
    assert torch.equal(full.pool3, short.pool3)


def test_weighted_l1_counts_hole_pixels_hole_weight_times() -> None:
    gen = torch.Generator().manual_seed(0)
    out, gt = torch.randn(2, 3, 8, 8, generator=gen), torch.randn(2, 3, 8, 8, generator=gen)
    mask = torch.zeros(2, 1, 8, 8)
    mask[0, :, 2:5, 2:6] = 1
    mask[1, :, 6:, :] = 1
    assert torch.equal(weighted_l1(out, gt, mask), torch.nn.functional.l1_loss(out, gt))  # the paper's
    diff = (out - gt).abs()
    hole = mask.expand_as(diff) > 0.5
    expected = (diff[~hole].sum() + 6 * diff[hole].sum()) / diff.numel()
    assert torch.allclose(weighted_l1(out, gt, mask, 6.0), expected)
    # The gradient of a hole pixel is 6 times a known pixel's.
    x = out.clone().requires_grad_()
    weighted_l1(x, gt, mask, 6.0).backward()
    g = x.grad.abs()
    assert torch.allclose(g[hole], torch.full_like(g[hole], 6 / diff.numel()))
    assert torch.allclose(g[~hole], torch.full_like(g[~hole], 1 / diff.numel()))


def test_l1_hole_weight_is_a_config_key() -> None:
    from csa.config import Config
    from csa.errors import CsaError

    assert Config().loss.l1_hole_weight == 1.0
    assert Config().with_overrides(["loss.l1_hole_weight=6"]).loss.l1_hole_weight == 6.0
    with pytest.raises(CsaError, match="l1_hole_weight"):
        Config().with_overrides(["loss.l1_hole_weight=0"])


def test_texture_terms_are_scale_free_and_see_texture():
    """perceptual and style: 0 for identical features, the same for any VGG activation scale,
    and the style term tells a smooth fill from a textured one of the same mean."""
    from csa.losses import gram, perceptual_loss, style_loss

    g = torch.Generator().manual_seed(0)
    real = [torch.rand(2, c, s, s, generator=g) for c, s in ((8, 16), (16, 8), (32, 4))]
    assert perceptual_loss(real, real).item() == 0.0 and style_loss(real, real).item() == 0.0
    fake = [r + 0.1 * torch.randn(r.shape, generator=g) for r in real]
    for loss in (perceptual_loss, style_loss):
        a = loss(fake, real)
        b = loss([7.0 * f for f in fake], [7.0 * r for r in real])
        # the same arithmetic on scaled inputs: equal to float32 rounding of a few sums
        assert torch.allclose(a, b, rtol=1e-5), (loss.__name__, a, b)
    # a flat fill with the texture's mean vs the texture itself: the Gram matrices differ
    texture = torch.rand(1, 4, 16, 16, generator=g)
    flat = texture.mean(dim=(2, 3), keepdim=True).expand_as(texture)
    assert style_loss([flat], [texture]).item() > 0.05
    assert gram(texture).shape == (1, 4, 4)


def test_texture_terms_reach_the_generator():
    """With loss.style / loss.perceptual on, the terms appear and their gradient reaches the refine net."""
    torch.manual_seed(0)
    config = ModelConfig(rough_ngf=4, refine_ngf=4)
    model = build_generator(config)
    weights = LossWeights(consistency=0.0, gan_image=0.0, gan_feature=0.0, perceptual=1.0, style=1.0)
    objective = Objective(VGG16Features(), config.tap_channels, weights)
    x = torch.rand(1, 3, 256, 256) * 2 - 1
    mask = torch.zeros(1, 1, 256, 256)
    mask[..., 96:160, 96:160] = 1
    out = model(x, mask)
    terms = objective.generator_loss(None, None, out, x, mask, objective.vgg_features(out, x))
    assert terms["perceptual"].item() > 0 and terms["style"].item() > 0
    (terms["perceptual"] + terms["style"]).backward()
    grads = [p.grad for n, p in model.named_parameters() if n.startswith("refine") and p.grad is not None]
    assert grads and any(gr.abs().sum() > 0 for gr in grads)


def photo_like_texture(side: int) -> torch.Tensor:
    """2 x 3 x side x side noise blurred at several scales: power falling off with frequency."""
    noise = torch.randn(2, 3, side, side, generator=torch.Generator().manual_seed(0))
    return sum(F.interpolate(F.avg_pool2d(noise, k), size=side, mode="bilinear", align_corners=False)
               for k in (2, 4, 8, 16)) * 0.2


def assert_spectral_term_reaches_the_refine_net(name: str) -> None:
    """With only loss.<name> on, a tiny generator's fill of a 64-px hole costs, and the
    term's gradient reaches the refine net."""
    torch.manual_seed(0)
    config = ModelConfig(rough_ngf=4, refine_ngf=4)
    model = build_generator(config)
    weights = LossWeights(consistency=0.0, gan_image=0.0, gan_feature=0.0, **{name: 1.0})
    objective = Objective(None, config.tap_channels, weights)
    x = torch.rand(1, 3, 256, 256) * 2 - 1
    mask = torch.zeros(1, 1, 256, 256)
    mask[..., 96:160, 96:160] = 1
    out = model(x, mask)
    terms = objective.generator_loss(None, None, out, x, mask, objective.vgg_features(out, x))
    assert terms[name].item() > 0
    terms[name].backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for n, p in model.named_parameters() if n.startswith("refine"))


def test_grid_term_sees_a_mesh_along_the_border_of_the_hole():
    """A mesh only in the outer 8 px of a 64-px hole: the hole's own box (its Hann window weighs
    the border little) hardly sees it; the term's grown views do."""
    import math

    from csa.losses import GRID_TOLERANCE, grid_loss, grid_ratio, hole_box

    truth = photo_like_texture(128)
    hole = torch.zeros(2, 1, 128, 128)
    hole[..., 32:96, 32:96] = 1
    ring = hole.clone()
    ring[..., 40:88, 40:88] = 0
    yy, xx = torch.meshgrid(torch.arange(128), torch.arange(128), indexing="ij")
    for pattern in (((yy + xx) % 2 * 2 - 1).float(), ((yy % 8 == 0) & (xx % 8 == 0)).float() * 4):
        meshed = truth + 0.05 * pattern * ring
        rows, cols = hole_box(hole[0, 0] > 0)
        own_box = F.relu(torch.log(grid_ratio(meshed[:, :, rows, cols])) - math.log(GRID_TOLERANCE)).mean().item()
        assert own_box < 0.1
        assert grid_loss(meshed, hole).item() > 0.5 > 5 * grid_loss(truth, hole).item()


def test_grid_term_sees_a_pixel_grid_not_texture():
    """loss.grid: a 2-, 4- or 8-pixel grid in the fill costs; texture with a smooth spectrum,
    the same texture shifted by a pixel, a flat fill and an empty hole cost (about) nothing;
    the term reaches the refine net."""
    from csa.losses import grid_loss, grid_ratio, hole_box

    truth = photo_like_texture(64)
    hole = torch.zeros(2, 1, 64, 64)
    hole[..., 16:48, 16:48] = 1
    base = grid_loss(truth, hole).item()
    assert base < 0.05
    assert grid_loss(torch.roll(truth, 1, dims=3), hole).item() < 0.05
    assert grid_loss(torch.zeros_like(truth), hole).item() == 0.0
    assert grid_loss(truth, torch.zeros_like(hole)).item() == 0.0
    yy, xx = torch.meshgrid(torch.arange(64), torch.arange(64), indexing="ij")
    grids = [((yy + xx) % 2 * 2 - 1).float(), ((xx // 2) % 2 * 2 - 1).float(), ((yy // 4) % 2 * 2 - 1).float()]
    for pattern in grids:
        cost = grid_loss(torch.where(hole > 0, truth + 0.05 * pattern, truth), hole).item()
        assert cost > 0.5, cost  # log of the ratio above log 2: the ratio is above about 3.3
    # The box: the hole's bounding box grown to multiples of 8 px and at least 32 px, inside the image.
    small = torch.zeros(64, 64, dtype=torch.bool)
    small[60:63, 1:12] = True
    assert hole_box(small) == (slice(32, 64), slice(0, 32))
    assert grid_ratio(torch.zeros(3, 32, 32)).tolist() == [1.0, 1.0, 1.0]

    square = torch.zeros(64, 64, dtype=torch.bool)
    square[16:48, 16:48] = True
    assert hole_box(square, grow=1 / 3) == (slice(4, 60), slice(4, 60))  # 32 + 2 * 11 px, to 56

    assert_spectral_term_reaches_the_refine_net("grid")


def test_peak_term_sees_a_pattern_at_any_frequency_beyond_the_truths():
    """loss.peak: a faint diagonal or off-grid pattern in the fill, which the grid term does not
    watch, costs; texture with a smooth spectrum, a shifted copy, a flat fill, an empty hole and a
    fill that repeats the truth's own periodic texture cost (about) nothing; the term reaches the
    refine net."""
    import math

    from csa.losses import grid_loss, peak_loss

    truth = photo_like_texture(128)
    hole = torch.zeros(2, 1, 128, 128)
    hole[..., 32:96, 32:96] = 1
    assert peak_loss(truth, truth, hole).item() == 0.0
    assert peak_loss(torch.roll(truth, 1, dims=3), truth, hole).item() < 0.05
    assert peak_loss(torch.zeros_like(truth), truth, hole).item() == 0.0
    assert peak_loss(truth, truth, torch.zeros_like(hole)).item() == 0.0
    yy, xx = torch.meshgrid(torch.arange(128).float(), torch.arange(128).float(), indexing="ij")
    for fy, fx in ((7, 11), (-13, 5), (3, 29)):  # cycles per 64 px: none a harmonic of a 2/4/8-px grid
        wave = torch.cos(2 * math.pi * (fy * yy + fx * xx) / 64)
        meshed = torch.where(hole > 0, truth + 0.05 * wave, truth)
        assert grid_loss(meshed, hole).item() < 0.1
        assert peak_loss(meshed, truth, hole).item() > 0.3  # one wave: 2 peak bins of about 3,200
        # a truth with that pattern of its own (a fence, bricks) lets the fill have it too
        assert peak_loss(meshed, truth + 0.05 * wave, hole).item() < 0.05

    assert_spectral_term_reaches_the_refine_net("peak")
