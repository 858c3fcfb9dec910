"""The CSA layer's sources (csa.nn.attention.CsaSources) and Inpainter.explain."""
from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():
    # Without a GPU the Triton kernels run in Triton's CPU interpreter (set before they import).
    os.environ.setdefault("TRITON_INTERPRET", "1")

from csa.nn.attention import CoherentSemanticAttention, csa_reference
from csa.nn.fast_attention import csa_fast, numba_available, triton_available


def _margin_problem(seed: int, n: int = 2, c: int = 16, h: int = 6, w: int = 7):
    """Features whose hole queries each lie close to one known feature: a clear argmax margin."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(n, c, h * w, generator=gen) + 0.1
    mask = torch.zeros(n, 1, h, w)
    mask[0, :, 1:4, 2:6] = 1
    mask[1, :, 4:, :3] = 1
    for i in range(n):
        hole = mask[i].flatten() > 0.5
        known = (~hole).nonzero().flatten()
        for k, p in enumerate(hole.nonzero().flatten().tolist()):
            x[i, :, p] = 0.7 * x[i, :, known[(5 * k + i) % len(known)]] + 0.01 * torch.rand(c, generator=gen)
    return x.view(n, c, h, w), mask


BACKENDS = [("torch", "exact"), ("torch", "padded")] + (
    [("numba", "exact"), ("numba", "padded")] if numba_available() else []
) + [pytest.param("triton", "auto", marks=pytest.mark.skipif(not triton_available(), reason="no Triton"))]


@pytest.mark.parametrize("mode", ["stable", "official"])
@pytest.mark.parametrize("backend,search", BACKENDS)
def test_fast_sources_equal_reference(mode: str, backend: str, search: str) -> None:
    x, mask = _margin_problem(1)
    ref_out, ref = csa_reference(x, mask, mode, return_sources=True)
    out, got = csa_fast(x, mask, mode, backend=backend, search=search, return_sources=True)
    torch.testing.assert_close(out, ref_out, rtol=1e-4, atol=1e-5)
    hole = mask.flatten(1) > 0.5
    assert torch.equal(got.source, ref.source)
    assert torch.equal(got.dominant, ref.dominant)
    assert bool((ref.source[hole] >= 0).all()) and bool((ref.source[~hole] == -1).all())
    known_at_source = torch.gather(~hole, 1, ref.source.clamp(min=0))
    assert bool(known_at_source[hole].all()), "a source must be a known position"
    torch.testing.assert_close(got.blend, ref.blend, rtol=1e-4, atol=1e-5)
    assert got.size == ref.size == (6, 7)


def test_sources_of_a_plain_call_are_not_kept() -> None:
    x, mask = _margin_problem(2)
    layer = CoherentSemanticAttention("stable")
    layer(x, mask)
    assert layer.last_sources is None
    layer.record_sources = True
    out = layer(x, mask)
    assert isinstance(out, torch.Tensor) and layer.last_sources is not None
    assert layer.last_sources.source.shape == (2, 42)


@pytest.mark.parametrize("backend", ["reference", "torch"] + (["numba"] if numba_available() else []))
def test_exact_tie_goes_to_first_known_position(backend: str) -> None:
    # Known positions 0, 2 and 5 hold the same one-hot vector: every score against them is the
    # query's first component, exactly (products with 0 and 1 round nowhere).
    c, h, w = 4, 2, 3
    x = torch.zeros(1, c, h * w)
    x[0, 1, [1, 3, 4]] = 1.0  # the other known positions: another direction
    x[0, 0, [0, 2, 5]] = 1.0
    mask = torch.zeros(1, 1, h, w)
    mask[0, 0, 0, 1] = mask[0, 0, 1, 1] = 1  # holes at positions 1 and 4
    x[0, :, 1] = torch.tensor([0.9, 0.1, 0.0, 0.0])
    x[0, :, 4] = torch.tensor([0.8, 0.2, 0.0, 0.0])
    layer = CoherentSemanticAttention("stable", implementation=backend if backend != "torch" else "torch")
    layer.record_sources = True
    layer(x.view(1, c, h, w), mask)
    src = layer.last_sources.source[0]
    assert src[1].item() == 0 and src[4].item() == 0
    assert src[[0, 2, 3, 5]].tolist() == [-1, -1, -1, -1]


def test_dominant_follows_the_recurrence() -> None:
    # Two holes: the first copies its match (b = 1); the second blends. With a large a the
    # first hole's source stays dominant in the second's output, with a small a its own wins.
    x, mask = _margin_problem(3)
    _, info = csa_reference(x, mask, "stable", return_sources=True)
    hole = (mask[0].flatten() > 0.5).nonzero().flatten()
    first, second = hole[0].item(), hole[1].item()
    assert info.blend[0, first].item() == 1.0
    assert info.dominant[0, first].item() == info.source[0, first].item()
    b = info.blend[0, second].item()
    expected = info.source[0, second] if b >= 1 - b else info.source[0, first]
    if info.source[0, second] != info.source[0, first]:
        assert info.dominant[0, second].item() == expected.item()


# --- Inpainter.explain ---------------------------------------------------------------------

import numpy as np  # noqa: E402

from csa import CsaError, Inpainter  # noqa: E402
from csa.explain import KNOWN_CELL, OUTSIDE, Frame, build  # noqa: E402
from csa.inference import DEFAULT_WEIGHTS  # noqa: E402

bundled = pytest.mark.skipif(not DEFAULT_WEIGHTS.is_file(), reason="no default model bundled")


@pytest.fixture(scope="module")
def tiny(tiny_model_file, one_thread):
    return Inpainter.from_pretrained(tiny_model_file)


def two_textures(h: int = 256, w: int = 256) -> np.ndarray:
    """Left half red/cream vertical stripes, right half a dark green checkerboard with noise."""
    rows, cols = np.mgrid[0:h, 0:w]
    img = np.where(((cols // 6) % 2 == 0)[..., None], np.uint8([200, 40, 40]), np.uint8([240, 220, 200]))
    noise = np.random.default_rng(0).integers(0, 64, (h, w))
    check = ((rows // 16) + (cols // 16)) % 2 == 0
    right = np.stack([np.full((h, w), 30), 90 + noise, 60 + 120 * check], -1).astype(np.uint8)
    return np.where((cols >= w // 2)[..., None], right, img).astype(np.uint8)


@bundled
def test_sources_stay_in_the_holes_texture(one_thread) -> None:
    img = two_textures()
    hole = np.zeros(img.shape[:2], bool)
    hole[96:160, 160:224] = True  # inside the right half
    ex = Inpainter.from_pretrained().explain(img, hole)
    cols = ex.sources[hole][:, 1]
    share = float(np.mean(cols >= 128))  # -1 / -2 count as misses
    print(f"two-texture share: {share:.4f}")
    assert share >= 0.8
    assert np.array_equal(ex.result[~hole], img[~hole])


def _check_frame(ex, image_shape) -> None:
    h, w = image_shape
    hole = ex.hole
    assert ex.sources.shape == (h, w, 2) and ex.sources.dtype == np.int32
    assert (ex.sources[~hole] == OUTSIDE).all()
    s = ex.sources[hole]
    picked = s[:, 0] >= 0
    assert ((s[~picked] == KNOWN_CELL).all())
    assert picked.mean() > 0.5
    assert (s[picked, 0] < h).all() and (s[picked, 1] < w).all()
    assert np.isfinite(ex.blend[hole][picked]).all() and np.isnan(ex.blend[~hole]).all()


@pytest.mark.parametrize("strategy", ["resize", "crop", "native"])
def test_corner_hole_of_a_1024x768_image_maps_into_its_frame(tiny, strategy: str) -> None:
    h, w = 768, 1024
    img = np.random.default_rng(1).integers(0, 256, (h, w, 3), dtype=np.uint8)
    hole = np.zeros((h, w), bool)
    hole[700:750, 950:1010] = True  # near the bottom-right corner
    ex = tiny.explain(img, hole, strategy=strategy)
    assert ex.strategy == strategy
    _check_frame(ex, (h, w))
    (frame,) = ex.frames
    if strategy == "crop":  # the crop's square, inside the image, holds the hole and its sources
        top, left, bottom, right = frame.box
        assert 0 <= top and bottom <= h and 0 <= left and right <= w and bottom - top == right - left
        s = ex.sources[hole]
        s = s[s[:, 0] >= 0]
        assert (s[:, 0] >= top).all() and (s[:, 1] >= left).all()
    else:
        assert frame.box == (0, 0, h, w)
    assert tiny.explain(img, hole, strategy=strategy).sources.tolist() == ex.sources.tolist()


def _one_source_frame(box, fit, offset, canvas, hole_cell, source_cell) -> Frame:
    grid = (canvas[0] // 8, canvas[1] // 8)
    cells = np.full(grid, -1, np.int64)
    cells[hole_cell] = source_cell[0] * grid[1] + source_cell[1]
    blend = np.zeros(grid, np.float32)
    blend[hole_cell] = 0.25
    return Frame(box, fit, offset, canvas, cells, cells.copy(), blend)


def test_resize_source_in_mirror_padding_maps_to_the_pixel_it_mirrors() -> None:
    # 1024 x 768 (W x H) scaled by 1/4 to 256 x 192, 32 mirrored rows above and below.
    h, w = 768, 1024
    hole = np.zeros((h, w), bool)
    hole[400:404, 500:504] = True  # canvas rows 132..133, cols 125..126: cell (16, 15)
    frame = _one_source_frame((0, 0, h, w), (192, 256), (32, 0), (256, 256), (16, 15), (0, 0))
    ex = build(np.zeros((h, w, 3), np.uint8), np.zeros((h, w, 3), np.uint8), hole, "resize", [frame])
    # Cell row 0 = canvas rows 0..7 = scaled rows -32..-25, mirrored 32..25: centre 28.5, image row
    # (28.5 + 0.5) * 4 - 0.5 = 115.5; cell column 0 = scaled columns 0..7: image column 15.5.
    assert set(map(tuple, ex.sources[hole].tolist())) == {(116, 16)}
    assert np.allclose(ex.blend[hole], 0.25)
    assert (ex.sources[~hole] == OUTSIDE).all()


def test_native_source_in_padding_maps_inside() -> None:
    # 1000 x 700 (W x H) padded to 1024 x 768 at the bottom and the right.
    h, w = 700, 1000
    hole = np.zeros((h, w), bool)
    hole[8:16, 8:16] = True  # cell (1, 1)
    frame = _one_source_frame((0, 0, h, w), (h, w), (0, 0), (768, 1024), (1, 1), (94, 126))
    ex = build(np.zeros((h, w, 3), np.uint8), np.zeros((h, w, 3), np.uint8), hole, "native", [frame])
    # Cell (94, 126): canvas rows 755.5 -> mirrored about row 699: 642.5; columns 1011.5 -> 986.5.
    (src,) = set(map(tuple, ex.sources[hole].tolist()))
    assert abs(src[0] - 642.5) <= 0.5 and abs(src[1] - 986.5) <= 0.5


def test_hole_cells_that_count_as_known_are_marked() -> None:
    h, w = 256, 256
    hole = np.zeros((h, w), bool)
    hole[0:2, 0:2] = True  # its cell is not hole at feature resolution
    frame = _one_source_frame((0, 0, h, w), (h, w), (0, 0), (h, w), (10, 10), (0, 0))
    ex = build(np.zeros((h, w, 3), np.uint8), np.zeros((h, w, 3), np.uint8), hole, "native", [frame])
    assert (ex.sources[hole] == KNOWN_CELL).all() and np.isnan(ex.blend[hole]).all()


def test_picture_is_an_image_of_the_inputs_size(tiny) -> None:
    img = two_textures(128, 192)
    hole = np.zeros(img.shape[:2], bool)
    hole[40:80, 120:170] = True
    ex = tiny.explain(img, hole)
    pic = ex.picture(scale=1)
    assert pic.size == (192, 128) and pic.mode == "RGB"
    assert ex.picture().size == (384, 256), "small images are enlarged to stay readable"
    arr = np.asarray(pic)
    assert (arr[60, 140] != arr[60, 20]).any()


def test_classical_methods_and_exported_models_refuse_explain() -> None:
    hole = np.zeros((64, 64), bool)
    hole[20:30, 20:30] = True
    img = np.zeros((64, 64, 3), np.uint8)
    with pytest.raises(CsaError, match="classical method 'telea'"):
        Inpainter.from_method("telea").explain(img, hole)
    from pathlib import Path

    from csa.config import ModelConfig
    from csa.runtime import OnnxGenerator, TorchScriptGenerator

    for exported in (TorchScriptGenerator(Path("g.ts"), torch.nn.Identity(), {}, ModelConfig()),
                     OnnxGenerator(Path("g.onnx"), None, {}, ModelConfig())):
        with pytest.raises(CsaError, match=f"exported {exported.runtime} model"):
            Inpainter(exported, name="g").explain(img, hole)
    with pytest.raises(CsaError, match="no single CSA layer"):
        Inpainter(torch.nn.Identity(), name="plain").explain(img, hole)


# --- csa inpaint --explain ------------------------------------------------------------------

from PIL import Image  # noqa: E402

from csa.cli import main  # noqa: E402


def _run(capsys, *args) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_info:
        main([str(a) for a in args])
    out, err = capsys.readouterr()
    return exit_info.value.code, out, err


def _pair(folder, name: str = "photo", h: int = 96, w: int = 128):
    img = two_textures(h, w)
    hole = np.zeros((h, w), bool)
    hole[30:60, 80:110] = True
    Image.fromarray(img).save(folder / f"{name}.png")
    Image.fromarray(hole.astype(np.uint8) * 255).save(folder / f"{name}_mask.png")
    return folder / f"{name}.png", folder / f"{name}_mask.png", img, hole


def test_cli_explain_writes_picture_and_npz(capsys, tmp_path, tiny_model_file, one_thread) -> None:
    img, mask, image, hole = _pair(tmp_path)
    code, out, err = _run(capsys, "inpaint", img, "--mask", mask, "-o", tmp_path / "out.png",
                          "--weights", tiny_model_file, "--explain", tmp_path / "map.png")
    assert code == 0, err
    assert "map.npz" in out
    assert Image.open(tmp_path / "map.png").size == (256, 192)  # enlarged 2x: under 512 pixels
    with np.load(tmp_path / "map.npz") as data:
        assert data["sources"].dtype == np.int32 and data["sources"].shape == (96, 128, 2)
        assert data["blend"].dtype == np.float32 and data["blend"].shape == (96, 128)
        assert (data["sources"][~hole] == -1).all() and (data["sources"][hole] != -1).all()
    result = np.asarray(Image.open(tmp_path / "out.png"))
    assert np.array_equal(result[~hole], image[~hole])


def test_cli_explain_folder_mode(capsys, tmp_path, tiny_model_file, one_thread) -> None:
    src = tmp_path / "in"
    src.mkdir()
    _pair(src, "a")
    _pair(src, "b")
    code, out, err = _run(capsys, "inpaint", src, "--mask", src, "-o", tmp_path / "out",
                          "--weights", tiny_model_file, "--explain", tmp_path / "maps")
    assert code == 0, err
    assert sorted(p.name for p in (tmp_path / "maps").iterdir()) == ["a.npz", "a.png", "b.npz", "b.png"]


def test_cli_explain_refused_by_classical_methods_and_bad_names(capsys, tmp_path) -> None:
    img, mask, _, _ = _pair(tmp_path)
    code, _, err = _run(capsys, "inpaint", img, "--mask", mask, "-o", tmp_path / "out.png",
                        "--method", "telea", "--explain", tmp_path / "map.png")
    assert code == 2 and "error:" in err and "classical method 'telea'" in err
    code, _, err = _run(capsys, "inpaint", img, "--mask", mask, "-o", tmp_path / "out.png",
                        "--explain", tmp_path / "map.jpg")
    assert code == 2 and ".png" in err
    assert not (tmp_path / "out.png").exists()


# --- POST /api/v1/explain ---------------------------------------------------------------------

import base64  # noqa: E402
import io  # noqa: E402


def _png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def _mirror(v: float, n: int) -> float:
    """Reflection about the first and last index (the padding of csa.inference), any distance."""
    if n == 1:
        return 0.0
    period = 2 * (n - 1)
    v = v % period
    return period - v if v > n - 1 else v


def _map_pixel(frames: list, y: int, x: int):
    """A client's mapping of an image pixel to its source, exactly as ExplainBody describes it."""
    for f in frames:
        top, left, bottom, right = f["box"]
        if not (top <= y < bottom and left <= x < right):
            continue
        rows = (f["offset"][0] + (y - top + 0.5) * f["fit"][0] / (bottom - top) - 0.5,
                f["offset"][1] + (x - left + 0.5) * f["fit"][1] / (right - left) - 0.5)
        cy = min(max(int(np.floor(rows[0] + 0.5)), 0), f["canvas"][0] - 1) // f["cell"]
        cx = min(max(int(np.floor(rows[1] + 0.5)), 0), f["canvas"][1] - 1) // f["cell"]
        s = f["cells"][cy * f["grid"][1] + cx]
        if s < 0:
            return (-2, -2)
        out = []
        for axis, idx in ((0, s // f["grid"][1]), (1, s % f["grid"][1])):
            canvas = idx * f["cell"] + f["cell"] / 2 - 0.5
            fit = _mirror(canvas - f["offset"][axis], f["fit"][axis])
            start, stop = f["box"][axis], f["box"][axis + 2]
            out.append(start + (fit + 0.5) * (stop - start) / f["fit"][axis] - 0.5)
        return tuple(out)
    return (-1, -1)


@pytest.fixture(scope="module")
def api(tiny):
    from fastapi.testclient import TestClient

    from csa.server import create_app

    with TestClient(create_app(tiny), raise_server_exceptions=False) as client:
        yield client


@pytest.mark.parametrize("strategy", ["resize", "crop", "native"])
def test_api_explain_answers_result_picture_and_a_map_a_client_can_follow(api, tiny, strategy) -> None:
    h, w = 200, 300
    img = two_textures(h, w)
    hole = np.zeros((h, w), bool)
    hole[150:190, 250:290] = True
    resp = api.post("/api/v1/explain", files={"image": ("p.png", _png(img), "image/png"),
                                              "mask": ("m.png", _png(hole.astype(np.uint8) * 255), "image/png")},
                    data={"strategy": strategy})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    result = np.asarray(Image.open(io.BytesIO(base64.b64decode(body["result_png"]))))
    assert np.array_equal(result[~hole], img[~hole])
    assert Image.open(io.BytesIO(base64.b64decode(body["picture_png"]))).size == (2 * w, 2 * h)
    assert body["strategy"] == strategy and body["size"] == [h, w] and body["hole_pixels"] == int(hole.sum())
    expected = tiny.explain(img, hole, strategy=strategy).sources
    for y, x in [(150, 250), (170, 270), (189, 289), (160, 255)]:
        got = _map_pixel(body["frames"], y, x)
        if got[0] < 0:
            assert tuple(expected[y, x]) == (-2, -2)
        else:  # the client's float centre rounds to the server's pixel
            assert abs(got[0] - expected[y, x, 0]) <= 0.5 and abs(got[1] - expected[y, x, 1]) <= 0.5
    assert _map_pixel(body["frames"], 0, 0) in ((-1, -1),) or strategy != "crop"


def test_api_explain_is_in_the_schema_and_refused_for_classical_methods(api) -> None:
    spec = api.get("/openapi.json").json()
    post = spec["paths"]["/api/v1/explain"]["post"]
    assert "ExplainBody" in str(post["responses"]["200"])
    assert "frames" in spec["components"]["schemas"]["ExplainBody"]["properties"]
    img = np.zeros((64, 64, 3), np.uint8)
    hole = np.zeros((64, 64), np.uint8)
    hole[20:30, 20:30] = 255
    resp = api.post("/api/v1/explain", files={"image": ("p.png", _png(img), "image/png"),
                                              "mask": ("m.png", _png(hole), "image/png")},
                    data={"method": "telea", "strategy": "native"})
    assert resp.status_code == 400, resp.text
    assert "telea" in resp.json()["detail"]
    resp = api.post("/api/v1/explain", files={"image": ("p.png", _png(img), "image/png"),
                                              "mask": ("m.png", _png(hole), "image/png")}, data={"colour": "1"})
    assert resp.status_code == 400 and "colour" in resp.json()["detail"]
