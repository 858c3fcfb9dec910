"""Weights on disk: safetensors with the model config as JSON in the file's metadata,
written atomically; and the converter for the official release's ``.pth`` checkpoints."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional, Union

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from safetensors import safe_open

from .config import ModelConfig
from .errors import CsaError
from .imageio import atomic_write
from .nn.generator import CSAGenerator

FORMAT = "csa-generator/1"
CONFIG_KEY = "csa_model_config"
PathLike = Union[str, os.PathLike]


def save_tensors(tensors: dict[str, torch.Tensor], path: PathLike, metadata: Optional[dict[str, str]] = None) -> None:
    """Write tensors as safetensors through a temporary file + rename."""
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=metadata or {}))


def read_metadata(path: PathLike) -> dict[str, str]:
    path = Path(path)
    if not path.is_file():
        raise CsaError(f"weights file not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            return f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as exc:
        raise CsaError(f"{path} is not a readable safetensors file ({exc})") from None


def save_generator(model: CSAGenerator, path: PathLike, *, half: bool = False,
                   extra_metadata: Optional[dict[str, str]] = None) -> None:
    """Save the generator alone; the file rebuilds its model with :func:`load_generator`."""
    state = model.state_dict()
    if half:
        state = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
    metadata = {"format": FORMAT, CONFIG_KEY: model.config.to_json(), **(extra_metadata or {})}
    save_tensors(state, path, metadata)


def load_generator(path: PathLike, device: Union[str, torch.device] = "cpu",
                   csa_mode: Optional[str] = None) -> CSAGenerator:
    """Rebuild a generator from one safetensors file (float32, eval mode)."""
    metadata = read_metadata(path)
    if CONFIG_KEY not in metadata:
        raise CsaError(f"{path} has no model config in its metadata: is it a csa generator file? "
                       "(release .pth files: convert them with `csa convert`)")
    config = ModelConfig.from_dict(json.loads(metadata[CONFIG_KEY]))
    if csa_mode is not None:
        config.csa_mode = csa_mode
    model = CSAGenerator(config)
    state = {k: v.float() for k, v in load_file(str(path)).items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise CsaError(f"{path} does not match its config: missing {missing[:3]}, unexpected {unexpected[:3]}")
    return model.to(device).eval()


# --- the official release -----------------------------------------------------------------

_STALE_BUFFERS = ("running_mean", "running_var", "num_batches_tracked")


def _read_official(path: PathLike) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise CsaError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)  # never unpickle code
    except Exception as exc:  # torch raises several types for bad files
        raise CsaError(f"{path} is not a readable PyTorch state dict ({type(exc).__name__}: {exc})") from None
    if not isinstance(state, dict):
        raise CsaError(f"{path} does not hold a state dict")
    state = {k.removeprefix("module."): v for k, v in state.items()}
    # PyTorch 0.3-era InstanceNorm checkpoints carry running stats the layer does not use.
    return {k: v for k, v in state.items() if not k.endswith(_STALE_BUFFERS)}


def convert_official(g_path: PathLike, p_path: PathLike) -> CSAGenerator:
    """Build a generator (CSA mode 'official') from the release's net_G and net_P files."""
    model = CSAGenerator(ModelConfig(rough_ngf=64, refine_ngf=64, csa_mode="official"))
    for prefix, path, net in (("refine.", g_path, model.refine), ("rough.", p_path, model.rough)):
        state = _read_official(path)
        expected = net.state_dict()
        missing = sorted(set(expected) - set(state))
        unexpected = sorted(set(state) - set(expected))
        if missing or unexpected:
            raise CsaError(f"{path} does not have the release's {prefix[:-1]} network layout: "
                           f"{len(missing)} keys missing (e.g. {missing[:2]}), {len(unexpected)} unexpected "
                           f"(e.g. {unexpected[:2]}). Give net_G to --official-g and net_P to --official-p.")
        for key, value in state.items():
            if value.shape != expected[key].shape:
                raise CsaError(f"{path}: {key} has shape {tuple(value.shape)}, expected {tuple(expected[key].shape)}")
        net.load_state_dict(state)
    return model.eval()
