"""Export a generator to ONNX or TorchScript, the CSA recurrence as a loop in the graph.

The eager generator cannot be exported as it is: its CSA layer is a custom autograd
function around numba / Triton kernels that no exporter can follow, its smooth hole fill
iterates over Python lists, and it checks masks with host reads. :class:`ExportModule`
recomputes :meth:`csa.nn.generator.CSAGenerator.forward` (inference only: no taps, no
rough output) from the same submodules, with two scripted pieces:

* :class:`TraceableCSA`: the CSA layer as plain tensor ops, batched over samples, with the
  recurrence over the hole rank as a TorchScript loop whose length is the largest hole
  count of the batch (read from the mask at run time, so it is a real loop: ONNX ``Loop``).
* :func:`smooth_fill_scripted`: the multigrid hole fill of :func:`csa.nn.generator.smooth_fill`
  with its pyramid built in a loop, so its depth follows the input's sides.

The module is traced (the U-Nets) around the scripted pieces; the traced module is the
TorchScript export, and the legacy (TorchScript-based) ONNX exporter turns it into ONNX
with the loops kept (``Loop`` nodes). tests/test_export.py checks both files against the
eager model.

Why the legacy exporter: torch's default (torch.export-based) exporter cannot follow the
recurrence, whose length is read from the mask (torch.export stops at the data-dependent
``int(counts.max())``); rewriting it as ``torch._higher_order_ops.while_loop`` needs
fixed-shape loop state, and the smooth fill's pyramid depth follows H and W. The legacy
path keeps both loops, needs no onnxscript, and shares one traced module with the
TorchScript export. TorchScript and that exporter are deprecated in torch 2.13 but work;
their deprecation notes are silenced (:func:`csa.export_format.deliberate_torchscript`).

Exported graphs take ``image`` and ``mask`` and return ``completed`` and ``refined``
(:mod:`csa.export_format`, the file contract :mod:`csa.runtime` reads). Batch size, H and W (multiples of 256) and the hole count
are dynamic. The graphs do not check their inputs: callers refuse masks that leave a
sample no known position at feature resolution (the eager model raises; a graph cannot),
as :class:`csa.inference.Inpainter` does before every call.
"""
from __future__ import annotations

import copy
import io
import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .checkpoints import CONFIG_KEY
from .errors import CsaError
from .config import check_csa_mode
from .export_format import (  # the file contract, shared with csa.runtime
    EXPORT_FORMAT, FORMAT_KEY, INPUT_NAMES, METADATA_FILE, OUTPUT_NAMES, deliberate_torchscript,
)
from .nn.attention import CSA_DOWNSAMPLINGS, EPS, CoherentSemanticAttention, blend_weights, feature_mask
from .nn.generator import (
    FILL_FINE_SIDE,
    FILL_BAND,
    FILL_ITERATIONS_COARSE,
    FILL_ITERATIONS_FINE,
    CSAGenerator,
    fill_domain,
)
from .version import __version__

PathLike = Union[str, os.PathLike]
FORMATS = ("onnx", "torchscript")
SUFFIXES = {".onnx": "onnx", ".ts": "torchscript"}
#: ONNX opset 17: every op of the graph (Loop, sequences, TopK, ScatterElements, Resize,
#: InstanceNormalization) is there in the form the exporter writes, runtimes have run it
#: for years (the [onnx] extra's onnxruntime 1.19+ does), and newer opsets add nothing
#: this graph uses.
OPSET = 17


# --- the scripted pieces ------------------------------------------------------------------


