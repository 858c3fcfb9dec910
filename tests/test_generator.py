"""The two-stage generator, its discriminators, and their sizes against the release."""
from __future__ import annotations

import pytest
import torch

from csa.config import ModelConfig
from csa.errors import CsaError
from csa.nn import FeatureDiscriminator, PatchDiscriminator, build_generator


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_parameter_counts_equal_the_release() -> None:
    g = build_generator(ModelConfig())
    assert n_params(g.rough) == 54_419_459
    assert n_params(g.refine) == 77_692_291
    assert n_params(PatchDiscriminator()) == 2_766_529
    assert n_params(FeatureDiscriminator()) == 10_487_296


def test_discriminator_output_shapes() -> None:
    assert PatchDiscriminator(ndf=8)(torch.randn(1, 3, 256, 256)).shape == (1, 1, 30, 30)
    assert FeatureDiscriminator(width=16)(torch.randn(1, 256, 32, 32)).shape[-2:] == (4, 4)
    assert FeatureDiscriminator(width=16, variant="paper")(torch.randn(1, 256, 32, 32)).shape[-2:] == (14, 14)


def centre_mask(n: int = 1, side: int = 128) -> torch.Tensor:
    m = torch.zeros(n, 1, 256, 256)
    s = (256 - side) // 2
    m[:, :, s : s + side, s : s + side] = 1
    return m


@pytest.fixture
def tiny():
    return build_generator(ModelConfig(rough_ngf=4, refine_ngf=4)).eval()


def test_forward_shapes_and_composite(tiny) -> None:
    image = torch.rand(2, 3, 256, 256) * 2 - 1
    mask = centre_mask(2)
    mask[1] = 0
    mask[1, :, 10:80, 150:250] = 1  # each sample its own mask
    out = tiny(image, mask)
    assert out.rough.shape == out.refined.shape == out.composite.shape == image.shape
    assert out.tap_enc.shape == out.tap_dec.shape == (2, 32, 32, 32)
    known = (mask < 0.5).expand_as(image)
    assert torch.equal(out.composite[known], image[known])
    assert out.composite.abs().max() <= 1


def test_the_hole_pixels_are_never_read(tiny) -> None:
    image = torch.rand(1, 3, 256, 256) * 2 - 1
    mask = centre_mask()
    poisoned = image.clone()
    poisoned[mask.expand_as(image) > 0.5] = float("nan")
    a, b = tiny(image, mask), tiny(poisoned, mask)
    assert torch.isfinite(b.composite).all()
    torch.testing.assert_close(a.composite, b.composite, rtol=0, atol=0)


def test_a_mask_with_no_hole_gives_the_image_back(tiny) -> None:
    image = torch.rand(1, 3, 256, 256) * 2 - 1
    out = tiny(image, torch.zeros(1, 1, 256, 256))
    assert torch.equal(out.composite, image)


def test_a_mask_leaving_no_known_feature_position_is_refused(tiny) -> None:
    mask = torch.ones(2, 1, 256, 256)
    mask[0] = 0
    mask[1, :, :4, :4] = 0  # a few known pixels, but none survives at 32x32
    with pytest.raises(CsaError, match=r"sample\(s\) \[1\]"):
        tiny(torch.zeros(2, 3, 256, 256), mask)


def test_a_mask_of_the_wrong_shape_names_both_shapes(tiny) -> None:
    with pytest.raises(CsaError, match=r"\(1, 1, 128, 128\).*\(1, 3, 256, 256\)"):
        tiny(torch.zeros(1, 3, 256, 256), torch.zeros(1, 1, 128, 128))


def test_sides_must_be_multiples_of_256(tiny) -> None:
    with pytest.raises(CsaError, match="multiples of 256"):
        tiny(torch.zeros(1, 3, 200, 256), torch.zeros(1, 1, 200, 256))
