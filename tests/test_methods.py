"""csa.methods: one registry, one abstraction; the classical methods behind the pipeline."""
from __future__ import annotations

import numpy as np
import pytest

from csa import baselines
from csa.errors import CsaError
from csa.imageio import IMAGE_SUFFIXES, array_to_8bit
from csa.inference import Inpainter
from csa.inputs import InpaintOptions
from csa.methods import CLASSICAL, MODEL_ID, REGISTRY, ClassicalMethod, find, lookup

RNG = np.random.default_rng(3)


def _hole(h: int, w: int) -> np.ndarray:
    hole = np.zeros((h, w), bool)
    hole[h // 4: h // 2, w // 3: 2 * w // 3] = True
    hole[h - 6: h - 3, 2: w - 2] = True  # a thin stroke too
    return hole


def test_the_registry_has_the_model_first_then_every_baseline():
    assert list(REGISTRY) == [MODEL_ID, *baselines.BASELINES]
    assert list(CLASSICAL) == list(baselines.BASELINES)
    model = REGISTRY[MODEL_ID]
    assert model.explains and ".safetensors" in model.loads and model.installed()
    for entry in CLASSICAL.values():
        assert not entry.explains and entry.loads == () and len(entry.description) > 20
    with pytest.raises(CsaError, match="unknown method 'deepfill': choose csa or one of telea"):
        find("deepfill")


@pytest.mark.parametrize("name", ["telea", "ns", "smooth"])
@pytest.mark.parametrize("channels", [3, 1, 4])
def test_a_classical_method_at_full_resolution_equals_its_function(name, channels):
    """The pipeline gives the function exactly the 8-bit input and pastes exactly its output."""
    image = RNG.integers(0, 256, (45, 70, channels), dtype=np.uint8)
    hole = _hole(45, 70)
    out = Inpainter.from_method(name).inpaint_array(image, hole)
    colour = image[:, :, :3] if channels >= 3 else np.repeat(image[:, :, :1], 3, axis=2)
    direct = baselines.BASELINES[name](colour, hole)
    if channels >= 3:
        assert np.array_equal(out[:, :, :3], direct)
        assert np.array_equal(out[:, :, 3:], image[:, :, 3:])  # alpha untouched
    else:  # grey: the luma of the fill in the hole
        assert np.array_equal(out[~hole], image[:, :, 0][~hole])


def test_a_classical_method_sees_the_8bit_values_of_a_16bit_image():
    image = RNG.integers(0, 65536, (40, 52, 3), dtype=np.uint16)
    hole = _hole(40, 52)
    out = Inpainter.from_method("telea").inpaint_array(image, hole)
    expected = baselines.telea(array_to_8bit(image), hole).astype(np.uint32) * 257  # 8 -> 16 bits exactly
    assert np.array_equal(out[hole], expected[hole]) and np.array_equal(out[~hole], image[~hole])


def test_the_float64_canvas_quantises_back_to_array_to_8bit_for_every_16bit_value():
    values = np.arange(65536, dtype=np.uint16)
    back = np.clip(np.rint((values.astype(np.float64) / 65535.0) * 255.0), 0, 255).astype(np.uint8)
    assert np.array_equal(back, array_to_8bit(values))


def test_classical_methods_default_to_native_and_take_crop_and_resize_on_request():
    telea = Inpainter.from_method("telea")
    assert telea.resolve_strategy(None, 4000, 3000) == "native"
    image = RNG.integers(0, 256, (300, 500, 3), dtype=np.uint8)
    hole = _hole(300, 500)
    full = telea.inpaint_array(image, hole)
    for strategy in ("crop", "resize"):
        out = telea.inpaint_array(image, hole, strategy=strategy)
        assert np.array_equal(out[~hole], image[~hole])
        assert (out[hole] != image[hole]).any() and not np.array_equal(out, full)
    info = telea.model_info()
    assert info["strategies"] == ["resize", "crop", "native"] and info["default_strategy"].startswith("native")
    assert info["native_max_pixels"] is None


def test_weights_with_a_classical_method_warn():
    from csa.inference import InpaintWarning

    with pytest.warns(InpaintWarning, match="--weights is ignored by --method ns"):
        method = lookup("ns", "model.safetensors")
    assert isinstance(method, ClassicalMethod) and method.fill is baselines.ns


def test_options_object_and_keywords_are_the_same_call():
    telea = Inpainter.from_method("telea")
    image = RNG.integers(0, 256, (30, 40, 3), dtype=np.uint8)
    hole = _hole(30, 40)
    inverted = (~hole).astype(np.uint8) * 255
    a = telea.inpaint_array(image, inverted, InpaintOptions(invert=True))
    b = telea.inpaint_array(image, inverted, invert=True)
    assert np.array_equal(a, b)
    assert InpaintOptions.of(InpaintOptions(invert=True), strategy="crop") == InpaintOptions(True, False, False, "crop")
    with pytest.raises(TypeError, match="'inverted'"):
        telea.inpaint_array(image, inverted, inverted=True)


def test_one_image_listing_for_every_folder(tmp_path):
    from PIL import Image

    from csa.data import list_images
    from csa.masks import MASK_SUFFIXES

    assert MASK_SUFFIXES == IMAGE_SUFFIXES and ".tif" in IMAGE_SUFFIXES
    for name in ("a.tif", "b.PNG", ".hidden.png", "sub/c.jpg"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        Image.new("RGB", (4, 4)).save(tmp_path / name, format="TIFF" if name.endswith("tif") else "PNG")
    (tmp_path / "notes.txt").write_text("x")
    assert [p.relative_to(tmp_path).as_posix() for p in list_images(tmp_path)] == ["a.tif", "b.PNG", "sub/c.jpg"]
    assert [p.name for p in list_images(tmp_path, recursive=False)] == ["a.tif", "b.PNG"]
    empty = tmp_path / "empty"
    empty.mkdir()
    assert list_images(empty, allow_empty=True) == []


def test_the_two_default_weights_paths_have_distinct_names():
    from csa import inference, methods, weights
    from csa.nn import vgg

    assert not hasattr(vgg, "default_weights_path")  # the VGG16 file: csa.weights.vgg16_source()
    assert callable(weights.vgg16_source)
    assert inference.default_weights_path is methods.bundled_model_path
