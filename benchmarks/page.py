"""Frame times of the ``csa serve`` page while painting at 400 % on a 4000x3000 photo.

Serves the app on 127.0.0.1 (a tiny random-init model: nothing is inpainted here), opens
the page in Debian's chromium (headless, software rendering, through Playwright), loads a
4000x3000 JPEG, zooms to 400 % and drags the brush across the view. For every animation
frame with pointer input it measures:

- script: what the page's own code spent on that frame's pointer events (painting the
  mask at full resolution) and its redraw (``window.csaPage.frames()``);
- frame: main-thread time from the frame's first pointer event to the end of its
  rendering (a message posted from a requestAnimationFrame callback runs after style,
  layout, paint and the canvas flush): the script plus the browser's rasterisation;
- interval: time between such frames (16.7 ms: the page keeps up with a 60 Hz display).

Prints median and p95 of each, per case:

- ``paint 400 %``: brush 12 and 80 image pixels (48 and 320 screen pixels);
- ``pan 400 %``: space + drag, every frame redraws the whole viewport;
- ``paint fit``: the whole photo in view (about 0.25x).

    .venv/bin/python benchmarks/page.py                  # 1280x800 window, 6 strokes a case
    .venv/bin/python benchmarks/page.py --strokes 12 --width 1920 --height 1080
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

CHROMIUM = os.environ.get("CSA_CHROMIUM", "/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def photo(path: Path, width: int, height: int) -> None:
    """A 4000x3000 JPEG with detail everywhere (noise over gradients), like a real photo's cost."""
    rng = np.random.default_rng(0)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    rgb = np.stack([xs / width * 200, ys / height * 200, 100 + 50 * np.sin(xs / 41.0) * np.cos(ys / 29.0)], axis=-1)
    rgb += rng.normal(0, 12, rgb.shape).astype(np.float32)
    Image.fromarray(rgb.clip(0, 255).astype(np.uint8)).save(path, quality=90)


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(round(q * (len(s) - 1))))]


def drag(page, box: dict, strokes: int, steps: int, button_keys: tuple[str, ...] = ()) -> None:
    """Zig-zag drags across the middle of the view, ``steps`` pointer moves each."""
    x0, x1 = box["x"] + 0.15 * box["width"], box["x"] + 0.85 * box["width"]
    for i in range(strokes):
        y0 = box["y"] + (0.25 + 0.5 * (i % 4) / 3) * box["height"]
        y1 = box["y"] + box["height"] - (y0 - box["y"])
        for key in button_keys:
            page.keyboard.down(key)
        page.mouse.move(x0 if i % 2 == 0 else x1, y0)
        page.mouse.down()
        page.mouse.move(x1 if i % 2 == 0 else x0, y1, steps=steps)
        page.mouse.up()
        for key in button_keys:
            page.keyboard.up(key)


# Installed in the page: per frame with pointer input, [first input time, end of rendering].
FRAME_CLOCK = """() => {
    window.benchFrames = [];
    let first = null;
    document.addEventListener('pointermove', () => { if (first === null) first = performance.now(); }, true);
    const loop = () => requestAnimationFrame(() => {
        const start = first; first = null;
        if (start !== null) {
            const ch = new MessageChannel();
            ch.port1.onmessage = () => benchFrames.push([start, performance.now()]);
            ch.port2.postMessage(0);
        }
        loop();
    });
    loop();
}"""
SETTLE = "new Promise(r => requestAnimationFrame(() => requestAnimationFrame(() => setTimeout(r, 50))))"


def measure(page, label: str, run) -> dict:
    page.evaluate(SETTLE)
    start, clock = len(page.evaluate("csaPage.frames()")), page.evaluate("benchFrames.length")
    run()
    page.evaluate(SETTLE)
    script = [f["ms"] for f in page.evaluate("csaPage.frames()")[start:]]
    spans = page.evaluate("benchFrames")[clock:]
    frame = [end - begin for begin, end in spans]
    gaps = [b[0] - a[0] for a, b in zip(spans, spans[1:]) if b[0] - a[0] < 200]  # not across drags
    return {"case": label, "frames": len(frame), "script": script, "frame": frame, "interval": gaps}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--width", type=int, default=1280, help="browser window width (CSS px)")
    ap.add_argument("--height", type=int, default=800, help="browser window height (CSS px)")
    ap.add_argument("--strokes", type=int, default=6, help="drags per case")
    ap.add_argument("--steps", type=int, default=80, help="pointer moves per drag")
    args = ap.parse_args(argv)
    if not Path(CHROMIUM).exists():
        print(f"{CHROMIUM} not found: apt-get install chromium (or set CSA_CHROMIUM)", file=sys.stderr)
        return 2
    from playwright.sync_api import sync_playwright

    from csa.checkpoints import save_generator
    from csa.config import ModelConfig
    from csa.inference import Inpainter
    from csa.nn.generator import build_generator
    from csa.server import create_app
    from csa.server.background import BackgroundServer

    with tempfile.TemporaryDirectory(prefix="csa-page-bench-") as tmp:
        weights, jpeg = Path(tmp) / "tiny.safetensors", Path(tmp) / "photo-4000x3000.jpg"
        save_generator(build_generator(ModelConfig(rough_ngf=4, refine_ngf=4)), weights)
        photo(jpeg, 4000, 3000)
        with BackgroundServer(create_app(Inpainter.from_pretrained(weights))) as url, sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
            page = browser.new_page(viewport={"width": args.width, "height": args.height})
            page.goto(url + "/")
            page.set_input_files("#image-input", str(jpeg))
            page.wait_for_selector("body[data-state=ready]", timeout=60_000)
            page.evaluate(FRAME_CLOCK)
            box = page.locator("#view").bounding_box()
            set_brush = "(e, v) => { e.value = v; e.dispatchEvent(new Event('input')); }"
            results = []
            page.keyboard.press("0")
            page.eval_on_selector("#brush-size", set_brush, "80")
            results.append(measure(page, "paint fit, brush 80 px", lambda: drag(page, box, args.strokes, args.steps)))
            page.keyboard.press("1")
            for _ in range(4):
                page.keyboard.press("+")
            assert abs(page.evaluate("csaPage.view().zoom") - 4) < 1e-9
            drag(page, box, 1, 10)  # warm-up
            for size in (12, 80):
                page.eval_on_selector("#brush-size", set_brush, str(size))
                results.append(measure(page, f"paint 400 %, brush {size} px",
                                       lambda: drag(page, box, args.strokes, args.steps)))
            results.append(measure(page, "pan 400 % (whole view)",
                                   lambda: drag(page, box, args.strokes, args.steps, ("Space",))))
            version = browser.version
            browser.close()
    print(f"chromium {version}, headless, software rendering; window {args.width}x{args.height}, "
          f"view {box['width']:.0f}x{box['height']:.0f} CSS px; 4000x3000 JPEG; "
          f"{args.strokes} drags x {args.steps} pointer moves a case; load average {os.getloadavg()[0]:.1f}")
    print("| case | frames | script p50 / p95 (ms) | frame p50 / p95 (ms) | interval p50 / p95 (ms) |")
    print("|---|---:|---:|---:|---:|")
    for r in results:
        cells = [f"{statistics.median(r[k]):.1f} / {pct(r[k], 0.95):.1f}" if r[k] else "-"
                 for k in ("script", "frame", "interval")]
        print(f"| {r['case']} | {r['frames']} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
