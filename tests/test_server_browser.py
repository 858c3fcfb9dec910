"""End to end in a real browser: Debian's chromium, driven by Playwright, against ``csa serve``.

- A photo: zoom (keys, wheel about the pointer), pan (space + drag, middle button), paint
  at 400 % in image pixels, PatchMatch as round one, the model as round two, hold ``\\``
  for the original, undo twice back to the original image and its mask, redo; results
  change inside the strokes and are bit-exact everywhere else; pointer moves redraw at
  most the viewport.
- Cancel: the page's request waits behind another client's on a slow stand-in method;
  Cancel returns the page to where it was and the server never runs the request.
- A 12 MP JPEG: fit, zoom to 400 %, paint; the mask the page would send has the stroke at
  the right image pixels; painting redraws only what the stroke touched.
- A mask file (black = hole), the eraser, a wrong-size mask file.

Screenshots are saved in the tests' tmp folders; CSA_UPDATE_SCREENSHOT=1 copies the page
after two rounds to docs/serve-screenshot.png and the 400 % view to docs/serve-zoom.png.
Needs ``apt-get install chromium`` (``make test`` does it) and the pip package
``playwright`` (its own browser download is never used). Developers without them can set
CSA_SKIP_BROWSER=1; otherwise a missing browser fails the test, so CI cannot skip silently.
"""
from __future__ import annotations

import base64
import io
import os
import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

CHROMIUM = os.environ.get("CSA_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
REPO = Path(__file__).resolve().parents[1]
VIEWPORT = {"width": 1100, "height": 820}
UPDATE_DOCS = os.environ.get("CSA_UPDATE_SCREENSHOT") == "1"


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
    """A real photo (scikit-image's cat), 384 x 256, so the screenshots show something sensible."""
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


class SlowStandIn:
    """A method that sleeps and hands the image back, counting its calls (the queue is what
    the cancel test checks; a real method would only make it slower)."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.calls = self.active = 0
        self.lock = threading.Lock()

    def inpaint_inputs(self, inputs, strategy=None):
        with self.lock:
            self.calls += 1
            self.active += 1
        try:
            time.sleep(self.delay)
            return inputs.image.copy()
        finally:
            with self.lock:
                self.active -= 1


@pytest.fixture(scope="module")
def slow() -> SlowStandIn:
    return SlowStandIn(delay=1.5)


@pytest.fixture(scope="module")
def server(tmp_path_factory, slow):
    from csa.checkpoints import save_generator
    from csa.config import ModelConfig
    from csa.inference import Inpainter
    from csa.nn.generator import build_generator
    from csa.server import create_app
    from csa.server.background import BackgroundServer
    from csa.server.methods import FULL_RESOLUTION, Method

    weights = os.environ.get("CSA_SERVE_WEIGHTS")  # a trained model makes a nicer screenshot
    if not weights:
        weights = tmp_path_factory.mktemp("model") / "tiny.safetensors"
        save_generator(build_generator(ModelConfig(rough_ngf=4, refine_ngf=4)), weights)
    extra = {"slow": Method("slow", "a stand-in that sleeps (tests only)", FULL_RESOLUTION, "native", slow)}
    with BackgroundServer(create_app(Inpainter.from_pretrained(weights), methods=extra)) as url:
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
    """A fresh page on the app; fails the test on any console error of the page, and on the
    warning Chromium prints for canvases read back without willReadFrequently."""
    context = browser.new_context(viewport=VIEWPORT)
    pg = context.new_page()
    problems: list[str] = []
    pg.on("console", lambda m: problems.append(m.text)
          if m.type == "error" or "willReadFrequently" in m.text else None)
    pg.on("pageerror", lambda e: problems.append(str(e)))
    pg.goto(server + "/")
    pg.wait_for_function("document.querySelector('#model-name').textContent.startsWith('model:')")
    pg.wait_for_function("document.querySelector('#method').options.length > 1")
    yield pg
    context.close()
    assert not problems, problems


# --- helpers ----------------------------------------------------------------------------


def b64_of_blob(page, expression: str) -> bytes:
    """Bytes of the Blob the page expression resolves to."""
    b64 = page.evaluate("""async (expr) => {
        const blob = await (0, eval)(expr);
        const bytes = new Uint8Array(await blob.arrayBuffer());
        let s = '';
        for (let i = 0; i < bytes.length; i += 0x8000) s += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000));
        return btoa(s);
    }""", expression)
    return base64.b64decode(b64)


def result_of(page) -> np.ndarray:
    """The image behind the page's download link."""
    data = b64_of_blob(page, "fetch(document.querySelector('#download').href).then(r => r.blob())")
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def hole_of(page) -> np.ndarray:
    """The mask the page would send, as a bool array (the server's rule: a channel >= 128)."""
    data = b64_of_blob(page, "csaPage.maskPng()")
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB")).max(axis=2) >= 128


