"""Frozen VGG16 feature extractor (up to relu4_3) and its weight loading.

The layers copy torchvision's ``vgg16().features`` layout and key names
(``features.0.weight`` ... ``features.21.bias``), so torchvision's published
``vgg16-397923af.pth`` loads as is; the keys past ``features.22`` and the classifier are
ignored. ``csa weights fetch vgg16`` (:mod:`csa.weights`) makes an equivalent file from the
Keras (Oxford) ImageNet weights. Both expect torchvision's input convention (RGB in [0, 1]
normalised with the ImageNet mean/std); :class:`VGG16Features` takes the project's [-1, 1]
images and converts them itself.

Where ``load_vgg16(None)`` looks (first hit wins):

1. the environment variable ``CSA_VGG16`` (a local file or an http(s) URL);
2. ``$XDG_CACHE_HOME/csa/vgg16_features.safetensors`` (``~/.cache/csa/...`` by default),
   the file ``csa weights fetch vgg16`` writes.
"""
from __future__ import annotations

import os
import re
import urllib.error
import urllib.parse
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import NamedTuple, Optional, Union

import torch
from torch import Tensor, nn

from ..errors import CsaError
from ..weights import VGG16_FILE, default_cache_dir, fetch_command

# torchvision's ImageNet input normalisation (RGB, [0, 1]).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# VGG16 configuration "D" up to conv4_3: channels per conv, "M" a 2x2 max-pool.
_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512)
# The whole convolutional part, to conv5_3 (LPIPS taps relu5_3).
VGG16_CONV5_CFG = _CFG + ("M", 512, 512, 512)
POOL3_INDEX = 16  # features[16]: third max-pool, 256 x H/8 x W/8
POOL_INDICES = (4, 9, POOL3_INDEX)  # the three max-pools: 64 x H/2, 128 x H/4, 256 x H/8
RELU4_3_INDEX = 22  # features[22]: ReLU after conv4_3, 512 x H/8 x W/8
# torchvision indices of the ten conv layers up to conv4_3, in network order.
CONV_INDICES = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21)
CONV_CHANNELS = (64, 64, 128, 128, 256, 256, 256, 512, 512, 512)

ENV_VAR = "CSA_VGG16"
DEFAULT_FILE_NAME = VGG16_FILE
TORCHVISION_URL = "https://download.pytorch.org/models/vgg16-397923af.pth"

_TORCH_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt")
_HOW_TO_GET = (
    f"Run `{fetch_command('vgg16')}` (needs the [train] extra) to download, check and cache the "
    "ImageNet VGG16 weights, or pass a local .pth / .safetensors file (e.g. torchvision's "
    "vgg16-397923af.pth)"
)


def vgg_layers(cfg: Sequence[Union[int, str]] = _CFG, inplace: bool = False) -> list[nn.Module]:
    """torchvision's ``features`` layers for a VGG configuration: 3x3 conv + ReLU per number,
    a 2x2 max-pool per "M"; the list index is torchvision's key index (``features.N``)."""
    layers: list[nn.Module] = []
    c_in = 3
    for v in cfg:
        if v == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            layers += [nn.Conv2d(c_in, int(v), kernel_size=3, padding=1), nn.ReLU(inplace=inplace)]
            c_in = int(v)
    return layers


class VGGOutput(NamedTuple):
    """Features of one pass: ``pool3`` (N x 256 x H/8 x W/8), ``relu4_3`` (N x 512 x H/8 x W/8),
    and the first two pools on the way (64 x H/2 x W/2, 128 x H/4 x W/4: the texture terms)."""

    pool3: Tensor
    relu4_3: Optional[Tensor]  # None when the pass stopped at pool3
    pool1: Optional[Tensor] = None
    pool2: Optional[Tensor] = None

    @property
    def pools(self) -> tuple[Tensor, ...]:
        return tuple(t for t in (self.pool1, self.pool2, self.pool3) if t is not None)


def required_state_dict_shapes() -> dict[str, tuple[int, ...]]:
    """Every key :class:`VGG16Features` needs, with its shape (torchvision's names)."""
    shapes: dict[str, tuple[int, ...]] = {}
    c_in = 3
    for idx, c_out in zip(CONV_INDICES, CONV_CHANNELS):
        shapes[f"features.{idx}.weight"] = (c_out, c_in, 3, 3)
        shapes[f"features.{idx}.bias"] = (c_out,)
        c_in = c_out
    return shapes


