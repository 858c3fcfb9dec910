"""The CSA layer against a plain loop written here, independently of csa.nn.attention."""
from __future__ import annotations

import pytest
import torch

from csa.errors import CsaError
from csa.nn.attention import CoherentSemanticAttention, csa_reference, feature_mask


def loop_csa(features: torch.Tensor, mask: torch.Tensor, mode: str) -> torch.Tensor:
    """docs/method.md, 'The CSA layer' written as the release does it: a raster scan over every position, per sample."""
    n, c, h, w = features.shape
    out = features.clone()
    for s in range(n):
        f = features[s]
        known = [(i, j) for i in range(h) for j in range(w) if mask[s, 0, i, j] < 0.5]
        prev = None
        for i in range(h):
            for j in range(w):
                if mask[s, 0, i, j] < 0.5:
                    continue
                q = f[:, i, j]
                best, best_score = None, None
                for (ki, kj) in known:
                    k = f[:, ki, kj]
                    score = torch.dot(q, k / (k.norm() + 1e-8))
                    if best_score is None or score > best_score:
                        best, best_score = (ki, kj), score
                src = f[:, best[0], best[1]]
                if prev is None:
                    g = src
                else:
                    dad = torch.dot(prev, q / (q.norm() + 1e-8))
                    dmax = best_score
                    if mode == "stable":
                        dad = max(dad / (prev.norm() + 1e-8), torch.zeros(()))
                        dmax = max(dmax / (q.norm() + 1e-8), torch.zeros(()))
                        total = dad + dmax
                        a, b = (dad / total, dmax / total) if total > 1e-8 else (0.0, 1.0)
                    else:
                        a, b = dad / (dad + dmax), dmax / (dad + dmax)
                    g = a * prev + b * src
                out[s, :, i, j] = g
                prev = g
    return out


def three_masks(h: int = 8, w: int = 8) -> torch.Tensor:
    m = torch.zeros(3, 1, h, w)
    m[0, :, 2:5, 3:6] = 1  # a block spanning several rows
    m[1, :, 0, 0] = 1  # a single hole at the corner
    m[2, :, 5:, :3] = 1  # a hole at the border
    return m


@pytest.mark.parametrize("mode", ["official", "stable"])
def test_layer_matches_the_plain_loop(mode: str) -> None:
    torch.manual_seed(1)
    feats = torch.randn(3, 16, 8, 8, dtype=torch.float64)
    if mode == "official":
        feats = torch.rand(3, 16, 8, 8, dtype=torch.float64) + 0.1  # positive: the argmax has a margin
    mask = three_masks()
    out = CoherentSemanticAttention(mode)(feats, mask)
    torch.testing.assert_close(out, loop_csa(feats, mask, mode), rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(csa_reference(feats, mask, mode), out, rtol=1e-9, atol=1e-9)


def test_known_positions_come_back_unchanged() -> None:
    feats = torch.randn(3, 16, 8, 8)
    mask = three_masks()
    out = CoherentSemanticAttention("stable")(feats, mask)
    known = (mask < 0.5).expand_as(feats)
    assert torch.equal(out[known], feats[known])
    assert not torch.equal(out[~known], feats[~known])


def test_hole_outputs_are_affine_combinations_of_known_features() -> None:
    # The first hole copies its best known match exactly.
    feats = torch.randn(1, 8, 6, 6)
    mask = torch.zeros(1, 1, 6, 6)
    mask[0, 0, 2, 2:4] = 1
    out = CoherentSemanticAttention("stable")(feats, mask)
    first = out[0, :, 2, 2]
    known = feats[0].reshape(8, -1)[:, (mask[0, 0] < 0.5).flatten()]
    assert torch.isclose((known - first[:, None]).abs().sum(0), torch.zeros(())).any()


@pytest.mark.parametrize("mode", ["official", "stable"])
def test_gradcheck_float64(mode: str) -> None:
    torch.manual_seed(2)
    feats = (torch.rand(2, 4, 4, 4, dtype=torch.float64) + 0.2).requires_grad_()
    mask = torch.zeros(2, 1, 4, 4, dtype=torch.float64)
    mask[0, :, 1:3, 1:3] = 1
    mask[1, :, 3, :] = 1
    layer = CoherentSemanticAttention(mode)
    assert torch.autograd.gradcheck(lambda f: layer(f, mask), (feats,), eps=1e-6, atol=1e-6)


def test_gradient_reaches_the_sources_and_the_holes() -> None:
    feats = torch.randn(1, 8, 6, 6, requires_grad=True)
    mask = torch.zeros(1, 1, 6, 6)
    mask[0, 0, 2:4, 1:5] = 1
    CoherentSemanticAttention("stable")(feats, mask).sum().backward()
    grad = feats.grad[0].abs().sum(0)
    assert grad[mask[0, 0] > 0.5].sum() > 0  # through Dad / Dmax
    assert grad[mask[0, 0] < 0.5].sum() > 0


def test_mask_of_the_wrong_shape_is_refused() -> None:
    with pytest.raises(CsaError, match=r"\(1, 1, 4, 4\).*\(1, 8, 6, 6\)"):
        CoherentSemanticAttention()(torch.randn(1, 8, 6, 6), torch.zeros(1, 1, 4, 4))


@pytest.mark.parametrize("side,holes", [(128, 256), (120, 252)])
def test_feature_mask_rule(side: int, holes: int) -> None:
    mask = torch.zeros(1, 1, 256, 256)
    start = (256 - side) // 2
    mask[:, :, start : start + side, start : start + side] = 1
    fm = feature_mask(mask)
    assert fm.shape == (1, 1, 32, 32)
    assert int(fm.sum()) == holes