def view(page) -> dict:
    v = page.evaluate("csaPage.view()")
    box = page.locator("#view").bounding_box()
    return {**v, "left": box["x"], "top": box["y"]}


def to_screen(v: dict, ix: float, iy: float) -> tuple[int, int]:
    """Whole CSS pixels, so the page and the test agree on where the pointer was."""
    return round(v["left"] + v["x"] + ix * v["zoom"]), round(v["top"] + v["y"] + iy * v["zoom"])


def to_image(v: dict, sx: float, sy: float) -> np.ndarray:
    return np.array([(sx - v["left"] - v["x"]) / v["zoom"], (sy - v["top"] - v["y"]) / v["zoom"]])


def stroke(page, a: tuple[float, float], b: tuple[float, float], steps: int = 12) -> tuple[np.ndarray, np.ndarray]:
    """Drag from image point a to b; returns the two ends in image pixels as the page sees them."""
    v = view(page)
    (x0, y0), (x1, y1) = to_screen(v, *a), to_screen(v, *b)
    for x, y in ((x0, y0), (x1, y1)):
        assert v["left"] <= x < v["left"] + v["w"] and v["top"] <= y < v["top"] + v["h"], "stroke out of view"
    page.mouse.move(x0, y0)
    page.mouse.down()
    page.mouse.move(x1, y1, steps=steps)
    page.mouse.up()
    return to_image(v, x0, y0), to_image(v, x1, y1)


def brush(page) -> int:
    return int(page.input_value("#brush-size"))


def set_brush(page, size: int) -> None:
    page.eval_on_selector("#brush-size", "(e, v) => { e.value = v; e.dispatchEvent(new Event('input')); }", str(size))
    assert brush(page) == size


def check_stroke_mask(hole: np.ndarray, ends, width: float, slack: float) -> None:
    """``hole`` is the stroke(s) of ``width`` along ``ends`` (one (a, b) pair or a list), to ``slack`` pixels."""
    d = np.min([segment_distance(hole.shape, *pair) for pair in (ends if isinstance(ends, list) else [ends])], axis=0)
    assert hole[d <= width / 2 - slack].all(), "the stroke's core must be hole"
    assert not hole[d > width / 2 + slack].any(), "nothing beyond the stroke's rim may be hole"


def inpaint_and_wait(page, rounds: int) -> np.ndarray:
    page.click("#inpaint")
    page.wait_for_function(f"csaPage.history().rounds === {rounds}", timeout=60_000)
    page.wait_for_selector("body[data-state=done]")
    return result_of(page)


def frames_since(page, n: int) -> list[dict]:
    return page.evaluate("csaPage.frames()")[n:] if n >= 0 else []


def frame_count(page) -> int:
    page.evaluate("new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)))")  # let pending frames run
    return len(page.evaluate("csaPage.frames()"))


# --- tests -------------------------------------------------------------------------------