class VGG16Features(nn.Module):
    """VGG16 up to relu4_3, frozen and always in eval mode; gradients still reach the input.

    ``forward(x)`` takes N x 3 x H x W images in [-1, 1] and returns :class:`VGGOutput`.
    Build it with :func:`load_vgg16` to get pretrained weights; a bare instance has
    PyTorch's default (random) init.
    """

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(*vgg_layers(_CFG, inplace=True))
        # Not persistent: the state dict must hold torchvision's keys and nothing else.
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        super().train(False)

    def train(self, mode: bool = True) -> "VGG16Features":
        """Stay in eval mode whatever the caller asks (a frozen feature extractor)."""
        return super().train(False)

    def load_weights(self, state_dict: Mapping[str, Tensor]) -> "VGG16Features":
        """Load a torchvision-style state dict, taking only the keys this module needs.

        Extra keys (``features.24`` onwards, ``classifier.*``) are ignored; a missing key or
        a wrong shape raises :class:`CsaError`.
        """
        load_feature_weights(self, state_dict)
        return self

    def forward(self, x: Tensor, stop_at_pool3: bool = False) -> VGGOutput:
        """pool3 and relu4_3 of ``x``; with ``stop_at_pool3`` relu4_3 is None (a third cheaper)."""
        if x.dim() != 4 or x.shape[1] != 3:
            raise CsaError(f"VGG16Features expects N x 3 x H x W images, got shape {tuple(x.shape)}")
        # [-1, 1] -> [0, 1] -> ImageNet-normalised (torchvision's convention).
        h = ((x + 1.0) * 0.5 - self.mean) / self.std
        pool3 = h
        pools: list[Tensor] = []
        for i, layer in enumerate(self.features):
            h = layer(h)
            if i in POOL_INDICES[:2]:
                pools.append(h)
            if i == POOL3_INDEX:
                pool3 = h
                if stop_at_pool3:
                    return VGGOutput(pool3=pool3, relu4_3=None, pool1=pools[0], pool2=pools[1])
        return VGGOutput(pool3=pool3, relu4_3=h, pool1=pools[0], pool2=pools[1])


def load_feature_weights(model: VGG16Features, state_dict: Mapping[str, Tensor]) -> None:
    """Copy the needed keys of ``state_dict`` into ``model`` (strictly), or raise CsaError."""
    needed = required_state_dict_shapes()
    missing = [k for k in needed if k not in state_dict]
    if missing:
        shown = ", ".join(missing[:4]) + (" ..." if len(missing) > 4 else "")
        raise CsaError(
            f"the VGG16 weights lack {len(missing)} needed key(s) ({shown}); expected torchvision's "
            "vgg16 key names features.0.weight ... features.21.bias. Use torchvision's "
            f"vgg16-397923af.pth or the file of `{fetch_command('vgg16')}`"
        )
    picked: dict[str, Tensor] = {}
    for key, shape in needed.items():
        t = state_dict[key]
        if not isinstance(t, Tensor) or tuple(t.shape) != shape:
            got = tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__
            raise CsaError(
                f"the VGG16 weight {key} has shape {got}, expected {shape}: this is not a VGG16 "
                "(configuration D) state dict"
            )
        picked[key] = t.float()
    model.load_state_dict(picked, strict=True)


def vgg_weights_path() -> Path:
    """Where the converted VGG16 weights live when neither an argument nor ``CSA_VGG16`` says."""
    return default_cache_dir() / DEFAULT_FILE_NAME


#: The old name (csa.inference's default_weights_path is the bundled inpainting model: not this).
default_weights_path = vgg_weights_path


def _is_url(s: str) -> bool:
    return bool(re.match(r"^https?://", s, flags=re.IGNORECASE))


