"""The page's "show sources" toggle in a real browser (the fixtures of test_server_browser)."""
from __future__ import annotations

import numpy as np
from PIL import Image

from test_server_browser import browser, page, server, slow, stroke, to_screen, view  # noqa: F401


def test_show_sources_marks_the_source_of_a_hovered_filled_pixel(page, tmp_path):  # noqa: F811
    rows, cols = np.mgrid[0:192, 0:256]
    photo = np.stack([cols, rows, (cols + rows) // 2], -1).astype(np.uint8)
    Image.fromarray(photo).save(tmp_path / "ramp.png")
    page.set_input_files("#image-input", str(tmp_path / "ramp.png"))
    page.wait_for_selector("body[data-state=ready]")
    page.check("#show-sources")
    stroke(page, (100, 96), (160, 96))
    page.click("#inpaint")
    page.wait_for_function("csaPage.history().rounds === 1", timeout=60_000)
    page.wait_for_selector("body[data-state=done]")
    assert page.is_hidden("#source-to")
    v = view(page)
    page.mouse.move(*to_screen(v, 10, 10))  # a known pixel: no source shown
    assert page.is_hidden("#source-to")
    page.mouse.move(*to_screen(v, 130, 96))  # inside the filled stroke
    page.wait_for_selector("#source-to", state="visible")
    assert "came from around" in page.inner_text("#status") or "counts as known" in page.inner_text("#status")
    box = page.locator("#source-to").bounding_box()
    assert box is not None and box["width"] > 0
    page.uncheck("#show-sources")
    assert page.is_hidden("#source-to")
