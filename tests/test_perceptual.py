"""FID and LPIPS: the formulas, and loading user-supplied files (tiny stand-ins here)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from csa import perceptual
from csa.errors import CsaError


def test_frechet_distance_by_hand():
    # Diagonal covariances: tr(sqrt(C1 C2)) = sum sqrt(c1_i c2_i).
    mu1, mu2 = np.array([0.0, 1.0]), np.array([3.0, 1.0])
    c1, c2 = np.diag([1.0, 4.0]), np.diag([9.0, 1.0])
    want = 9.0 + (1 + 4 + 9 + 1) - 2 * (3.0 + 2.0)
    assert perceptual.frechet_distance(mu1, c1, mu2, c2) == pytest.approx(want)
    # a full-rank non-diagonal case against scipy's matrix square root
    from scipy.linalg import sqrtm

    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(4, 4)), rng.normal(size=(4, 4))
    c1, c2 = a @ a.T + np.eye(4), b @ b.T + np.eye(4)
    ref = np.trace(c1 + c2 - 2 * np.real(sqrtm(c1 @ c2)))
    assert perceptual.frechet_distance(np.zeros(4), c1, np.zeros(4), c2) == pytest.approx(ref, rel=1e-8)


def test_fid_of_identical_sets_is_zero_and_grows_with_shift():
    rng = np.random.default_rng(1)
    real = rng.normal(size=(50, 3))
    assert perceptual.fid_from_features(real, real) == pytest.approx(0.0, abs=1e-8)
    assert perceptual.fid_from_features(real, real + [2.0, 0, 0]) == pytest.approx(4.0, rel=1e-6)
    with pytest.raises(CsaError, match="at least 2"):
        perceptual.fid_from_features(real[:1], real[:1])


class _Pool(torch.nn.Module):
    """A stand-in for the Inception TorchScript file: per-channel means and stds."""

    def forward(self, x: torch.Tensor, return_features: bool = False) -> torch.Tensor:
        assert return_features
        return torch.cat([x.mean((2, 3)), x.std((2, 3))], 1)


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated")
def test_fid_accumulator_with_a_torchscript_file(tmp_path):
    path = tmp_path / "inception.pt"
    torch.jit.script(_Pool()).save(str(path))
    acc = perceptual.FidAccumulator.from_file(path)
    rng = np.random.default_rng(2)
    imgs = [rng.integers(0, 256, (16, 16, 3), dtype=np.uint8) for _ in range(6)]
    for im in imgs:
        acc.add_real(im)
        acc.add_fake("same", im)
        acc.add_fake("dark", im // 2)
    got = acc.compute()
    assert acc.count == 6
    assert got["same"] == pytest.approx(0.0, abs=1e-6)
    assert got["dark"] > 100  # means halve: about 64 grey levels off per channel
    feats = acc.features(imgs[0])
    assert feats[:3] == pytest.approx(imgs[0].reshape(-1, 3).mean(0), rel=1e-5)  # 0-255 input
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a torchscript file")
    with pytest.raises(CsaError, match="TorchScript"):
        perceptual.FidAccumulator.from_file(bad)


@pytest.fixture
def lpips_files(tmp_path):
    """Random AlexNet features (torchvision keys) and non-negative heads, as files."""
    torch.manual_seed(0)
    features, _ = perceptual._layers("alex")
    net = tmp_path / "alexnet.pth"
    torch.save({f"features.{k}": v for k, v in features.state_dict().items()} | {"classifier.1.weight": torch.zeros(2)}, net)
    lin = tmp_path / "alex.pth"
    chans = (64, 192, 384, 256, 256)
    torch.save({f"lin{k}.model.1.weight": torch.rand(1, c, 1, 1) for k, c in enumerate(chans)}, lin)
    return net, lin


def test_lpips_loads_files_and_behaves_like_a_distance(lpips_files):
    net, lin = lpips_files
    lp = perceptual.LPIPS.from_files(net, lin)
    assert lp.net == "alex"
    rng = np.random.default_rng(3)
    a = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    b = np.clip(a.astype(int) + rng.integers(-30, 31, a.shape), 0, 255).astype(np.uint8)
    c = 255 - a
    assert lp(a, a) == pytest.approx(0.0, abs=1e-9)
    assert lp(a, b) == pytest.approx(lp(b, a), rel=1e-5)
    assert 0 < lp(a, b) < lp(a, c)


def test_lpips_file_errors(lpips_files, tmp_path):
    net, lin = lpips_files
    with pytest.raises(CsaError, match="not found"):
        perceptual.LPIPS.from_files(tmp_path / "missing.pth", lin)
    wrong = tmp_path / "wrong.pth"
    torch.save({"features.0.weight": torch.zeros(1)}, wrong)
    with pytest.raises(CsaError, match="AlexNet"):
        perceptual.LPIPS.from_files(wrong, lin)
    with pytest.raises(CsaError, match="lin0"):
        perceptual.LPIPS.from_files(net, wrong)
