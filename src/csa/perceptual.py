"""Optional learned metrics: FID and LPIPS, from weights files the user supplies.

Nothing here downloads anything: without the files the evaluation reports these
metrics as skipped (never as zero).

FID (Heusel et al. 2017): ``--fid-model`` is an Inception TorchScript file that maps an
N x 3 x H x W float tensor of values 0-255 (RGB) to N x D features. NVIDIA's
``inception-2015-12-05.pt`` (StyleGAN2/3, clean-fid) is such a file; it is called with
``return_features=True`` (2048 pool features) when it takes that keyword, otherwise
plainly. FID is computed between the ground truths and each method's composited outputs
over all images; with fewer images than feature dimensions the covariances are
singular and FID is biased upwards, so compare it only between runs of the same size.

LPIPS v0.1 (Zhang et al. 2018): ``--lpips-net`` is torchvision-format ImageNet weights of
AlexNet (``alexnet-owt-7be5be79.pth``) or VGG16 (``vgg16-397923af.pth``; keys
``features.N.weight``), ``--lpips-lin`` the LPIPS linear heads (``alex.pth`` / ``vgg.pth``
of the ``lpips`` package, keys ``lin{k}.model.1.weight``). The network is chosen from the
heads' channel counts. The layers are defined here because torchvision does not import
next to this project's torch build.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Union

import numpy as np

from .errors import CsaError

PathLike = Union[str, os.PathLike]


# --- FID ------------------------------------------------------------------------------


def frechet_distance(mu1: np.ndarray, cov1: np.ndarray, mu2: np.ndarray, cov2: np.ndarray) -> float:
    """``|mu1 - mu2|^2 + tr(C1 + C2 - 2 (C1 C2)^(1/2))`` for two Gaussians.

    The trace of the matrix square root is taken as the sum of the square roots of the
    eigenvalues of ``C1^(1/2) C2 C1^(1/2)`` (symmetric, positive semi-definite: the same
    eigenvalues as ``C1 C2``), which stays real where ``scipy.linalg.sqrtm`` can return
    complex noise for singular covariances.
    """
    mu1, mu2 = np.atleast_1d(mu1).astype(np.float64), np.atleast_1d(mu2).astype(np.float64)
    cov1, cov2 = np.atleast_2d(cov1).astype(np.float64), np.atleast_2d(cov2).astype(np.float64)
    w, v = np.linalg.eigh((cov1 + cov1.T) / 2)
    root1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    m = root1 @ cov2 @ root1
    eig = np.clip(np.linalg.eigvalsh((m + m.T) / 2), 0, None)
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(cov1) + np.trace(cov2) - 2.0 * np.sqrt(eig).sum())


def fid_from_features(real: np.ndarray, fake: np.ndarray) -> float:
    """FID between two N x D feature sets (sample covariance, N - 1)."""
    if len(real) < 2 or len(fake) < 2:
        raise CsaError("FID needs at least 2 images: raise --limit")
    return frechet_distance(real.mean(0), np.cov(real, rowvar=False), fake.mean(0), np.cov(fake, rowvar=False))


class FidAccumulator:
    """Collects Inception features of the ground truths and of each method's outputs."""

    def __init__(self, model, device: str = "cpu") -> None:
        self.model = model
        self.device = device
        self.real: list[np.ndarray] = []
        self.fake: dict[str, list[np.ndarray]] = {}
        self._kw: dict | None = None

    @classmethod
    def from_file(cls, path: PathLike, device: str = "cpu") -> "FidAccumulator":
        import torch

        path = Path(path)
        if not path.is_file():
            raise CsaError(f"--fid-model {path} not found: give an Inception TorchScript file (.pt)")
        try:
            with warnings.catch_warnings():
                # NVIDIA's Inception file is TorchScript; torch's deprecation note is noise here.
                warnings.simplefilter("ignore", DeprecationWarning)
                model = torch.jit.load(str(path), map_location=device)
        except RuntimeError as exc:
            raise CsaError(f"--fid-model {path} is not a TorchScript file ({str(exc).splitlines()[0]})") from None
        return cls(model.eval(), device)

    def features(self, image: np.ndarray) -> np.ndarray:
        """D features of one uint8 HxWx3 image."""
        import torch

        x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].float().to(self.device)
        with torch.no_grad():
            if self._kw is None:  # find out once whether it takes return_features
                try:
                    y = self.model(x, return_features=True)
                    self._kw = {"return_features": True}
                except (RuntimeError, TypeError):
                    self._kw = {}
                    y = self.model(x)
            else:
                y = self.model(x, **self._kw)
        return y.reshape(1, -1).double().cpu().numpy()[0]

    def add_real(self, image: np.ndarray) -> None:
        self.real.append(self.features(image))

    def add_fake(self, label: str, image: np.ndarray) -> None:
        self.fake.setdefault(label, []).append(self.features(image))

    @property
    def count(self) -> int:
        return len(self.real)

    def compute(self) -> dict[str, float]:
        real = np.stack(self.real)
        return {label: fid_from_features(real, np.stack(f)) for label, f in self.fake.items()}


