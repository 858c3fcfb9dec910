"""End to end in a real browser: Debian's chromium, driven by Playwright, against ``csa serve``.

Load the page, open an image, paint two strokes, undo / redo the second with the keyboard,
press Inpaint, and check the result: changed inside the kept stroke, bit-exact everywhere
else. A screenshot of the page is saved in the test's tmp folder (and copied to
docs/serve-screenshot.png when CSA_UPDATE_SCREENSHOT=1).

Needs ``apt-get install chromium`` (``make test`` does it) and the pip package
``playwright`` (its own browser download is never used). Developers without them can set
CSA_SKIP_BROWSER=1; otherwise a missing browser fails the test, so CI cannot skip silently.
"""
from __future__ import annotations

import base64
import io
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

CHROMIUM = os.environ.get("CSA_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
REPO = Path(__file__).resolve().parents[1]


def _browser_or_fail():
    if os.environ.get("CSA_SKIP_BROWSER") == "1":
        pytest.skip("CSA_SKIP_BROWSER=1")
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} not found: install Debian's chromium (`make browser-deps`, or "
                    "`apt-get install -y chromium`), or set CSA_SKIP_BROWSER=1 to skip this test", pytrace=False)
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("the Python package `playwright` is missing: `pip install playwright` "
                    "(never `playwright install`: the test uses the system chromium)", pytrace=False)
    return sync_playwright


def sample_photo() -> np.ndarray:
    """A real photo (scikit-image's cat), 384 x 256, so the screenshot shows something sensible."""
    from skimage import data

    cat = Image.fromarray(data.chelsea()).crop((40, 0, 440, 267)).resize((384, 256), Image.LANCZOS)
    return np.asarray(cat.convert("RGB"))


def segment_distance(shape: tuple[int, int], a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Distance of every pixel centre to the segment a-b (image coordinates, x then y)."""
    ys, xs = np.mgrid[0 : shape[0], 0 : shape[1]]
    p = np.stack([xs + 0.5, ys + 0.5], axis=-1)
    ab = b - a
    t = np.clip(((p - a) @ ab) / max(float(ab @ ab), 1e-9), 0.0, 1.0)
    return np.linalg.norm(p - (a + t[..., None] * ab), axis=-1)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from csa.checkpoints import save_generator
    from csa.config import ModelConfig
    from csa.inference import Inpainter
    from csa.nn.generator import build_generator
    from csa.server import create_app
    from csa.server.background import BackgroundServer

    weights = os.environ.get("CSA_SERVE_WEIGHTS")  # a trained model makes a nicer screenshot
    if not weights:
        weights = tmp_path_factory.mktemp("model") / "tiny.safetensors"
        save_generator(build_generator(ModelConfig(rough_ngf=4, refine_ngf=4)), weights)
    with BackgroundServer(create_app(Inpainter.from_pretrained(weights))) as url:
        yield url


@pytest.fixture(scope="module")
def browser():
    sync_playwright = _browser_or_fail()
    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser, server):
    """A fresh page on the app; fails the test on any console error of the page."""
    context = browser.new_context(viewport={"width": 1100, "height": 820})
    pg = context.new_page()
    errors: list[str] = []
    pg.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    pg.on("pageerror", lambda e: errors.append(str(e)))
    pg.goto(server + "/")
    pg.wait_for_function("document.querySelector('#model-name').textContent.startsWith('model:')")
    yield pg
    context.close()
    assert not errors, errors


def result_of(page) -> np.ndarray:
    """The image behind the page's download link."""
    b64 = page.evaluate("""async () => {
        const r = await fetch(document.querySelector('#download').href);
        const bytes = new Uint8Array(await r.arrayBuffer());
        let s = ''; for (const x of bytes) s += String.fromCharCode(x);
        return btoa(s);
    }""")
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(b64))).convert("RGB"))