class TraceableCSA(nn.Module):
    """:class:`csa.nn.attention.CoherentSemanticAttention` for export: same arithmetic as
    :func:`csa.nn.attention.csa_reference`, batched over samples.

    Per sample the positions are ordered holes first (raster order), every hole query is
    scored against every position's unit key with hole keys masked out, and the recurrence
    runs over the hole rank for all samples at once, up to the batch's largest hole count;
    ranks beyond a sample's own count are computed and dropped.
    """

    __constants__ = ["mode", "eps"]  # scripted code reads no module globals: constants instead

    def __init__(self, mode: str) -> None:
        super().__init__()
        check_csa_mode(mode)
        self.mode = mode
        self.eps = EPS

    def forward(self, features: Tensor, mask: Tensor) -> Tensor:
        n, c, h, w = features.shape
        hw = h * w
        flat = features.reshape(n, c, hw).transpose(1, 2)  # N x HW x C
        hole = mask.reshape(n, hw) > 0.5
        counts = hole.sum(dim=1)
        length = int(counts.max())
        if length == 0:
            return features
        # Holes first in raster order: the sort keys are distinct, so no stable sort is needed
        # (ONNX's TopK promises no order among ties).
        positions = torch.arange(hw, device=features.device).unsqueeze(0)
        order = torch.argsort((~hole).long() * hw + positions, dim=1)[:, :length]
        rows = order.unsqueeze(2).expand(n, length, c)
        queries = flat.gather(1, rows)  # N x L x C
        keys = flat / (flat.norm(2, dim=2, keepdim=True) + self.eps)
        scores = torch.bmm(queries, keys.transpose(1, 2)).masked_fill(hole.unsqueeze(1), float("-inf"))
        dmax, best = scores.max(dim=2)
        sources = flat.gather(1, best.unsqueeze(2).expand(n, length, c))
        qnorm = queries.norm(2, dim=2)
        if self.mode == "stable":
            dmax = dmax / (qnorm + self.eps)  # a true cosine
        unit_q = queries / (qnorm.unsqueeze(2) + self.eps)
        prev = sources[:, 0]
        generated = [prev]
        for j in range(1, length):
            dad = (prev * unit_q[:, j]).sum(dim=1)
            if self.mode == "stable":
                dad = dad / (prev.norm(2, dim=1) + self.eps)
            a, b = blend_weights(dad, dmax[:, j], self.mode)
            prev = a.unsqueeze(1) * prev + b.unsqueeze(1) * sources[:, j]
            generated.append(prev)
        rank = torch.arange(length, device=features.device).unsqueeze(0)
        valid = (rank < counts.unsqueeze(1)).unsqueeze(2)
        # Ranks past a sample's count point at its known positions: they are written back unchanged.
        values = torch.where(valid, torch.stack(generated, dim=1), queries)
        return flat.scatter(1, rows, values).transpose(1, 2).reshape(n, c, h, w)


class SmoothFill(nn.Module):
    """:func:`csa.nn.generator.smooth_fill` (float32, no autocast) written so TorchScript compiles it.

    Same operations in the same order; the pyramid is a list grown in a loop and walked by
    index (TorchScript has no ``reversed``). tests/test_export.py compares it with the original.
    """

    __constants__ = ["coarse_steps", "fine_steps", "fine_side", "band"]

    def __init__(self) -> None:
        super().__init__()
        self.coarse_steps = FILL_ITERATIONS_COARSE
        self.fine_steps = FILL_ITERATIONS_FINE
        self.fine_side = FILL_FINE_SIDE
        self.band = FILL_BAND
        self.register_buffer("tiny", torch.tensor(1e-12), persistent=False)

    def forward(self, image: Tensor, hole: Tensor) -> Tensor:
        filled = self.relax(image, fill_domain(hole, self.band))
        return torch.where(hole, filled, image)

    def relax(self, image: Tensor, hole: Tensor) -> Tensor:
        known = (~hole).to(image.dtype)
        sums = [torch.where(hole, torch.zeros_like(image), image)]
        weights = [known]
        while min(sums[-1].shape[-2], sums[-1].shape[-1]) > 1:
            sums.append(F.avg_pool2d(sums[-1], 2))
            weights.append(F.avg_pool2d(weights[-1], 2))
        top = len(sums) - 1
        total = torch.maximum(weights[top].float().sum(dim=(2, 3), keepdim=True), self.tiny)
        est = (sums[top].float().sum(dim=(2, 3), keepdim=True) / total).expand_as(sums[top])
        for k in range(top):
            level_sum = sums[top - 1 - k].float()
            level_weight = weights[top - 1 - k].float()
            size = [level_sum.shape[-2], level_sum.shape[-1]]
            est = F.interpolate(est, size=size, mode="bilinear", align_corners=False)
            steps = self.coarse_steps
            if min(size[0], size[1]) >= self.fine_side:
                steps = self.fine_steps
            for _ in range(steps):
                neighbours = F.avg_pool2d(est, 3, stride=1, padding=1, count_include_pad=False)
                est = level_sum + (1.0 - level_weight) * neighbours
        return torch.where(hole, est, image)


# --- the module that is exported ----------------------------------------------------------


