"""Running exported generators (:mod:`csa.export`): ONNX through onnxruntime, TorchScript
through ``torch.jit.load``; and :func:`load_inference_model`, which opens any model file by
what it contains (a safetensors generator, or an ONNX / TorchScript export of one).

Both loaders return an ``nn.Module`` that :class:`csa.inference.Inpainter` uses like the
PyTorch generator: ``model(image, mask)`` with image N x 3 x H x W in [-1, 1] and mask
N x 1 x H x W (1 = hole), returning ``.composite`` and ``.refined``; ``model.config`` is
the :class:`csa.config.ModelConfig` stored in the file. Inputs are checked as the eager
generator checks them (the graphs themselves cannot raise). Exports run on CPU.

Loading a TorchScript file runs code stored in it (TorchScript, not arbitrary Python, but
still the file's code): load TorchScript files only from trusted sources. An ONNX file is
data that onnxruntime interprets.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, NamedTuple, Union

import torch
from torch import Tensor, nn

from .checkpoints import CONFIG_KEY, KIND_NAMES, file_kind, load_generator
from .config import ModelConfig
from .errors import CsaError
from .export_format import EXPORT_FORMAT, deliberate_torchscript, FORMAT_KEY, INPUT_NAMES, METADATA_FILE, OUTPUT_NAMES

PathLike = Union[str, os.PathLike]


class ExportedOutput(NamedTuple):
    composite: Tensor  # refined (clamped to [-1, 1]) in the hole, the input elsewhere
    refined: Tensor  # the refine stage's raw output


def _config(path: Path, metadata: dict[str, str], kind: str) -> ModelConfig:
    if metadata.get(FORMAT_KEY) != EXPORT_FORMAT or CONFIG_KEY not in metadata:
        raise CsaError(f"{path} is {kind} file but not one written by `csa export` (no csa model config "
                       "in it): export the model with `csa export SOURCE -o FILE`")
    try:
        return ModelConfig.from_dict(json.loads(metadata[CONFIG_KEY]))
    except (ValueError, TypeError) as exc:
        raise CsaError(f"{path}: its model config cannot be read ({exc}): export the model again") from None


def _cpu_only(device: Union[str, torch.device], path: Path) -> None:
    if torch.device(str(device).replace("auto", "cpu")).type != "cpu":
        raise CsaError(f"{path.name} is an exported model, and exports run on CPU here: use --device cpu, "
                       "or the .safetensors generator for CUDA")


class ExportedGenerator(nn.Module):
    """What both runtimes share: the stored config and metadata, the input checks."""

    runtime = "exported"

    def __init__(self, path: Path, metadata: dict[str, str], config: ModelConfig) -> None:
        super().__init__()
        self.path = path
        self.metadata = metadata
        self.config = config
        self.parameter_count = int(metadata.get("parameters", "0") or 0)

    def forward(self, image: Tensor, mask: Tensor) -> ExportedOutput:
        from .nn.attention import checked_feature_mask
        from .nn.generator import check_inputs

        check_inputs(image, mask)
        checked_feature_mask(mask, torch.float32)
        completed, refined = self._run(image.detach().float().cpu().contiguous(),
                                       mask.detach().float().cpu().contiguous())
        return ExportedOutput(completed.to(image.device), refined.to(image.device))

    def _run(self, image: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def extra_repr(self) -> str:
        return f"path={str(self.path)!r}, runtime={self.runtime!r}"


class OnnxGenerator(ExportedGenerator):
    """An ONNX export run by an onnxruntime CPU session (threads: torch's CPU thread count)."""

    runtime = "onnxruntime"

    def __init__(self, path: Path, session: Any, metadata: dict[str, str], config: ModelConfig) -> None:
        super().__init__(path, metadata, config)
        self.session = session

    def _run(self, image: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        outputs = self.session.run(list(OUTPUT_NAMES), {INPUT_NAMES[0]: image.numpy(), INPUT_NAMES[1]: mask.numpy()})
        return torch.from_numpy(outputs[0]), torch.from_numpy(outputs[1])


class TorchScriptGenerator(ExportedGenerator):
    """A TorchScript export run by the TorchScript interpreter."""

    runtime = "torchscript"

    def __init__(self, path: Path, module: torch.jit.ScriptModule, metadata: dict[str, str],
                 config: ModelConfig) -> None:
        super().__init__(path, metadata, config)
        self.module = module

    def _run(self, image: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        completed, refined = self.module(image, mask)
        return completed, refined


def onnx_session(path: PathLike, threads: int = 0) -> Any:
    """An onnxruntime CPU session for ``path`` (``threads`` 0: torch's CPU thread count)."""
    from .extras import require

    require("onnx", "running an ONNX model", ("onnxruntime",))
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or torch.get_num_threads()
    options.log_severity_level = 3  # errors only: the optimiser's notes are not the user's business
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types for bad files
        raise CsaError(f"onnxruntime cannot load {path} ({type(exc).__name__}: {str(exc).strip()[:300]}): "
                       "export the model again with `csa export`") from None


def load_onnx(path: PathLike, device: Union[str, torch.device] = "cpu") -> OnnxGenerator:
    """An ONNX file written by :func:`csa.export.write_onnx`, ready for inference."""
    path = Path(path)
    _cpu_only(device, path)
    session = onnx_session(path)
    metadata = dict(session.get_modelmeta().custom_metadata_map)
    names = tuple(i.name for i in session.get_inputs()), tuple(o.name for o in session.get_outputs())
    config = _config(path, metadata, "an ONNX")
    if names != (INPUT_NAMES, OUTPUT_NAMES):
        raise CsaError(f"{path}: inputs {names[0]} and outputs {names[1]} are not those of a csa export "
                       f"({INPUT_NAMES}, {OUTPUT_NAMES}): export the model again")
    return OnnxGenerator(path, session, metadata, config).eval()


def load_torchscript(path: PathLike, device: Union[str, torch.device] = "cpu") -> TorchScriptGenerator:
    """A TorchScript file written by :func:`csa.export.write_torchscript`.

    ``torch.jit.load`` runs code stored in the file: load TorchScript files only from trusted sources.
    """
    path = Path(path)
    _cpu_only(device, path)
    files = {METADATA_FILE: ""}
    try:
        with deliberate_torchscript():
            module = torch.jit.load(str(path), map_location="cpu", _extra_files=files)
    except Exception as exc:  # torch raises several types for bad archives
        raise CsaError(f"torch.jit.load cannot read {path} ({type(exc).__name__}): export the model again "
                       "with `csa export`") from None
    try:
        metadata = json.loads(files[METADATA_FILE] or "{}")
    except ValueError:
        metadata = {}
    config = _config(path, metadata if isinstance(metadata, dict) else {}, "a TorchScript")
    return TorchScriptGenerator(path, module.eval(), metadata, config).eval()


def load_inference_model(path: PathLike, device: Union[str, torch.device] = "cpu") -> torch.nn.Module:
    """A model file, opened by its content for inference: ``model(image, mask)`` returns ``.composite``.

    safetensors: the PyTorch generator (:func:`csa.checkpoints.load_generator`). ONNX: run by onnxruntime
    (the [onnx] extra). TorchScript: run by ``torch.jit.load``, which runs code stored in the
    file: load TorchScript files only from trusted sources. Exports run on CPU.
    """
    path = Path(path)
    if not path.is_file():
        raise CsaError(f"weights file not found: {path}")
    kind = file_kind(path)
    if kind == "onnx":
        return load_onnx(path, device)
    if kind == "torchscript":
        return load_torchscript(path, device)
    if kind == "torch-pickle":
        raise CsaError(f"{path} is {KIND_NAMES[kind]}: convert release checkpoints with `csa convert` first")
    if kind is None:
        raise CsaError(f"{path} is not a model file csa can read: give a .safetensors generator, "
                       "or an .onnx / .ts file written by `csa export`")
    return load_generator(path, device)