def test_zoom_paint_two_rounds_undo_in_chromium(page, tmp_path):
    photo = sample_photo()
    h, w = photo.shape[:2]
    Image.fromarray(photo).save(tmp_path / "cat.png")
    page.set_input_files("#image-input", str(tmp_path / "cat.png"))
    page.wait_for_selector("body[data-state=ready]")

    # an error message clears when the user acts
    page.click("#inpaint")
    page.wait_for_selector("#status.error")
    assert "paint over" in page.inner_text("#status")

    v = view(page)
    assert v["zoom"] == pytest.approx(min((v["w"] - 16) / w, (v["h"] - 16) / h, 4))

    # wheel zoom keeps the image point under the pointer in place
    sx, sy = to_screen(v, 100, 60)
    under = to_image(v, sx, sy)
    page.mouse.move(sx, sy)
    page.mouse.wheel(0, -240)
    page.wait_for_function(f"csaPage.view().zoom > {v['zoom'] * 1.2}")
    assert not page.is_visible("#status.error"), "the error clears when the user acts"
    v2 = view(page)
    np.testing.assert_allclose(to_image(v2, sx, sy), under, atol=1.0 / v2["zoom"] + 1e-6)

    # keys: 1 is 100 %, + steps through powers of sqrt(2): four steps are 400 %
    page.keyboard.press("1")
    assert view(page)["zoom"] == 1
    for _ in range(4):
        page.keyboard.press("+")
    v4 = view(page)
    assert v4["zoom"] == pytest.approx(4.0)
    assert page.inner_text("#zoom-value") == "400%"

    # pan: space + drag brings the whiskers above the right eye to the middle of the view
    whisker = (280, 40)
    shift = (round(v4["w"] / 2 - v4["x"] - 4 * whisker[0]), round(v4["h"] / 2 - v4["y"] - 4 * whisker[1]))
    grab = (round(v4["left"] + v4["w"] / 2 - shift[0] / 2), round(v4["top"] + v4["h"] / 2 - shift[1] / 2))
    page.mouse.move(*grab)
    page.keyboard.down("Space")
    page.mouse.down()
    page.mouse.move(grab[0] + shift[0], grab[1] + shift[1], steps=6)
    page.mouse.up()
    page.keyboard.up("Space")
    v5 = view(page)
    assert (v5["x"] - v4["x"], v5["y"] - v4["y"]) == pytest.approx(shift, abs=1)
    # and the middle button: there and back
    page.mouse.move(*to_screen(v5, 250, 60))
    page.mouse.down(button="middle")
    page.mouse.move(*to_screen(v5, 240, 55), steps=3)
    page.mouse.up(button="middle")
    assert (view(page)["x"] - v5["x"], view(page)["y"] - v5["y"]) == pytest.approx((-40, -20), abs=1)
    page.mouse.down(button="middle")
    page.mouse.move(*to_screen(v5, 250, 60), steps=3)
    page.mouse.up(button="middle")
    v6 = view(page)
    assert (v6["x"], v6["y"]) == pytest.approx((v5["x"], v5["y"]), abs=1)
    assert page.evaluate("csaPage.holePixels()") == 0, "panning paints nothing"

    # paint a whisker at 400 %: brush size in image pixels, outline at its real size on screen
    set_brush(page, 4)
    page.keyboard.press("]")
    size = brush(page)
    assert size == 6
    start = frame_count(page)
    kept_a = stroke(page, (261, 55), (283, 22), steps=10)
    kept_a2 = stroke(page, (283, 22), (296, 0), steps=6)
    page.mouse.move(*to_screen(v6, 300, 40))  # hover: the outline moves, no canvas is drawn
    outline = page.locator("#brush-cursor").bounding_box()
    assert outline["width"] == pytest.approx(size * 4, abs=0.5)
    painted = frames_since(page, start)
    assert painted and all(not f["full"] and f["area"] < 0.5 * v6["w"] * v6["h"] for f in painted)
    hover_start = frame_count(page)
    page.mouse.move(*to_screen(v6, 310, 50), steps=5)
    assert frame_count(page) == hover_start, "a pointer move without painting draws no canvas"
    hole_a = hole_of(page)
    check_stroke_mask(hole_a, [kept_a, kept_a2], size, slack=1.0)
    zoom_shot = tmp_path / "serve-zoom.png"
    page.screenshot(path=str(zoom_shot))

    # round one: PatchMatch, which runs at full resolution only
    page.keyboard.press("0")
    assert view(page)["zoom"] == pytest.approx(v["zoom"])
    page.select_option("#method", "patchmatch")
    assert page.is_disabled("#strategy") and "native" in page.inner_text("#strategy")
    assert "PatchMatch" in page.inner_text("#method-note")
    round1 = inpaint_and_wait(page, 1)
    assert page.get_attribute("#download", "download") == "cat-inpainted.png"
    d_a = np.minimum(segment_distance((h, w), *kept_a), segment_distance((h, w), *kept_a2))
    changed = (round1 != photo).any(axis=2)
    assert changed[d_a <= size / 2 - 1].mean() > 0.8
    assert not changed[d_a > size / 2 + 2].any(), "outside the stroke the result equals the input"

    # round two: the model, on the first result, across the right eye
    set_brush(page, 24)
    kept_b = stroke(page, (232, 146), (300, 118))
    page.select_option("#method", "csa")
    assert page.is_enabled("#strategy") and "crop" in page.inner_text("#strategy")
    round2 = inpaint_and_wait(page, 2)
    assert page.get_attribute("#download", "download") == "cat-inpainted.png"
    d_b = segment_distance((h, w), *kept_b)
    changed = (round2 != round1).any(axis=2)
    assert changed[d_b <= 24 / 2 - 1].mean() > 0.9
    assert not changed[d_b > 24 / 2 + 2].any(), "round two keeps round one's pixels outside its stroke"
    page.mouse.move(2, 2)  # off the stage: no brush outline in the picture
    shot = tmp_path / "serve-screenshot.png"
    page.screenshot(path=str(shot), full_page=True)

    # hold \ to see the original
    page.keyboard.down("Backslash")
    page.wait_for_selector("body[data-showing=original]")
    assert page.is_visible("#label-original")
    page.keyboard.up("Backslash")
    page.wait_for_selector("body[data-showing=current]")

    # undo twice: back to round one with round two's mask, then to the original with round one's
    page.keyboard.press("Control+z")
    assert page.evaluate("csaPage.history().rounds") == 1
    np.testing.assert_array_equal(result_of(page), round1)
    check_stroke_mask(hole_of(page), kept_b, 24, slack=1.0)
    page.keyboard.press("Control+z")
    assert page.evaluate("csaPage.history()")["rounds"] == 0
    assert page.is_hidden("#result-bar")
    np.testing.assert_array_equal(hole_of(page), hole_a)
    page.keyboard.press("Control+Shift+z")
    page.keyboard.press("Control+Shift+z")
    assert page.evaluate("csaPage.history().rounds") == 2
    np.testing.assert_array_equal(result_of(page), round2)
    assert page.evaluate("csaPage.holePixels()") == 0  # a new round starts with an empty mask

    assert shot.stat().st_size > 10_000 and zoom_shot.stat().st_size > 10_000
    if UPDATE_DOCS:
        (REPO / "docs").mkdir(exist_ok=True)
        shutil.copyfile(shot, REPO / "docs" / "serve-screenshot.png")
        shutil.copyfile(zoom_shot, REPO / "docs" / "serve-zoom.png")


