"""ONNX and TorchScript exports (csa.export) against the eager generator, and running them (csa.runtime).

Exports and the eager model are different float computations: outputs are compared within
1e-4, and a sample that differs by more passes only when its CSA layer has an argmax
near-tie (two best scores within 1e-5), where a rounding difference may pick another match.
"""
from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from csa.checkpoints import file_kind, save_generator
from csa.config import ModelConfig
from csa.errors import CsaError
from csa.export import SmoothFill, TraceableCSA, export_generator, resolve_format
from csa.nn.attention import CoherentSemanticAttention, csa_reference
from csa.nn.generator import build_generator, smooth_fill
from csa.runtime import load_inference_model

ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")

ROOT = Path(__file__).resolve().parents[1]
ASSETS = ROOT / "src" / "csa" / "assets"
TOLERANCE = 1e-4
NEAR_TIE = 1e-5
# Both CSA modes, both hole fills, with and without the mask channel.
CONFIGS = {
    "stable-release": ModelConfig(rough_ngf=4, refine_ngf=4, csa_mode="stable", hole_fill="release"),
    "official-smooth-mask": ModelConfig(rough_ngf=4, refine_ngf=4, csa_mode="official", hole_fill="smooth",
                                        mask_channel=True),
}


def cli(*args: str) -> int:
    from csa.cli import main

    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in args])
    return exc.value.code


# --- masks ----------------------------------------------------------------------------------


def blobs(rng: np.random.Generator, h: int, w: int, count: int) -> np.ndarray:
    """``count`` random rectangles of 16-80 px (a hole count that differs from mask to mask)."""
    m = np.zeros((h, w), np.float32)
    for _ in range(count):
        bh, bw = rng.integers(16, 80, 2)
        y, x = rng.integers(0, h - bh), rng.integers(0, w - bw)
        m[y:y + bh, x:x + bw] = 1.0
    return m


def one_hole(h: int = 256, w: int = 256) -> np.ndarray:
    m = np.zeros((h, w), np.float32)
    m[100:150, 90:170] = 1.0
    return m


def border_holes(h: int = 256, w: int = 256) -> np.ndarray:
    m = np.zeros((h, w), np.float32)
    m[:40, :60] = 1.0  # a corner
    m[-30:, 100:200] = 1.0  # the bottom edge
    m[80:180, -24:] = 1.0  # the right edge
    return m


