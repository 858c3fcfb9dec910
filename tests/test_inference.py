"""The Python API: Inpainter, strategies, input kinds, the known-pixels guarantee (tiny random model)."""
from __future__ import annotations

import subprocess
import sys
import threading

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from csa import CsaError, Inpainter, ModelConfig, build_generator, save_generator
from csa import inference, methods
from csa.imageio import apply_orientation, read_image_array
from csa.inference import InpaintWarning
from csa.pipeline import crop_boxes

RNG = np.random.default_rng(0)


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_thread):
    """Every test here runs on one thread (see conftest)."""


@pytest.fixture(scope="module")
def weights(tiny_model_file):
    return tiny_model_file


@pytest.fixture(scope="module")
def inpainter(weights):
    return Inpainter.from_pretrained(weights)


def photo(h: int, w: int, c: int = 3, dtype=np.uint8) -> np.ndarray:
    top = np.iinfo(dtype).max
    arr = RNG.integers(0, top + 1, size=(h, w, c), dtype=np.int64).astype(dtype)
    return arr[:, :, 0] if c == 1 else arr


def box_hole(h: int, w: int, frac: float = 0.3) -> np.ndarray:
    hole = np.zeros((h, w), dtype=bool)
    hh, ww = max(1, int(h * frac)), max(1, int(w * frac))
    hole[h // 2 - hh // 2: h // 2 - hh // 2 + hh, w // 2 - ww // 2: w // 2 - ww // 2 + ww] = True
    return hole


def assert_inpainted(out: np.ndarray, image: np.ndarray, hole: np.ndarray) -> None:
    """Same shape and dtype, every known pixel exact, the hole actually written."""
    assert out.shape == image.shape and out.dtype == image.dtype
    assert np.array_equal(out[~hole], image[~hole])
    assert (out[hole] != image[hole]).any()


# --- strategies -----------------------------------------------------------------------------


@pytest.mark.parametrize("strategy", ["resize", "crop", "native"])
def test_each_strategy_keeps_known_pixels_exact(inpainter, strategy):
    image, hole = photo(200, 300), box_hole(200, 300)
    image[hole] = 255  # what the user painted over: must not matter
    out = inpainter.inpaint_array(image, hole, strategy=strategy)
    assert_inpainted(out, image, hole)


def test_model_sized_input_is_the_generators_own_composite(inpainter):
    """At 256x256 nothing is resampled: the result is the generator's composite, quantised."""
    image, hole = photo(256, 256), box_hole(256, 256)
    out = inpainter.inpaint_array(image, hole)
    x = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 127.5 - 1.0
    with torch.inference_mode():
        composite = inpainter.model(x, torch.from_numpy(hole)[None, None].float()).composite
    expected = np.rint((composite[0].permute(1, 2, 0).numpy() + 1.0) * 127.5).clip(0, 255).astype(np.uint8)
    assert np.abs(out.astype(int) - expected).max() <= 1  # float rounding only


def test_default_strategy_depends_on_size(inpainter):
    assert inpainter.resolve_strategy(None, 256, 200) == "resize"
    assert inpainter.resolve_strategy(None, 257, 100) == "crop"
    assert inpainter.resolve_strategy("NATIVE", 4000, 4000) == "native"
    with pytest.raises(CsaError, match="unknown strategy"):
        inpainter.resolve_strategy("tile", 10, 10)


def test_crop_boxes_one_per_region_and_merged_when_close():
    hole = np.zeros((2000, 2000), dtype=bool)
    hole[100:140, 100:150] = True
    hole[1700:1750, 1800:1900] = True
    boxes = crop_boxes(hole, 256)
    assert len(boxes) == 2
    for top, left, bottom, right in boxes:
        assert bottom - top == right - left == 256
    assert sum(hole[t:b, l:r].sum() for t, l, b, r in boxes) == hole.sum()  # every hole pixel, once
    hole[150:160, 160:170] = True  # close to the first region: same crop
    assert len(crop_boxes(hole, 256)) == 2
    big = np.zeros((2000, 2000), dtype=bool)
    big[500:1000, 600:900] = True  # 500 px high: the crop is 1000 px, clipped to the image
    (box,) = crop_boxes(big, 256)
    assert box[2] - box[0] == 1000 and box[0] <= 500 and box[2] >= 1000


def test_crop_runs_the_model_once_per_region(inpainter, monkeypatch):
    calls = []
    run = inpainter.method.forward
    monkeypatch.setattr(inpainter.method, "forward", lambda *a: calls.append(a[0].shape) or run(*a))
    image = photo(700, 900)
    hole = np.zeros((700, 900), dtype=bool)
    hole[20:60, 30:80] = True
    hole[600:650, 800:880] = True
    out = inpainter.inpaint_array(image, hole, strategy="crop")
    assert_inpainted(out, image, hole)
    assert calls == [(1, 3, 256, 256)] * 2


def test_native_has_its_own_pixel_cap(weights):
    small_cap = Inpainter.from_pretrained(weights, native_max_pixels=256 * 256)
    image, hole = photo(200, 300), box_hole(200, 300)
    with pytest.raises(CsaError, match="native.*crop"):
        small_cap.inpaint_array(image, hole, strategy="native")
    assert small_cap.model_info()["native_max_pixels"] == 256 * 256


# --- input kinds -------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".png", ".jpg", ".webp", ".bmp", ".tif"])
def test_file_formats(inpainter, tmp_path, suffix):
    path = tmp_path / f"photo{suffix}"
    Image.fromarray(photo(64, 80)).save(path)
    decoded = np.asarray(Image.open(path).convert("RGB"))
    hole = box_hole(64, 80)
    result = inpainter(path, hole)
    assert isinstance(result, Image.Image) and result.mode == "RGB" and result.size == (80, 64)
    assert_inpainted(np.asarray(result), decoded, hole)


def test_arrays_pil_bytes_and_paths_agree(inpainter, tmp_path):
    image, hole = photo(60, 70), box_hole(60, 70)
    Image.fromarray(image).save(tmp_path / "a.png")
    Image.fromarray(hole.astype(np.uint8) * 255).save(tmp_path / "m.png")
    reference = np.asarray(inpainter(image, hole))
    assert_inpainted(reference, image, hole)
    for img_src, mask_src in [
        (str(tmp_path / "a.png"), hole.astype(np.uint8)),  # a path and a 0/1 mask
        (Image.fromarray(image), (tmp_path / "m.png").read_bytes()),  # PIL and bytes
        (image.astype(np.float32) / 255.0, hole.astype(np.uint8) * 255),  # float in [0, 1] and 0-255
    ]:
        assert np.array_equal(np.asarray(inpainter(img_src, mask_src)), reference)


def test_grey_in_grey_out(inpainter):
    image, hole = photo(50, 60, 1), box_hole(50, 60)
    result = inpainter(Image.fromarray(image), hole)
    assert result.mode == "L"
    assert_inpainted(np.asarray(result), image, hole)


def test_rgba_keeps_alpha_exactly(inpainter):
    image, hole = photo(50, 60, 4), box_hole(50, 60)
    result = inpainter(image, hole)
    assert result.mode == "RGBA"
    out = np.asarray(result)
    assert np.array_equal(out[:, :, 3], image[:, :, 3])  # the hole's alpha too
    assert_inpainted(out[:, :, :3], image[:, :, :3], hole)


def test_grey_alpha(inpainter):
    image, hole = photo(40, 50, 2), box_hole(40, 50)
    result = inpainter(image, hole)
    assert result.mode == "LA"
    out = np.asarray(result)
    assert np.array_equal(out[:, :, 1], image[:, :, 1])
    assert_inpainted(out[:, :, :1], image[:, :, :1], hole)


def test_16bit_grey_png(inpainter, tmp_path):
    image, hole = photo(50, 60, 1, np.uint16), box_hole(50, 60)
    Image.fromarray(image).save(tmp_path / "g16.png")
    out = inpainter.inpaint_array(tmp_path / "g16.png", hole)
    assert_inpainted(out, image, hole)
    assert inference.to_pil(out).mode == "I;16"


def test_16bit_colour_png(inpainter, tmp_path):
    cv2 = pytest.importorskip("cv2")
    image, hole = photo(50, 60, 3, np.uint16), box_hole(50, 60)
    cv2.imwrite(str(tmp_path / "c16.png"), image[:, :, ::-1])
    out = inpainter.inpaint_array(tmp_path / "c16.png", hole)
    assert_inpainted(out, image, hole)
    assert (out[hole] % 257 != 0).any()  # real 16-bit values in the hole, not scaled 8-bit ones
    with pytest.warns(InpaintWarning, match="16-bit"):
        pil = inpainter(tmp_path / "c16.png", hole)
    assert pil.mode == "RGB"


def test_exif_orientation_applied_to_image_and_mask(inpainter, tmp_path):
    stored = photo(40, 64)  # stored 64 wide, 40 high; orientation 6 shows it 40 wide, 64 high
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(stored).save(tmp_path / "rot.png", exif=exif)
    shown = np.asarray(ImageOps.exif_transpose(Image.open(tmp_path / "rot.png")))
    assert shown.shape == (64, 40, 3)
    hole = box_hole(64, 40)
    out = np.asarray(inpainter(tmp_path / "rot.png", hole))
    assert_inpainted(out, shown, hole)
    # a mask stored with the same orientation tag lines up the same way
    stored_mask = np.rot90(hole, 1).astype(np.uint8) * 255
    Image.fromarray(np.ascontiguousarray(stored_mask)).save(tmp_path / "mask.png", exif=exif)
    assert np.array_equal(np.asarray(inpainter(tmp_path / "rot.png", tmp_path / "mask.png")), out)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_array_orientation_matches_pillow(orientation, tmp_path):
    exif = Image.Exif()
    exif[0x0112] = orientation
    arr = photo(5, 7)
    Image.fromarray(arr).save(tmp_path / "o.png", exif=exif)
    expected = np.asarray(ImageOps.exif_transpose(Image.open(tmp_path / "o.png")))
    assert np.array_equal(apply_orientation(arr, orientation), expected)
    assert np.array_equal(read_image_array(tmp_path / "o.png"), expected)


# --- masks ----------------------------------------------------------------------------------


def test_empty_mask_warns_and_returns_the_image_unchanged(inpainter):
    image = photo(30, 40)
    with pytest.warns(InpaintWarning, match="no hole"):
        out = inpainter(image, np.zeros((30, 40), dtype=bool))
    assert np.array_equal(np.asarray(out), image)


def test_full_mask_is_refused(inpainter):
    with pytest.raises(CsaError, match="whole image"):
        inpainter(photo(30, 40), np.ones((30, 40), dtype=bool))


def test_mask_leaving_no_known_feature_position_is_refused(inpainter):
    hole = np.ones((256, 256), dtype=bool)
    hole[:3, :3] = False  # a few known pixels, but none at 1/8 resolution
    with pytest.raises(CsaError, match="no known area"):
        inpainter(photo(256, 256), hole)


def test_mask_size_must_match_unless_resize_mask(inpainter):
    image = photo(60, 80)
    small = box_hole(30, 40)
    with pytest.raises(CsaError, match="40x30.*80x60.*resize_mask=True") as err:
        inpainter(image, small)
    # each interface names the option its own way
    assert "--resize-mask" in err.value.render("cli")
    assert "the form field resize_mask=true" in err.value.render("api")
    out = np.asarray(inpainter(image, small, resize_mask=True))
    hole = np.asarray(Image.fromarray(small.astype(np.uint8) * 255).resize((80, 60), Image.Resampling.BILINEAR)) >= 128
    assert_inpainted(out, image, hole)


def test_invert(inpainter):
    image, keep = photo(60, 70), box_hole(60, 70, 0.6)
    out = np.asarray(inpainter(image, keep, invert=True))
    assert_inpainted(out, image, ~keep)


def test_mask_from_the_images_own_alpha(inpainter):
    image, hole = photo(50, 60, 4), box_hole(50, 60)
    image[:, :, 3] = 255
    image[hole, 3] = 0  # the user erased the hole
    with pytest.raises(CsaError, match="no mask"):
        inpainter(image)
    out = np.asarray(inpainter(image, mask_from_alpha=True))
    assert np.array_equal(out[~hole], image[~hole])
    assert (out[hole, 3] == 255).all()  # filled pixels are shown
    assert (out[hole, :3] != image[hole, :3]).any()


# --- the object ------------------------------------------------------------------------------


def test_batch(inpainter):
    images = [photo(40, 50), photo(40, 50)]
    hole = box_hole(40, 50)
    results = inpainter.batch(images, hole)  # one mask for all
    assert len(results) == 2
    for img, res in zip(images, results):
        assert_inpainted(np.asarray(res), img, hole)
    with pytest.raises(CsaError, match="2 images but 1 masks"):
        inpainter.batch(images, [hole])


def test_deterministic_and_thread_safe(inpainter):
    image, hole = photo(64, 64), box_hole(64, 64)
    expected = np.asarray(inpainter(image, hole))
    results, errors = [], []

    def work():
        try:
            results.append(np.asarray(inpainter(image, hole)))
        except Exception as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(results) == 2
    assert all(np.array_equal(r, expected) for r in results)


def test_model_info(inpainter, weights):
    info = inpainter.model_info()
    assert info["name"] == "tiny"
    assert info["file_size"] == weights.stat().st_size
    assert info["parameters"] == sum(p.numel() for p in inpainter.model.parameters()) > 0
    assert info["config"]["rough_ngf"] == 4 and info["image_size"] == 256
    assert info["strategies"] == ["resize", "crop", "native"]


def test_default_weights(monkeypatch, tmp_path):
    monkeypatch.setattr(methods, "DEFAULT_WEIGHTS", tmp_path / "absent.safetensors")
    with pytest.raises(CsaError, match="no default model is bundled.*--weights"):
        Inpainter.from_pretrained()
    monkeypatch.setattr(methods, "DEFAULT_WEIGHTS", tmp_path / "default.safetensors")
    save_generator(build_generator(ModelConfig(rough_ngf=4, refine_ngf=4)), tmp_path / "default.safetensors")
    assert inference.default_weights_path() == tmp_path / "default.safetensors"
    assert Inpainter.from_pretrained().name == "default"


def test_baseline_method(tmp_path):
    telea = Inpainter.from_method("telea")
    image, hole = photo(40, 50, 1), box_hole(40, 50)
    out = np.asarray(telea(image, hole))
    assert out.ndim == 2  # grey in, grey out for baselines too
    assert_inpainted(out, image, hole)
    assert telea.model_info()["method"] == "telea"
    with pytest.raises(CsaError, match="unknown method"):
        Inpainter.from_method("deepfill")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message when CUDA is absent")
def test_cuda_missing_is_a_clear_error(weights):
    with pytest.raises(CsaError, match="CUDA is not available"):
        Inpainter.from_pretrained(weights, device="cuda")


def test_import_csa_stays_light():
    code = ("import sys, csa; assert 'torch' not in sys.modules, 'torch imported'; "
            "assert {'Inpainter', 'load_generator', 'build_generator', 'ModelConfig', 'CsaError'} <= set(dir(csa)); "
            "print(csa.__version__)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip()


def test_architecture_names_are_the_generator_functions():
    import csa

    with pytest.warns(DeprecationWarning):
        assert csa.load_model is csa.load_generator and csa.build_model is csa.build_generator
    assert {"load_model", "build_model"} <= set(csa.__all__)


@pytest.mark.parametrize("old, kept", [("load_model", "load_generator"), ("build_model", "build_generator")])
def test_deprecated_alias_warns_naming_the_kept_name_and_returns_the_same_function(old, kept):
    import csa

    with pytest.warns(DeprecationWarning, match=f"csa.{kept}"):
        alias = getattr(csa, old)
    assert alias is getattr(csa, kept)
    with pytest.warns(DeprecationWarning):  # every use warns, not only the first
        getattr(csa, old)


def test_crop_boxes_without_scipy_is_one_crop_around_all(monkeypatch):
    monkeypatch.setitem(sys.modules, "scipy", None)  # import fails
    hole = np.zeros((1000, 1000), dtype=bool)
    hole[100:120, 100:130] = True
    hole[800:820, 850:900] = True
    (box,) = crop_boxes(hole, 256)
    assert box[0] <= 100 and box[1] <= 100 and box[2] >= 820 and box[3] >= 900
