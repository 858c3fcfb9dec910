"""The CSA layer's sources (csa.nn.attention.CsaSources) and Inpainter.explain."""
from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():
    # Without a GPU the Triton kernels run in Triton's CPU interpreter (set before they import).
    os.environ.setdefault("TRITON_INTERPRET", "1")

from csa.nn.attention import CoherentSemanticAttention, csa_reference
from csa.nn.fast_attention import csa_fast, numba_available, triton_available


def _margin_problem(seed: int, n: int = 2, c: int = 16, h: int = 6, w: int = 7):
    """Features whose hole queries each lie close to one known feature: a clear argmax margin."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(n, c, h * w, generator=gen) + 0.1
    mask = torch.zeros(n, 1, h, w)
    mask[0, :, 1:4, 2:6] = 1
    mask[1, :, 4:, :3] = 1
    for i in range(n):
        hole = mask[i].flatten() > 0.5
        known = (~hole).nonzero().flatten()
        for k, p in enumerate(hole.nonzero().flatten().tolist()):
            x[i, :, p] = 0.7 * x[i, :, known[(5 * k + i) % len(known)]] + 0.01 * torch.rand(c, generator=gen)
    return x.view(n, c, h, w), mask


BACKENDS = [("torch", "exact"), ("torch", "padded")] + (
    [("numba", "exact"), ("numba", "padded")] if numba_available() else []
) + [pytest.param("triton", "auto", marks=pytest.mark.skipif(not triton_available(), reason="no Triton"))]


@pytest.mark.parametrize("mode", ["stable", "official"])
@pytest.mark.parametrize("backend,search", BACKENDS)
def test_fast_sources_equal_reference(mode: str, backend: str, search: str) -> None:
    x, mask = _margin_problem(1)
    ref_out, ref = csa_reference(x, mask, mode, return_sources=True)
    out, got = csa_fast(x, mask, mode, backend=backend, search=search, return_sources=True)
    torch.testing.assert_close(out, ref_out, rtol=1e-4, atol=1e-5)
    hole = mask.flatten(1) > 0.5
    assert torch.equal(got.source, ref.source)
    assert torch.equal(got.dominant, ref.dominant)
    assert bool((ref.source[hole] >= 0).all()) and bool((ref.source[~hole] == -1).all())
    known_at_source = torch.gather(~hole, 1, ref.source.clamp(min=0))
    assert bool(known_at_source[hole].all()), "a source must be a known position"
    torch.testing.assert_close(got.blend, ref.blend, rtol=1e-4, atol=1e-5)
    assert got.size == ref.size == (6, 7)


def test_sources_of_a_plain_call_are_not_kept() -> None:
    x, mask = _margin_problem(2)
    layer = CoherentSemanticAttention("stable")
    layer(x, mask)
    assert layer.last_sources is None
    layer.record_sources = True
    out = layer(x, mask)
    assert isinstance(out, torch.Tensor) and layer.last_sources is not None
    assert layer.last_sources.source.shape == (2, 42)


@pytest.mark.parametrize("backend", ["reference", "torch"] + (["numba"] if numba_available() else []))
def test_exact_tie_goes_to_first_known_position(backend: str) -> None:
    # Known positions 0, 2 and 5 hold the same one-hot vector: every score against them is the
    # query's first component, exactly (products with 0 and 1 round nowhere).
    c, h, w = 4, 2, 3
    x = torch.zeros(1, c, h * w)
    x[0, 1, [1, 3, 4]] = 1.0  # the other known positions: another direction
    x[0, 0, [0, 2, 5]] = 1.0
    mask = torch.zeros(1, 1, h, w)
    mask[0, 0, 0, 1] = mask[0, 0, 1, 1] = 1  # holes at positions 1 and 4
    x[0, :, 1] = torch.tensor([0.9, 0.1, 0.0, 0.0])
    x[0, :, 4] = torch.tensor([0.8, 0.2, 0.0, 0.0])
    layer = CoherentSemanticAttention("stable", implementation=backend if backend != "torch" else "torch")
    layer.record_sources = True
    layer(x.view(1, c, h, w), mask)
    src = layer.last_sources.source[0]
    assert src[1].item() == 0 and src[4].item() == 0
    assert src[[0, 2, 3, 5]].tolist() == [-1, -1, -1, -1]


def test_dominant_follows_the_recurrence() -> None:
    # Two holes: the first copies its match (b = 1); the second blends. With a large a the
    # first hole's source stays dominant in the second's output, with a small a its own wins.
    x, mask = _margin_problem(3)
    _, info = csa_reference(x, mask, "stable", return_sources=True)
    hole = (mask[0].flatten() > 0.5).nonzero().flatten()
    first, second = hole[0].item(), hole[1].item()
    assert info.blend[0, first].item() == 1.0
    assert info.dominant[0, first].item() == info.source[0, first].item()
    b = info.blend[0, second].item()
    expected = info.source[0, second] if b >= 1 - b else info.source[0, first]
    if info.source[0, second] != info.source[0, first]:
        assert info.dominant[0, second].item() == expected.item()