def test_cancel_a_queued_request_in_chromium(page, server, slow, tmp_path):
    photo = sample_photo()
    Image.fromarray(photo).save(tmp_path / "cat.png")
    page.set_input_files("#image-input", str(tmp_path / "cat.png"))
    page.wait_for_selector("body[data-state=ready]")
    stroke(page, (100, 100), (200, 120))
    page.select_option("#method", "slow")
    status_before = page.inner_text("#status")
    calls = slow.calls

    buf = io.BytesIO()
    Image.fromarray(photo).save(buf, format="PNG")
    hole = np.zeros(photo.shape[:2], np.uint8)
    hole[10:20, 10:20] = 255
    mbuf = io.BytesIO()
    Image.fromarray(hole).save(mbuf, format="PNG")
    with httpx.Client(base_url=server, timeout=30) as http, ThreadPoolExecutor(1) as pool:
        health = lambda: http.get("/api/v1/health").json()  # noqa: E731
        dropped = health()["dropped"]
        other = pool.submit(http.post, "/api/v1/inpaint", data={"method": "slow"},
                            files={"image": ("a.png", buf.getvalue(), "image/png"),
                                   "mask": ("m.png", mbuf.getvalue(), "image/png")})
        deadline = time.monotonic() + 10
        while slow.active != 1:  # another client's request is running
            assert time.monotonic() < deadline
            time.sleep(0.01)
        page.click("#inpaint")
        page.wait_for_selector("body[data-state=busy]")
        assert page.is_visible("#cancel") and page.is_hidden("#inpaint")
        while health()["queue"] < 2:  # the page's request waits behind it
            assert time.monotonic() < deadline
            time.sleep(0.01)
        page.click("#cancel")
        page.wait_for_selector("body[data-state=ready]")
        assert page.is_visible("#inpaint") and page.is_enabled("#inpaint") and page.is_hidden("#cancel")
        assert page.inner_text("#status").startswith("Cancelled")
        while health()["dropped"] < dropped + 1:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert other.result().status_code == 200
    time.sleep(0.3)  # time for a wrongly kept request to start
    assert slow.calls == calls + 1, "the cancelled request must never run"
    hist = page.evaluate("csaPage.history()")
    assert (hist["rounds"], hist["entries"]) == (0, 1), "the page is back where it was before the click"
    assert status_before in page.inner_text("#status") or page.inner_text("#status") == "Cancelled."


