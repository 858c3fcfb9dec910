"""Weights on disk: safetensors with the model config as JSON in the file's metadata,
written atomically; the converter for the official release's ``.pth`` checkpoints; and
:func:`file_kind`, what a model file holds by its content (opened for inference by
:func:`csa.runtime.load_inference_model`)."""
from __future__ import annotations

import json
import os
import struct
import zipfile
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
    kind = file_kind(path)
    if kind in ("onnx", "torchscript"):
        raise CsaError(f"{path} is {KIND_NAMES[kind]}: it runs in csa inpaint, evaluate and serve "
                       "(--weights), but this needs the .safetensors generator it was exported from")
    if kind == "torch-pickle":
        raise CsaError(f"{path} is {KIND_NAMES[kind]}: convert release checkpoints with `csa convert`")
    try:
        with safe_open(str(path), framework="pt") as f:
            return f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as exc:
        raise CsaError(f"{path} is not a readable safetensors file ({exc})") from None


# --- telling model files apart by content ---------------------------------------------------

KINDS = ("safetensors", "onnx", "torchscript", "torch-pickle")
KIND_NAMES = {"safetensors": "a safetensors file", "onnx": "an ONNX export", "torchscript": "a TorchScript export",
              "torch-pickle": "a PyTorch pickle (.pth)"}
_SAFETENSORS_HEADER_LIMIT = 100 << 20  # the safetensors library refuses larger headers too
# Top-level fields of ONNX's ModelProto (onnx/onnx.proto): number -> wire type (0 varint, 2 bytes).
_ONNX_MODEL_FIELDS = {1: 0, 2: 2, 3: 2, 4: 2, 5: 0, 6: 2, 7: 2, 8: 2, 14: 2, 20: 2, 25: 2, 26: 2}


def file_kind(path: PathLike) -> Optional[str]:
    """What a model file holds, read from its bytes (suffixes can lie): one of :data:`KINDS`, or None.

    safetensors: an 8-byte little-endian header length, then a JSON header. TorchScript and
    ``torch.save`` files are zip archives; TorchScript's holds compiled code (``code/``).
    ONNX has no magic number: it is a protobuf ModelProto, recognised by walking its
    top-level fields (only ModelProto's field numbers and wire types, an IR version and a graph).
    """
    path = Path(path)
    try:
        with open(path, "rb") as f:
            head = f.read(9)
            size = os.fstat(f.fileno()).st_size
            if len(head) == 9:
                (length,) = struct.unpack("<Q", head[:8])
                if head[8:9] == b"{" and length <= min(size - 8, _SAFETENSORS_HEADER_LIMIT):
                    return "safetensors"
            if head[:4] == b"PK\x03\x04":
                return _zip_kind(path)
            if head[:1] == b"\x80":  # a pickle (protocol 2+): torch.save's legacy format
                return "torch-pickle"
            f.seek(0)
            return "onnx" if _looks_like_onnx(f, size) else None
    except OSError:
        return None


def _zip_kind(path: Path) -> Optional[str]:
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError):
        return None
    parts = [name.split("/", 1)[-1] for name in names]
    if any(p.startswith("code/") for p in parts) or "constants.pkl" in parts:
        return "torchscript"
    return "torch-pickle" if "data.pkl" in parts else None


def _varint(f) -> Optional[int]:
    value = shift = 0
    for _ in range(10):
        byte = f.read(1)
        if not byte:
            return None
        value |= (byte[0] & 0x7F) << shift
        if byte[0] < 0x80:
            return value
        shift += 7
    return None


def _looks_like_onnx(f, size: int, max_fields: int = 100_000) -> bool:
    seen = set()
    for _ in range(max_fields):
        if f.tell() == size:
            return 1 in seen and 7 in seen
        tag = _varint(f)
        if tag is None or _ONNX_MODEL_FIELDS.get(tag >> 3) != (tag & 7):
            return False
        value = _varint(f)
        if value is None:
            return False
        if tag & 7 == 2:
            if f.tell() + value > size:
                return False
            f.seek(value, os.SEEK_CUR)
        seen.add(tag >> 3)
    return False


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