class ExportModule(nn.Module):
    """``(image, mask) -> (completed, refined)``: the generator's inference forward, traceable."""

    def __init__(self, generator: CSAGenerator) -> None:
        super().__init__()
        self.config = generator.config
        model = copy.deepcopy(generator).float().eval()
        for module in model.modules():
            if isinstance(module, nn.Sequential):
                for i, child in enumerate(module):
                    if isinstance(child, CoherentSemanticAttention):
                        module[i] = torch.jit.script(TraceableCSA(child.mode))
        self.rough = model.rough
        self.refine = model.refine
        self.register_buffer("fill_colour", model.fill_colour.float(), persistent=False)
        self.fill = torch.jit.script(SmoothFill()) if self.config.hole_fill == "smooth" else None

    def forward(self, image: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        # Mirrors CSAGenerator.forward without its input checks (see the module docstring).
        hole = mask > 0.5
        hole_f = hole.to(image.dtype)
        mask_feat = feature_mask(hole_f, CSA_DOWNSAMPLINGS)
        if self.fill is not None:
            filled = self.fill(image, hole)
        else:
            filled = torch.where(hole, self.fill_colour, image)
        mask_in = [hole_f] if self.config.mask_channel else []
        rough = self.rough(torch.cat([filled, *mask_in], 1))
        coarse = torch.where(hole, rough, image)
        zero_hole = torch.where(hole, torch.zeros_like(image), image)
        refined, _, _ = self.refine(torch.cat([coarse, zero_hole, *mask_in], 1), mask_feat)
        completed = torch.where(hole, refined.clamp(-1.0, 1.0), image)
        return completed, refined


def example_inputs(batch: int = 1, side: int = 256, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Inputs to trace with: a random image and a mask with one rectangular hole per sample.

    The tracer records operations, not values, so the example only has to reach every
    operation (a hole, so that the CSA layer's loop runs once while tracing).
    """
    gen = torch.Generator().manual_seed(seed)
    image = torch.rand(batch, 3, side, side, generator=gen) * 2.0 - 1.0
    mask = torch.zeros(batch, 1, side, side)
    mask[:, :, side // 4: side // 2, side // 3: side * 2 // 3] = 1.0
    return image, mask


def trace(generator: CSAGenerator) -> torch.jit.ScriptModule:
    """The generator as one TorchScript module (float32, CPU): ``(image, mask) -> (completed, refined)``."""
    with torch.no_grad(), deliberate_torchscript():
        module = ExportModule(generator.cpu()).eval()
        # The tracer warns about Python values it records as constants; here those are the
        # module's fixed choices (config flags, the feature mask's box filter), not inputs.
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        return torch.jit.trace(module, example_inputs(), check_trace=False)


def resolve_format(output: PathLike, fmt: Optional[str] = None) -> str:
    """``safetensors``, ``onnx`` or ``torchscript``: ``fmt`` if given, else from the output's suffix."""
    suffix = Path(output).suffix.lower()
    if fmt is not None:
        key = fmt.strip().lower()
        if key not in ("safetensors", *FORMATS):
            raise CsaError(f"unknown export format {fmt!r}: choose onnx, torchscript or safetensors")
        return key
    if suffix == ".safetensors":
        return "safetensors"
    if suffix in SUFFIXES:
        return SUFFIXES[suffix]
    raise CsaError(f"cannot tell the export format from {Path(output).name!r}: name the output .onnx, .ts or "
                   ".safetensors, or give --format onnx|torchscript")


def export_metadata(generator: CSAGenerator, extra: Optional[dict[str, str]] = None) -> dict[str, str]:
    """What an exported file carries besides its graph: the format marker, the ModelConfig, provenance."""
    return {FORMAT_KEY: EXPORT_FORMAT, CONFIG_KEY: generator.config.to_json(),
            "parameters": str(sum(p.numel() for p in generator.parameters())),
            "csa_version": __version__, **(extra or {})}


def write_torchscript(generator: CSAGenerator, output: PathLike, extra: Optional[dict[str, str]] = None) -> None:
    """The traced generator, its metadata as the extra file ``csa_metadata.json``; written atomically."""
    from .imageio import atomic_write

    module = trace(generator)
    files = {METADATA_FILE: json.dumps(export_metadata(generator, extra), sort_keys=True)}
    with deliberate_torchscript():
        atomic_write(output, lambda tmp: torch.jit.save(module, tmp, _extra_files=files))


def onnx_bytes(generator: CSAGenerator) -> bytes:
    """The generator as a serialised ONNX model (no metadata yet), through the legacy exporter."""
    module = trace(generator)
    axes = {0: "batch", 2: "height", 3: "width"}
    buffer = io.BytesIO()
    with torch.no_grad(), deliberate_torchscript():
        # The exporter reads argument names from a signature a traced module does not keep;
        # the names are given below.
        warnings.filterwarnings("ignore", message=".*no signature found for.*")
        # InstanceNorm2d without running statistics normalises by the input's own in eval
        # mode too: the exporter's "train=True" note describes exactly that.
        warnings.filterwarnings("ignore", message=".*operator 'instance_norm' is set to train=True.*")
        torch.onnx.export(
            module, example_inputs(), buffer, input_names=list(INPUT_NAMES), output_names=list(OUTPUT_NAMES),
            dynamic_axes={name: axes for name in (*INPUT_NAMES, *OUTPUT_NAMES)}, opset_version=OPSET,
            dynamo=False,
        )
    return buffer.getvalue()


def write_onnx(generator: CSAGenerator, output: PathLike, extra: Optional[dict[str, str]] = None) -> None:
    """The generator as ONNX, its metadata in ``metadata_props``; checked, then written atomically."""
    from .extras import require
    from .imageio import atomic_write

    require("onnx", "csa export --format onnx", ("onnx",))
    import onnx

    proto = onnx.load_from_string(onnx_bytes(generator))
    for key, value in export_metadata(generator, extra).items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    proto.producer_name = "csa-inpaint"
    for value in proto.graph.output:  # shape inference loses the channel count behind the loops
        channels = value.type.tensor_type.shape.dim[1]
        channels.Clear()
        channels.dim_value = 3
    onnx.checker.check_model(proto)
    atomic_write(output, lambda tmp: onnx.save(proto, tmp))


def export_generator(generator: CSAGenerator, output: PathLike, fmt: Optional[str] = None,
                     extra: Optional[dict[str, str]] = None) -> str:
    """Write ``generator`` as ONNX or TorchScript (float32); returns the format used."""
    key = resolve_format(output, fmt)
    if key == "safetensors":
        raise CsaError("export_generator writes ONNX or TorchScript; save .safetensors with csa.checkpoints.save_generator")
    if Path(output).is_dir():
        raise CsaError(f"{output} is a folder: -o names the file to write")
    (write_onnx if key == "onnx" else write_torchscript)(generator, output, extra)
    return key


@dataclass
class ExportReport:
    """What ``csa export`` did: the source used, the format, the parameter count, the file's size."""

    source: Path
    output: Path
    format: str
    parameters: int
    size: int


def export_source(source: Optional[PathLike], output: PathLike, fmt: Optional[str] = None,
                  half: bool = False) -> ExportReport:
    """``csa export``: a run folder (its latest checkpoint), a checkpoint folder or a generator
    ``.safetensors`` (None: the bundled model) to ``.safetensors`` (``half``: float16), ONNX or TorchScript."""
    from .checkpoints import KIND_NAMES, file_kind, load_generator, read_metadata, save_generator

    key = resolve_format(output, fmt)
    if half and key != "safetensors":
        raise CsaError("--half applies to .safetensors outputs: ONNX and TorchScript exports are float32")
    if Path(output).is_dir():
        raise CsaError(f"{output} is a folder: -o names the file to write")
    if source is None:
        from .methods import bundled_model_path

        source = bundled_model_path()
    source = Path(source)
    if source.is_file() and source.resolve() == Path(output).resolve():
        raise CsaError(f"-o {output} is the source itself: write the export to another file")
    kind = file_kind(source) if source.is_file() else None
    if kind == "safetensors":
        weights, extra = source, {"exported_from": source.name}
    elif kind is not None:
        raise CsaError(f"{source} is {KIND_NAMES[kind]}: csa export reads a run folder, a checkpoint "
                       "folder or a generator .safetensors")
    else:
        from .run_folder import GENERATOR_FILE, resolve_checkpoint

        source = resolve_checkpoint(source)
        weights, extra = source / GENERATOR_FILE, {"exported_from": source.name}
    meta = read_metadata(weights)
    extra.update({k: meta[k] for k in ("step", "epoch") if meta.get(k)})
    generator = load_generator(weights)
    if key == "safetensors":
        save_generator(generator, output, half=half, extra_metadata=extra)
    else:
        export_generator(generator, output, key, extra)
    n_params = sum(p.numel() for p in generator.parameters())
    return ExportReport(source, Path(output), key, n_params, Path(output).stat().st_size)
