"""`csa inpaint`: single files, folders, bad input (exit 2, one line, no output left behind)."""
from __future__ import annotations

import ast
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from csa import methods
from csa.cli import main

RNG = np.random.default_rng(1)
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_thread):
    """Every test here runs on one thread (see conftest)."""


@pytest.fixture(scope="module")
def weights(tiny_model_file):
    return str(tiny_model_file)


def run(capsys, *args: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_info:
        main([str(a) for a in args])
    out, err = capsys.readouterr()
    return exit_info.value.code, out, err


def write_pair(folder: Path, h: int = 48, w: int = 64, name: str = "photo") -> tuple[Path, Path, np.ndarray, np.ndarray]:
    image = RNG.integers(0, 256, (h, w, 3), dtype=np.uint8)
    hole = np.zeros((h, w), dtype=bool)
    hole[h // 3: 2 * h // 3, w // 3: 2 * w // 3] = True
    Image.fromarray(image).save(folder / f"{name}.png")
    Image.fromarray(hole.astype(np.uint8) * 255).save(folder / f"{name}_mask.png")
    return folder / f"{name}.png", folder / f"{name}_mask.png", image, hole


def test_single_image(capsys, tmp_path, weights):
    img, mask, image, hole = write_pair(tmp_path)
    code, out, err = run(capsys, "inpaint", img, "--mask", mask, "-o", tmp_path / "out.png", "--weights", weights)
    assert code == 0, err
    assert out.startswith("wrote ") and err == ""
    result = np.asarray(Image.open(tmp_path / "out.png"))
    assert np.array_equal(result[~hole], image[~hole]) and (result[hole] != image[hole]).any()


def test_every_strategy_and_jpeg_warning(capsys, tmp_path, weights):
    img, mask, image, hole = write_pair(tmp_path, 300, 270)
    for strategy in ("resize", "crop", "native"):
        out_path = tmp_path / f"{strategy}.png"
        code, out, err = run(capsys, "inpaint", img, "-m", mask, "-o", out_path, "--weights", weights, "--strategy", strategy)
        assert code == 0 and strategy in out, err
        assert np.array_equal(np.asarray(Image.open(out_path))[~hole], image[~hole])
    code, out, err = run(capsys, "inpaint", img, "-m", mask, "-o", tmp_path / "out.jpg", "--weights", weights)
    assert code == 0 and (tmp_path / "out.jpg").is_file()
    assert err.startswith("warning: JPEG is lossy")


def _png_header_only(path: Path, width: int, height: int) -> None:
    """A PNG whose header claims width x height (a decompression bomb, as far as a reader can tell)."""
    Image.new("L", (1, 1)).save(path)
    data = bytearray(path.read_bytes())
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    path.write_bytes(bytes(data))


def _bad_cases(tmp: Path) -> dict[str, tuple[list, str]]:
    img, mask, image, hole = write_pair(tmp)
    out = tmp / "out" / "result.png"
    (tmp / "out").mkdir()
    (tmp / "notimage.png").write_text("hello, not a picture")
    (tmp / "empty.png").write_bytes(b"")
    (tmp / "adir").mkdir()
    big = RNG.integers(0, 256, (128, 128, 3), dtype=np.uint8)
    Image.fromarray(big).save(tmp / "big.png")
    (tmp / "truncated.png").write_bytes((tmp / "big.png").read_bytes()[:20000])
    Image.fromarray(big).save(tmp / "big.jpg", quality=95)
    (tmp / "truncated.jpg").write_bytes((tmp / "big.jpg").read_bytes()[:3000])
    Image.fromarray(np.full((48, 64), 255, np.uint8)).save(tmp / "full.png")
    Image.fromarray(np.zeros((30, 30), np.uint8)).save(tmp / "small_mask.png")
    _png_header_only(tmp / "bomb.png", 10_000, 6_000)  # 60 MP > the 50 MP default
    return {
        "missing image": ([tmp / "nope.png", "-m", mask, "-o", out], "not found"),
        "missing mask": ([img, "-m", tmp / "nope.png", "-o", out], "not found"),
        "not an image": ([tmp / "notimage.png", "-m", mask, "-o", out], "not an image"),
        "truncated png": ([tmp / "truncated.png", "-m", mask, "-o", out, "--resize-mask"], "truncated"),
        "truncated jpeg": ([tmp / "truncated.jpg", "-m", mask, "-o", out, "--resize-mask"], "truncated"),
        "zero bytes": ([tmp / "empty.png", "-m", mask, "-o", out], "empty"),
        "folder as mask file": ([img, "-m", tmp / "adir", "-o", out], "folder"),
        "folder as output file": ([img, "-m", mask, "-o", tmp / "adir"], "folder"),
        "mask size": ([img, "-m", tmp / "small_mask.png", "-o", out], "--resize-mask"),
        "mask covers all": ([img, "-m", tmp / "full.png", "-o", out], "whole image"),
        "pixel bomb": ([tmp / "bomb.png", "-m", mask, "-o", out], "over the limit"),
        "max pixels": ([img, "-m", mask, "-o", out, "--max-pixels", "1000"], "over the limit"),
        "no output folder": ([img, "-m", mask, "-o", tmp / "missing" / "out.png"], "does not exist"),
        "unknown format": ([img, "-m", mask, "-o", tmp / "out" / "result.xyz"], "unknown image format (.xyz); use .png"),
        "unknown strategy": ([img, "-m", mask, "-o", out, "--strategy", "tile"], "unknown strategy"),
        "unknown method": ([img, "-m", mask, "-o", out, "--method", "deepfill"], "unknown method"),
        "no mask": ([img, "-o", out], "no mask"),
        "mask from alpha without alpha": ([img, "-o", out, "--mask-from-alpha"], "alpha"),
    }


BAD = ["missing image", "missing mask", "not an image", "truncated png", "truncated jpeg", "zero bytes",
       "folder as mask file", "folder as output file", "mask size", "mask covers all", "pixel bomb", "max pixels",
       "no output folder", "unknown format", "unknown strategy", "unknown method", "no mask",
       "mask from alpha without alpha"]


@pytest.mark.parametrize("case", BAD)
def test_bad_input_exit_2_one_line_no_output(capsys, tmp_path, weights, case):
    args, expected = _bad_cases(tmp_path)[case]
    before = set((tmp_path / "out").iterdir())
    code, out, err = run(capsys, "inpaint", *args, "--weights", weights)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert expected in lines[0] and "Traceback" not in err
    assert set((tmp_path / "out").iterdir()) == before  # no output, no temporary file


def test_unwritable_output_folder(capsys, tmp_path, weights):
    img, mask, _, _ = write_pair(tmp_path)
    if os.geteuid() != 0:
        locked = tmp_path / "locked"
        locked.mkdir()
        locked.chmod(0o555)
        target = locked / "out.png"
    else:  # root may write anywhere os.access can see: use a read-only file system
        target = Path("/sys/csa-test-out.png")
        if not Path("/sys").is_dir() or _can_create("/sys"):
            pytest.skip("no read-only folder available to root here")
    code, _, err = run(capsys, "inpaint", img, "-m", mask, "-o", target, "--weights", weights)
    assert code == 2 and err.startswith("error: ") and "writ" in err and len(err.strip().splitlines()) == 1
    assert not target.exists()


def _can_create(folder: str) -> bool:
    try:
        with open(os.path.join(folder, ".csa-probe"), "w"):
            pass
    except OSError:
        return False
    os.unlink(os.path.join(folder, ".csa-probe"))
    return True


def test_resize_mask(capsys, tmp_path, weights):
    img, _, image, _ = write_pair(tmp_path)
    Image.fromarray(np.pad(np.full((12, 16), 255, np.uint8), ((6, 6), (8, 8)))).save(tmp_path / "half.png")
    code, _, err = run(capsys, "inpaint", img, "-m", tmp_path / "half.png", "-o", tmp_path / "o.png",
                       "--weights", weights, "--resize-mask")
    assert code == 0, err
    assert (np.asarray(Image.open(tmp_path / "o.png")) != image).any()


def test_empty_mask_warns_and_writes_the_image_unchanged(capsys, tmp_path, weights):
    img, _, image, _ = write_pair(tmp_path)
    Image.fromarray(np.zeros((48, 64), np.uint8)).save(tmp_path / "empty_mask.png")
    code, out, err = run(capsys, "inpaint", img, "-m", tmp_path / "empty_mask.png", "-o", tmp_path / "o.png",
                         "--weights", weights)
    assert code == 0 and err.startswith("warning: the mask has no hole")
    assert np.array_equal(np.asarray(Image.open(tmp_path / "o.png")), image)


def test_no_bundled_model_says_so(capsys, tmp_path, monkeypatch):
    monkeypatch.setattr(methods, "DEFAULT_WEIGHTS", tmp_path / "absent.safetensors")
    img, mask, _, _ = write_pair(tmp_path)
    code, _, err = run(capsys, "inpaint", img, "-m", mask, "-o", tmp_path / "o.png")
    assert code == 2 and "no default model is bundled" in err and "--weights" in err
    assert not (tmp_path / "o.png").exists()


def test_method_baseline_needs_no_weights(capsys, tmp_path, monkeypatch):
    monkeypatch.setattr(methods, "DEFAULT_WEIGHTS", tmp_path / "absent.safetensors")
    img, mask, image, hole = write_pair(tmp_path)
    code, out, err = run(capsys, "inpaint", img, "-m", mask, "-o", tmp_path / "o.png", "--method", "telea")
    assert code == 0 and "telea" in out, err
    result = np.asarray(Image.open(tmp_path / "o.png"))
    assert np.array_equal(result[~hole], image[~hole]) and (result[hole] != image[hole]).any()


def test_16bit_png_in_16bit_png_out(capsys, tmp_path, weights):
    cv2 = pytest.importorskip("cv2")
    _, mask, _, hole = write_pair(tmp_path)
    colour = RNG.integers(0, 65536, (48, 64, 3), dtype=np.int64).astype(np.uint16)
    cv2.imwrite(str(tmp_path / "c16.png"), colour[:, :, ::-1])
    grey = colour[:, :, 0].copy()
    Image.fromarray(grey).save(tmp_path / "g16.png")
    for name, original in (("c16", colour), ("g16", grey)):
        code, _, err = run(capsys, "inpaint", tmp_path / f"{name}.png", "-m", mask, "-o", tmp_path / f"{name}_out.png",
                           "--weights", weights)
        assert code == 0, err
        result = cv2.imread(str(tmp_path / f"{name}_out.png"), cv2.IMREAD_UNCHANGED)
        if result.ndim == 3:
            result = result[:, :, ::-1]
        assert result.dtype == np.uint16 and result.shape == original.shape
        assert np.array_equal(result[~hole], original[~hole])


def test_mask_from_alpha_of_the_image(capsys, tmp_path, weights):
    _, _, image, hole = write_pair(tmp_path)
    rgba = np.dstack([image, np.where(hole, 0, 255).astype(np.uint8)])
    Image.fromarray(rgba).save(tmp_path / "erased.png")
    code, _, err = run(capsys, "inpaint", tmp_path / "erased.png", "--mask-from-alpha", "-o", tmp_path / "o.png",
                       "--weights", weights)
    assert code == 0, err
    result = np.asarray(Image.open(tmp_path / "o.png"))
    assert result.shape == (48, 64, 4) and (result[:, :, 3] == 255).all()
    assert np.array_equal(result[~hole], rgba[~hole])


def test_folder_mode(capsys, tmp_path, weights):
    images, masks, out = tmp_path / "images", tmp_path / "masks", tmp_path / "results"
    images.mkdir()
    masks.mkdir()
    for name in ("a", "b", "c"):
        _, _, image, hole = write_pair(images, name=name)
        (images / f"{name}_mask.png").replace(masks / f"{name}.png")
    Image.open(images / "b.png").convert("RGB").save(images / "b.jpg")
    (images / "b.png").unlink()
    Image.open(masks / "b.png").save(masks / "b.png")
    (images / "d.png").write_text("not an image")
    Image.open(masks / "a.png").save(masks / "d.png")
    (masks / "c.png").unlink()  # c has no mask
    (images / "notes.txt").write_text("ignored")
    code, out_text, err = run(capsys, "inpaint", images, "-m", masks, "-o", out, "--weights", weights)
    assert code == 2
    assert sorted(p.name for p in out.iterdir()) == ["a.png", "b.png"]
    assert "error: c.png: no mask" in err and "error: d.png:" in err and "Traceback" not in err
    assert "inpainted 2 of 4 images" in out_text and "2 failed" in out_text
    # one mask file for all images, into an existing folder
    (images / "d.png").unlink()
    code, out_text, err = run(capsys, "inpaint", images, "-m", masks / "a.png", "-o", out, "--weights", weights)
    assert code == 0, err
    assert "inpainted 3 of 3 images" in out_text
    assert sorted(p.name for p in out.iterdir()) == ["a.png", "b.png", "c.png"]


def test_folder_mode_refuses_writing_into_the_input_folder(capsys, tmp_path, weights):
    write_pair(tmp_path)
    code, _, err = run(capsys, "inpaint", tmp_path, "-m", tmp_path, "-o", tmp_path, "--weights", weights)
    assert code == 2 and "input folder" in err


# --- the release's checkpoint layout, end to end (docs/method.md, 'Checkpoints of the release') ---


def _reference_keys() -> Path:
    for candidate in (REPO.parent / "shared", REPO / "shared"):
        path = candidate / "reference" / "official_state_dict_keys.txt"
        if path.is_file():
            return path
    pytest.skip("shared/reference/official_state_dict_keys.txt not found beside the repository (../shared)")


def _random_state_dicts(keys_file: Path) -> dict[str, dict[str, torch.Tensor]]:
    sections: dict[str, dict[str, torch.Tensor]] = {}
    current = None
    gen = torch.Generator().manual_seed(0)
    for line in keys_file.read_text().splitlines():
        if line.startswith("# net_"):
            current = line[2:].split(".pth")[0]  # net_G, net_P, ...
            sections[current] = {}
        elif line and not line.startswith("#") and current is not None:
            key, shape, _dtype = line.split("\t")
            sections[current][key] = torch.randn(ast.literal_eval(shape), generator=gen) * 0.02
    return sections


def test_release_layout_converts_and_inpaints(capsys, tmp_path):
    state = _random_state_dicts(_reference_keys())
    torch.save(state["net_G"], tmp_path / "G.pth")
    torch.save(state["net_P"], tmp_path / "P.pth")
    del state
    model = tmp_path / "model.safetensors"
    code, out, err = run(capsys, "convert", "--official-g", tmp_path / "G.pth", "--official-p", tmp_path / "P.pth",
                         "-o", model)
    assert code == 0, err
    assert "132,111,750 parameters" in out  # 77,692,291 (G) + 54,419,459 (P)
    img, mask, image, hole = write_pair(tmp_path, 256, 256)
    code, out, err = run(capsys, "inpaint", img, "-m", mask, "-o", tmp_path / "out.png", "--weights", model)
    assert code == 0, err
    result = np.asarray(Image.open(tmp_path / "out.png"))
    assert np.array_equal(result[~hole], image[~hole]) and (result[hole] != image[hole]).any()
    for big in ("G.pth", "P.pth", "model.safetensors"):  # ~1 GB that pytest would keep around
        (tmp_path / big).unlink()
