"""What an exported generator file is, shared by its writer (:mod:`csa.export`) and its
reader (:mod:`csa.runtime`): the graph's input and output names, the format marker and
where the metadata sits.

Exported graphs take ``image`` (float32 N x 3 x H x W in [-1, 1]) and ``mask`` (float32
N x 1 x H x W, 1 = hole) and return ``completed`` (the composite, clamped) and ``refined``
(the refine stage's raw output).
"""
from __future__ import annotations

import contextlib
import warnings

INPUT_NAMES = ("image", "mask")
OUTPUT_NAMES = ("completed", "refined")
#: The file's format marker and its metadata (the ModelConfig as JSON under csa.checkpoints'
#: CONFIG_KEY, provenance): ONNX metadata_props, or the TorchScript extra file METADATA_FILE.
EXPORT_FORMAT = "csa-generator-export/1"
FORMAT_KEY = "format"
METADATA_FILE = "csa_metadata.json"


@contextlib.contextmanager
def deliberate_torchscript():
    """Silence the deprecation notes of TorchScript and the ONNX exporter built on it (chosen
    on purpose, see csa.export's module docstring): they say nothing a user of csa can act on."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"`torch\.jit\.\w+` is deprecated", category=DeprecationWarning)
        warnings.filterwarnings("ignore", message="The feature will be removed", category=DeprecationWarning)
        warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*")
        yield