def test_12_megapixel_jpeg_zoom_and_paint_in_chromium(page, tmp_path):
    w, h = 4000, 3000
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    rgb = np.stack([xs / w * 255, ys / h * 255, 128 + 60 * np.sin(xs / 37.0) * np.cos(ys / 53.0)], axis=-1)
    path = tmp_path / "big.jpg"
    Image.fromarray(rgb.clip(0, 255).astype(np.uint8)).save(path, quality=90)
    assert path.stat().st_size < 32 * 2**20  # under the upload limit, unlike a PNG of a real photo this size
    page.set_input_files("#image-input", str(path))
    page.wait_for_selector("body[data-state=ready]", timeout=30_000)
    v = view(page)
    assert v["zoom"] == pytest.approx(min((v["w"] - 16) / w, (v["h"] - 16) / h))

    # wheel to zoom in about a point, then exactly 400 %
    sx, sy = to_screen(v, 2600, 1400)
    under = to_image(v, sx, sy)
    page.mouse.move(sx, sy)
    page.mouse.wheel(0, -600)
    page.wait_for_function(f"csaPage.view().zoom > {v['zoom'] * 2}")
    v2 = view(page)
    np.testing.assert_allclose(to_image(v2, sx, sy), under, atol=1.0 / v2["zoom"] + 1e-6)
    # the buttons: 100 %, four steps in, one out and in again
    page.click("#zoom-1")
    assert view(page)["zoom"] == 1 and page.inner_text("#zoom-value") == "100%"
    for _ in range(4):
        page.click("#zoom-in")
    page.click("#zoom-out")
    assert view(page)["zoom"] == pytest.approx(2 ** 1.5)
    page.click("#zoom-in")
    v4 = view(page)
    assert v4["zoom"] == pytest.approx(4.0)
    cx, cy = to_image(v4, v4["left"] + v4["w"] / 2, v4["top"] + v4["h"] / 2)

    set_brush(page, 6)
    start = frame_count(page)
    ends = stroke(page, (cx - 80, cy - 30), (cx + 70, cy + 25), steps=30)
    painted = frames_since(page, start)
    assert painted and all(not f["full"] and f["area"] < 0.2 * v4["w"] * v4["h"] for f in painted)
    hole = hole_of(page)
    assert hole.shape == (h, w)
    check_stroke_mask(hole, ends, 6, slack=1.0)
    assert 0.8 < hole.sum() / (6 * np.linalg.norm(ends[1] - ends[0])) < 1.3
    page.screenshot(path=str(tmp_path / "big-400.png"))
    page.click("#zoom-fit")
    assert view(page)["zoom"] == pytest.approx(v["zoom"])


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
    np.testing.assert_array_equal(hole_of(page), hole)
    # erase a band across the middle of the loaded hole
    page.keyboard.press("e")
    set_brush(page, 16)
    stroke(page, (180, 80), (320, 80), steps=8)

    page.keyboard.press("Control+Enter")
    page.wait_for_selector("body[data-state=done]", timeout=60_000)
    changed = (result_of(page) != photo).any(axis=2)
    band = np.zeros_like(hole)
    band[80 - 6 : 80 + 6, :] = True
    assert not changed[~hole].any(), "outside the mask file's hole nothing may change"
    assert changed[hole & ~band & (np.abs(np.arange(h) - 80)[:, None] > 10)].mean() > 0.9, "the hole is inpainted"
    assert not changed[hole & band].any(), "the erased band is not inpainted"