def test_paint_inpaint_compare_in_chromium(page, tmp_path):
    photo = sample_photo()
    h, w = photo.shape[:2]
    photo_path = tmp_path / "cat.png"
    Image.fromarray(photo).save(photo_path)

    page.set_input_files("#image-input", str(photo_path))
    page.wait_for_selector("body[data-state=ready]")
    box = page.locator("#overlay").bounding_box()
    scale = w / box["width"]  # image pixels per CSS pixel
    assert abs(box["height"] * scale - h) < 1.5

    # brush size by keyboard: ] grows it
    before = int(page.input_value("#brush-size"))
    page.keyboard.press("]")
    size_css = int(page.input_value("#brush-size"))
    assert size_css > before

    def stroke(fx0: float, fy0: float, fx1: float, fy1: float) -> tuple[np.ndarray, np.ndarray]:
        x0, y0 = box["x"] + fx0 * box["width"], box["y"] + fy0 * box["height"]
        x1, y1 = box["x"] + fx1 * box["width"], box["y"] + fy1 * box["height"]
        page.mouse.move(x0, y0)
        page.mouse.down()
        page.mouse.move(x1, y1, steps=12)
        page.mouse.up()
        to_img = lambda x, y: np.array([(x - box["x"]) * scale, (y - box["y"]) * scale])  # noqa: E731
        return to_img(x0, y0), to_img(x1, y1)

    kept = stroke(0.30, 0.35, 0.62, 0.55)
    undone = stroke(0.15, 0.85, 0.85, 0.85)
    page.keyboard.press("Control+z")  # undo the second stroke
    page.keyboard.press("Control+Shift+z")  # redo it
    page.keyboard.press("Control+z")  # and undo it again: only the first stroke is left
    assert page.is_enabled("#redo")

    page.click("#inpaint")
    page.wait_for_selector("body[data-state=done]", timeout=60_000)
    assert page.is_visible("#download")
    assert page.get_attribute("#download", "download") == "cat-inpainted.png"
    result = result_of(page)
    page.mouse.move(2, 2)  # off the canvas: no brush outline in the picture
    shot = tmp_path / "serve-screenshot.png"
    page.screenshot(path=str(shot), full_page=True)

    assert result.shape == photo.shape
    radius = size_css * scale / 2
    d_kept = segment_distance((h, w), *kept)
    d_undone = segment_distance((h, w), *undone)
    changed = (result != photo).any(axis=2)
    inside = d_kept <= 0.6 * radius
    outside = d_kept > radius + 2  # beyond the stroke and its anti-aliased rim
    assert inside.sum() > 100
    assert changed[inside].mean() > 0.9, "the result should differ from the input inside the stroke"
    assert not changed[outside].any(), "the result must equal the input outside the stroke"
    assert not changed[d_undone <= 0.6 * radius].any(), "the undone stroke must not be inpainted"
    assert shot.stat().st_size > 10_000
    if os.environ.get("CSA_UPDATE_SCREENSHOT") == "1":
        (REPO / "docs").mkdir(exist_ok=True)
        shutil.copyfile(shot, REPO / "docs" / "serve-screenshot.png")


def test_mask_file_eraser_and_server_errors_in_chromium(page, tmp_path):
    photo = sample_photo()
    h, w = photo.shape[:2]
    Image.fromarray(photo).save(tmp_path / "cat.png")
    hole = np.zeros((h, w), bool)
    hole[40:120, 200:300] = True
    Image.fromarray(np.where(hole, 0, 255).astype(np.uint8)).save(tmp_path / "black-hole.png")
    Image.fromarray(np.zeros((h + 1, w), np.uint8)).save(tmp_path / "wrong-size.png")

    page.set_input_files("#image-input", str(tmp_path / "cat.png"))
    page.wait_for_selector("body[data-state=ready]")
    page.set_input_files("#mask-input", str(tmp_path / "wrong-size.png"))
    page.wait_for_function("document.querySelector('#status').classList.contains('error')")
    assert f"{w}×{h}" in page.inner_text("#status")

    page.check("#mask-invert")  # this file marks the hole in black
    page.set_input_files("#mask-input", str(tmp_path / "black-hole.png"))
    page.wait_for_function("!document.querySelector('#status').classList.contains('error')")
    # erase a band across the middle of the loaded hole
    box = page.locator("#overlay").bounding_box()
    scale = w / box["width"]
    page.keyboard.press("e")
    y = box["y"] + 80 / scale
    page.mouse.move(box["x"] + 180 / scale, y)
    page.mouse.down()
    page.mouse.move(box["x"] + 320 / scale, y, steps=8)
    page.mouse.up()

    page.keyboard.press("Control+Enter")
    page.wait_for_selector("body[data-state=done]", timeout=60_000)
    changed = (result_of(page) != photo).any(axis=2)
    erased_half = int(page.input_value("#brush-size")) * scale / 2
    band = np.zeros_like(hole)
    band[int(80 - 0.6 * erased_half) : int(80 + 0.6 * erased_half) + 1, :] = True
    assert not changed[~hole].any(), "outside the mask file's hole nothing may change"
    assert changed[hole & ~band].mean() > 0.9, "the hole of the mask file is inpainted"
    assert not changed[hole & band].any(), "the erased band is not inpainted"