def read_state_dict(weights: Union[str, Path], *, model_dir: Union[str, Path, None] = None) -> dict[str, Tensor]:
    """Read a state dict from a local ``.pth``/``.safetensors`` file or an http(s) URL.

    URLs go through ``torch.hub.load_state_dict_from_url`` with ``check_hash=True``: the file
    name must carry a hex prefix of the file's sha256 (``name-<hex>.pth``), as torchvision's do.
    Downloads are cached in ``model_dir`` (default ``<cache dir>/hub``).
    """
    text = str(weights)
    if _is_url(text):
        return _read_url(text, model_dir)
    path = Path(text).expanduser()
    if not path.is_file():
        raise CsaError(f"VGG16 weights file {path} not found. {_HOW_TO_GET}")
    suffix = path.suffix.lower()
    try:
        if suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path), device="cpu")
        if suffix in _TORCH_SUFFIXES:
            obj = torch.load(str(path), weights_only=True, map_location="cpu")
        else:
            raise CsaError(
                f"cannot tell the format of VGG16 weights file {path}: name it *.safetensors or "
                f"one of {', '.join(_TORCH_SUFFIXES)}"
            )
    except CsaError:
        raise
    except Exception as e:  # corrupt file, pickled code refused by weights_only, ...
        raise CsaError(f"cannot read VGG16 weights file {path}: {e}") from e
    return _as_state_dict(obj, text)


def _read_url(url: str, model_dir: Union[str, Path, None]) -> dict[str, Tensor]:
    name = os.path.basename(urllib.parse.urlparse(url).path)
    match = torch.hub.HASH_REGEX.search(name)
    if match is None or not match.group(1):
        raise CsaError(
            f"the VGG16 weights URL {url} has no sha256 prefix in its file name "
            "(name-<hex>.pth), so the download cannot be checked; download it yourself and "
            "pass the local file"
        )
    folder = Path(model_dir) if model_dir is not None else default_cache_dir() / "hub"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        obj = torch.hub.load_state_dict_from_url(
            url, model_dir=str(folder), check_hash=True, map_location="cpu", weights_only=True, progress=False
        )
    except (urllib.error.URLError, OSError) as e:  # HTTPError is a URLError
        raise CsaError(f"could not download VGG16 weights from {url}: {e}. {_HOW_TO_GET}") from e
    except RuntimeError as e:
        if "hash" in str(e):
            raise CsaError(
                f"the VGG16 weights downloaded from {url} fail their sha256 check ({e}); the "
                "file was not kept. Check the URL, or pass a local file"
            ) from e
        raise CsaError(f"cannot read the VGG16 weights downloaded from {url}: {e}") from e
    except Exception as e:  # e.g. unpickling refused by weights_only
        raise CsaError(f"cannot read the VGG16 weights downloaded from {url}: {e}") from e
    return _as_state_dict(obj, url)


def _as_state_dict(obj: object, where: str) -> dict[str, Tensor]:
    if isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        obj = obj["state_dict"]  # a training checkpoint wrapping the weights
    if not isinstance(obj, Mapping):
        raise CsaError(f"{where} holds a {type(obj).__name__}, not a state dict of VGG16 weights")
    return dict(obj)


def resolve_weights(weights: Union[str, Path, None]) -> Union[str, Path]:
    """The weights source to use: ``weights`` itself, else ``$CSA_VGG16``, else the cache file."""
    if weights is not None:
        return weights
    env = os.environ.get(ENV_VAR)
    if env:
        return env
    path = vgg_weights_path()
    if not path.is_file():
        raise CsaError(
            f"no VGG16 weights given and none in the cache ({path}): run `{fetch_command('vgg16')}` "
            f"(needs the [train] extra), or set {ENV_VAR} to a local .pth / .safetensors file"
        )
    return path


def load_vgg16(
    weights: Union[str, Path, None] = None,
    *,
    model_dir: Union[str, Path, None] = None,
    device: Union[str, torch.device, None] = None,
) -> VGG16Features:
    """A frozen :class:`VGG16Features` with pretrained weights.

    ``weights``: a local ``.pth`` / ``.safetensors`` file, an http(s) URL (hash-checked, see
    :func:`read_state_dict`), or ``None`` for the default place (module docstring).
    """
    source = resolve_weights(weights)
    model = VGG16Features().load_weights(read_state_dict(source, model_dir=model_dir))
    return model.to(device) if device is not None else model


__all__ = [
    "VGG16Features",
    "VGGOutput",
    "load_vgg16",
    "read_state_dict",
    "load_feature_weights",
    "required_state_dict_shapes",
    "vgg_weights_path",
    "default_weights_path",
    "default_cache_dir",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "TORCHVISION_URL",
]