def batch(masks: list[np.ndarray], seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    rng = np.random.default_rng(seed)
    mask = torch.from_numpy(np.stack(masks)[:, None].copy())
    image = torch.from_numpy(rng.uniform(-1, 1, mask.shape[:1] + (3,) + mask.shape[2:]).astype(np.float32))
    return image, mask


CASES = {
    "one hole": lambda: batch([one_hole()]),
    "holes at the borders": lambda: batch([border_holes()], seed=1),
    "batch of 3 different masks": lambda: batch(
        [blobs(np.random.default_rng(2), 256, 256, 1), border_holes(), blobs(np.random.default_rng(3), 256, 256, 6)],
        seed=2),
    "a sample without hole": lambda: batch([np.zeros((256, 256), np.float32), one_hole()], seed=3),
    "512 x 256": lambda: batch([blobs(np.random.default_rng(4), 256, 512, 4)], seed=4),
}


# --- the comparison rule -----------------------------------------------------------------------


def csa_inputs(model, image: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The features and feature mask the eager model's CSA layer sees."""
    layer = next(m for m in model.modules() if isinstance(m, CoherentSemanticAttention))
    seen = {}

    def keep(_module, args, _output) -> None:  # returns None: the output stays as it is
        seen["args"] = args

    handle = layer.register_forward_hook(keep)
    try:
        with torch.no_grad():
            model(image, mask)
    finally:
        handle.remove()
    return seen["args"]


def smallest_margin(features: torch.Tensor, mask_feat: torch.Tensor) -> float:
    """The smallest gap between a hole query's two best scores <q, k/|k|> over known keys (one sample)."""
    c = features.shape[0]
    flat = features.reshape(c, -1).T
    hole = mask_feat.reshape(-1) > 0.5
    if hole.sum() == 0 or (~hole).sum() < 2:
        return float("inf")
    keys = flat[~hole]
    scores = flat[hole] @ (keys / (keys.norm(dim=1, keepdim=True) + 1e-8)).T
    top = scores.topk(2, dim=1).values
    return float((top[:, 0] - top[:, 1]).min())


def assert_matches(model, image, mask, completed, refined, what: str) -> None:
    """Per sample: within TOLERANCE of the eager model, or an argmax near-tie shown."""
    with torch.no_grad():
        ref = model(image, mask)
    features, mask_feat = csa_inputs(model, image, mask)
    for i in range(image.shape[0]):
        diff = max(float((torch.as_tensor(completed[i]) - ref.composite[i]).abs().max()),
                   float((torch.as_tensor(refined[i]) - ref.refined[i]).abs().max()))
        if diff > TOLERANCE:
            margin = smallest_margin(features[i], mask_feat[i])
            assert margin < NEAR_TIE, (f"{what}, sample {i}: differs by {diff:.2e} from PyTorch, and its best CSA "
                                       f"match leads by {margin:.2e} (no near-tie)")


# --- exported files, one per config and format -----------------------------------------------


@pytest.fixture(scope="module")
def exported(tmp_path_factory, one_thread):
    """config name -> (eager model, ONNX session, TorchScript module, folder)."""
    out = {}
    for name, config in CONFIGS.items():
        torch.manual_seed(1)
        model = build_generator(config).eval()
        folder = tmp_path_factory.mktemp(name)
        save_generator(model, folder / "g.safetensors")
        export_generator(model, folder / "g.onnx")
        export_generator(model, folder / "g.ts")
        session = ort.InferenceSession(str(folder / "g.onnx"), providers=["CPUExecutionProvider"])
        out[name] = (model, session, torch.jit.load(str(folder / "g.ts")), folder)
    return out


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("name", list(CONFIGS))
def test_exports_equal_pytorch(exported, name, case) -> None:
    model, session, script, _ = exported[name]
    image, mask = CASES[case]()
    completed, refined = session.run(["completed", "refined"], {"image": image.numpy(), "mask": mask.numpy()})
    assert completed.shape == tuple(image.shape)
    assert_matches(model, image, mask, completed, refined, f"ONNX, {name}, {case}")
    with torch.no_grad():
        completed, refined = script(image, mask)
    assert_matches(model, image, mask, completed, refined, f"TorchScript, {name}, {case}")


def test_the_comparison_can_fail(exported) -> None:
    """A real difference (another model's output) is not excused as a near-tie."""
    model, _, _, _ = exported["stable-release"]
    image, mask = CASES["one hole"]()
    with torch.no_grad():
        wrong = model(image.flip(-1), mask)
    with pytest.raises(AssertionError, match="no near-tie"):
        assert_matches(model, image, mask, wrong.composite, wrong.refined, "a wrong output")


def _op_types(graph) -> set[str]:
    ops = set()
    for node in graph.node:
        ops.add(node.op_type)
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                ops |= _op_types(attr.g)
    return ops


def test_onnx_graph_has_loops_dynamic_axes_and_its_config(exported) -> None:
    for name, (model, _, _, folder) in exported.items():
        proto = onnx.load(str(folder / "g.onnx"))
        assert "Loop" in _op_types(proto.graph)  # the recurrence (and the fill's pyramid) are loops, not unrolled
        for value in (*proto.graph.input, *proto.graph.output):
            dims = value.type.tensor_type.shape.dim
            assert [bool(dims[i].dim_param) for i in range(4)] == [True, False, True, True], value.name
            assert value.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
        meta = {p.key: p.value for p in proto.metadata_props}
        assert ModelConfig.from_dict(json.loads(meta["csa_model_config"])) == model.config
        assert all(init.data_type == onnx.TensorProto.FLOAT for init in proto.graph.initializer
                   if init.data_type in (onnx.TensorProto.FLOAT16, onnx.TensorProto.FLOAT))


def test_torchscript_has_a_loop_and_its_config(exported) -> None:
    for name, (model, _, _, folder) in exported.items():
        files = {"csa_metadata.json": ""}
        script = torch.jit.load(str(folder / "g.ts"), _extra_files=files)
        graphs = []
        for module in script.modules():
            try:
                graphs.append(str(module.graph))
            except RuntimeError:  # a submodule without forward (its parent calls its parts)
                pass
        assert any("prim::Loop" in g for g in graphs)
        meta = json.loads(files["csa_metadata.json"])
        assert ModelConfig.from_dict(json.loads(meta["csa_model_config"])) == model.config


def test_one_onnx_file_serves_many_hole_counts(exported) -> None:
    """Hole counts from 1 to most of the image through the same session (the loop length is read at run time)."""
    model, session, _, _ = exported["stable-release"]
    for side in (8, 64, 200):
        m = np.zeros((256, 256), np.float32)
        m[20:20 + side, 30:30 + side] = 1.0
        image, mask = batch([m], seed=side)
        completed, refined = session.run(None, {"image": image.numpy(), "mask": mask.numpy()})
        assert_matches(model, image, mask, completed, refined, f"square hole of {side}")


# --- the scripted pieces alone ------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(256, 256), (256, 512), (64, 32)])
def test_scripted_smooth_fill_equals_smooth_fill(shape) -> None:
    rng = np.random.default_rng(0)
    image = torch.from_numpy(rng.uniform(-1, 1, (2, 3, *shape)).astype(np.float32))
    hole = torch.from_numpy(np.stack([blobs(rng, *shape, 3) if min(shape) > 80 else np.eye(*shape) for _ in range(2)]
                                     )[:, None] > 0.5)
    expected = smooth_fill(image, hole)
    got = torch.jit.script(SmoothFill())(image, hole)
    # Same operations in the same order on the same float32 values.
    assert float((got - expected).abs().max()) < 1e-6


@pytest.mark.parametrize("mode", ["stable", "official"])
def test_traceable_csa_equals_the_reference(mode) -> None:
    gen = torch.Generator().manual_seed(0)
    features = torch.randn(3, 16, 12, 10, generator=gen)
    mask = torch.zeros(3, 1, 12, 10)
    mask[0, :, 3:6, 2:7] = 1  # one block
    mask[1, :, 0, :] = 1  # a border row
    mask[1, :, 5:9, 9] = 1
    mask[2, :, 4, 4] = 1  # one position
    layer = torch.jit.script(TraceableCSA(mode))
    got, expected = layer(features, mask), csa_reference(features, mask, mode)
    for i in range(3):
        diff = float((got[i] - expected[i]).abs().max())
        assert diff < 1e-5 or smallest_margin(features[i], mask[i]) < NEAR_TIE, (i, diff)
    assert torch.equal(layer(features, torch.zeros_like(mask)), features)


# --- file kinds and loaders -------------------------------------------------------------------


def test_file_kinds_are_read_from_the_content(exported, tmp_path) -> None:
    folder = exported["stable-release"][3]
    liar = tmp_path / "looks.safetensors"
    liar.write_bytes((folder / "g.onnx").read_bytes())  # an ONNX file with a safetensors name
    pickle_zip = tmp_path / "state.pt"
    torch.save({"w": torch.zeros(2)}, pickle_zip)
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x08\x07 not a model" * 10)
    assert file_kind(folder / "g.safetensors") == "safetensors"
    assert file_kind(folder / "g.onnx") == "onnx" and file_kind(liar) == "onnx"
    assert file_kind(folder / "g.ts") == "torchscript"
    assert file_kind(pickle_zip) == "torch-pickle"
    assert file_kind(ASSETS / "sample.png") is None and file_kind(junk) is None
    model = load_inference_model(liar)
    assert model.runtime == "onnxruntime" and model.config == exported["stable-release"][0].config
    with pytest.raises(CsaError, match="csa convert"):
        load_inference_model(pickle_zip)
    with pytest.raises(CsaError, match="not a model file"):
        load_inference_model(junk)


def test_exports_refuse_what_they_cannot_do(exported, tmp_path) -> None:
    from csa.checkpoints import load_generator

    folder = exported["stable-release"][3]
    with pytest.raises(CsaError, match="safetensors generator it was exported from"):
        load_generator(folder / "g.onnx")  # training / re-export need the weights
    with pytest.raises(CsaError, match="run on CPU"):
        load_inference_model(folder / "g.onnx", device="cuda")
    model = load_inference_model(folder / "g.ts")
    full = torch.ones(1, 1, 256, 256)
    with pytest.raises(CsaError, match="no known position"):
        model(torch.zeros(1, 3, 256, 256), full)  # the graph cannot refuse it; the loader's module does
    with pytest.raises(CsaError, match="multiples of 256"):
        model(torch.zeros(1, 3, 200, 256), torch.zeros(1, 1, 200, 256))
    with pytest.raises(CsaError, match="cannot tell the export format"):
        resolve_format(tmp_path / "model.bin")
    assert resolve_format(tmp_path / "model.bin", "ONNX") == "onnx"


# --- the command line, the inpainter, evaluate and serve ---------------------------------------


def test_cli_export_formats(exported, tmp_path, capsys) -> None:
    folder = exported["official-smooth-mask"][3]
    source = folder / "g.safetensors"
    assert cli("export", source, "-o", tmp_path / "a.onnx") == 0
    assert "(onnx)" in capsys.readouterr().out
    assert cli("export", source, "-o", tmp_path / "a.model", "--format", "torchscript") == 0
    assert file_kind(tmp_path / "a.model") == "torchscript"
    assert cli("export", source, "-o", tmp_path / "a16.safetensors", "--half") == 0
    assert cli("export", source, "-o", tmp_path / "b.onnx", "--half") == 2
    assert "--half applies to .safetensors" in capsys.readouterr().err
    assert cli("export", source, "-o", tmp_path / "b.bin") == 2
    assert cli("export", folder / "g.onnx", "-o", tmp_path / "c.onnx") == 2
    assert "is an ONNX export" in capsys.readouterr().err
    assert not list(tmp_path.glob(".*"))  # no temporary file left behind


def test_inpainter_runs_exports_with_every_strategy(exported) -> None:
    from csa.inference import Inpainter

    model, _, _, folder = exported["official-smooth-mask"]
    rng = np.random.default_rng(5)
    image = rng.integers(0, 256, (300, 420, 3), dtype=np.uint8)
    hole = np.zeros((300, 420), bool)
    hole[40:90, 60:130] = True
    hole[200:260, 300:380] = True
    eager = Inpainter(model)
    for path in (folder / "g.onnx", folder / "g.ts"):
        inpainter = Inpainter.from_pretrained(path)
        info = inpainter.model_info()
        assert info["runtime"] in ("onnxruntime", "torchscript") and info["parameters"] == sum(
            p.numel() for p in model.parameters())
        for strategy in ("resize", "crop", "native"):
            a = inpainter.inpaint_array(image, hole, strategy=strategy).astype(int)
            b = eager.inpaint_array(image, hole, strategy=strategy).astype(int)
            assert np.array_equal(a[~hole], image[~hole])
            assert np.abs(a - b).max() <= 1, (path.suffix, strategy)  # 1e-4 in [-1, 1] is far below one level


def test_evaluate_and_serve_take_an_onnx_file(exported) -> None:
    from csa.evaluate import resolve_method

    folder = exported["stable-release"][3]
    label, run = resolve_method(str(folder / "g.onnx"))
    image = np.full((256, 256, 3), 120, np.uint8)
    mask = one_hole() > 0.5
    assert label == "g" and run(image, mask).shape == (256, 256, 3)

    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from csa.server import create_app

    with TestClient(create_app(folder / "g.onnx")) as client:
        assert client.get("/api/v1/model").json()["runtime"] == "onnxruntime"
        buf, mbuf = io.BytesIO(), io.BytesIO()
        Image.fromarray(image).save(buf, format="PNG")
        Image.fromarray(mask.astype(np.uint8) * 255).save(mbuf, format="PNG")
        resp = client.post("/api/v1/inpaint", files={"image": ("a.png", buf.getvalue(), "image/png"),
                                                     "mask": ("m.png", mbuf.getvalue(), "image/png")})
        assert resp.status_code == 200, resp.text


def test_bundled_model_export_matches_csa_inpaint(tmp_path, one_thread) -> None:
    """The bundled model, exported, on the bundled sample: within 1/255 of `csa inpaint` (one level)."""
    sample, sample_mask = ASSETS / "sample.png", ASSETS / "sample_mask.png"
    assert cli("inpaint", sample, "-m", sample_mask, "-o", tmp_path / "eager.png") == 0
    expected = np.asarray(Image.open(tmp_path / "eager.png")).astype(int)
    for suffix in (".onnx", ".ts"):
        assert cli("export", "-o", tmp_path / f"bundled{suffix}") == 0
        out = tmp_path / f"out{suffix}.png"
        assert cli("inpaint", sample, "-m", sample_mask, "-o", out, "--weights", tmp_path / f"bundled{suffix}") == 0
        got = np.asarray(Image.open(out)).astype(int)
        assert got.shape == expected.shape and np.abs(got - expected).max() <= 1, suffix