# --- LPIPS ----------------------------------------------------------------------------

# torchvision's ``features`` layers as (kind, args); "R" = ReLU, "M" = max-pool.
_ALEX = [("C", 3, 64, 11, 4, 2), "R", ("M", 3, 2), ("C", 64, 192, 5, 1, 2), "R", ("M", 3, 2),
         ("C", 192, 384, 3, 1, 1), "R", ("C", 384, 256, 3, 1, 1), "R", ("C", 256, 256, 3, 1, 1), "R"]
_ALEX_TAPS = (1, 4, 7, 9, 11)  # relu1 .. relu5
_VGG_TAPS = (3, 8, 15, 22, 29)  # relu1_2, relu2_2, relu3_3, relu4_3, relu5_3
_HEAD_CHANNELS = {(64, 192, 384, 256, 256): "alex", (64, 128, 256, 512, 512): "vgg"}
# LPIPS's input scaling (for inputs in [-1, 1]), from the lpips package.
_SHIFT = (-0.030, -0.088, -0.188)
_SCALE = (0.458, 0.448, 0.450)


def _layers(net: str):
    from torch import nn

    layers: list = []
    if net == "alex":
        for spec in _ALEX:
            if spec == "R":
                layers.append(nn.ReLU())
            elif spec[0] == "M":
                layers.append(nn.MaxPool2d(spec[1], spec[2]))
            else:
                _, cin, cout, k, s, p = spec
                layers.append(nn.Conv2d(cin, cout, k, s, p))
        return nn.Sequential(*layers), _ALEX_TAPS
    from .nn.vgg import VGG16_CONV5_CFG, vgg_layers

    return nn.Sequential(*vgg_layers(VGG16_CONV5_CFG)), _VGG_TAPS


def _load_state(path: PathLike, what: str) -> dict:
    import torch

    path = Path(path)
    if not path.is_file():
        raise CsaError(f"{what} {path} not found: check the path")
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle / zip errors of many kinds
        raise CsaError(f"{what} {path} is not a PyTorch state dict ({type(exc).__name__}: {exc})") from None
    if not isinstance(state, dict):
        raise CsaError(f"{what} {path} holds a {type(state).__name__}, not a state dict")
    return state


class LPIPS:
    """LPIPS v0.1 distance between two uint8 HxWx3 images (call it: ``lpips(a, b)``)."""

    def __init__(self, features, taps: tuple[int, ...], heads: list, device: str = "cpu") -> None:
        import torch

        self.features = features.to(device).eval()
        self.taps = taps
        self.heads = [h.to(device) for h in heads]  # each 1 x C x 1 x 1
        self.device = device
        self.shift = torch.tensor(_SHIFT, device=device).view(1, 3, 1, 1)
        self.scale = torch.tensor(_SCALE, device=device).view(1, 3, 1, 1)
        self.net = "alex" if taps == _ALEX_TAPS else "vgg"

    @classmethod
    def from_files(cls, net_path: PathLike, lin_path: PathLike, device: str = "cpu") -> "LPIPS":
        lin = _load_state(lin_path, "--lpips-lin")
        try:
            heads = [lin[f"lin{k}.model.1.weight"].float() for k in range(5)]
        except KeyError:
            raise CsaError(f"--lpips-lin {lin_path} has no lin0..lin4.model.1.weight: give alex.pth or vgg.pth of LPIPS v0.1") from None
        net = _HEAD_CHANNELS.get(tuple(int(h.shape[1]) for h in heads))
        if net is None:
            raise CsaError(f"--lpips-lin {lin_path}: heads of {[h.shape[1] for h in heads]} channels fit neither AlexNet nor VGG16")
        features, taps = _layers(net)
        state = _load_state(net_path, "--lpips-net")
        wanted = features.state_dict()
        feats = {k[len("features."):]: v for k, v in state.items() if k.startswith("features.")}
        missing = sorted(set(wanted) - set(feats))
        if missing or any(tuple(feats[k].shape) != tuple(v.shape) for k, v in wanted.items()):
            name = "AlexNet (alexnet-owt-7be5be79.pth)" if net == "alex" else "VGG16 (vgg16-397923af.pth)"
            raise CsaError(f"--lpips-net {net_path} does not match the heads: they need torchvision {name} weights")
        features.load_state_dict({k: feats[k].float() for k in wanted})
        for p in features.parameters():
            p.requires_grad_(False)
        return cls(features, taps, heads, device)

    def _taps(self, x):
        out = []
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in self.taps:
                out.append(x)
            if i == self.taps[-1]:
                break
        return out

    def __call__(self, a: np.ndarray, b: np.ndarray) -> float:
        import torch

        def prep(img: np.ndarray):
            t = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1)[None].float().to(self.device)
            return ((t / 127.5 - 1.0) - self.shift) / self.scale

        with torch.no_grad():
            total = 0.0
            for fa, fb, w in zip(self._taps(prep(a)), self._taps(prep(b)), self.heads):
                na = fa / (fa.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
                nb = fb / (fb.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
                total += float(((na - nb) ** 2 * w).sum(1).mean())
        return total
