"""The REST API of ``csa serve`` with FastAPI's test client (and one real uvicorn for the queue)."""
from __future__ import annotations

import io
import logging
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from csa.server import create_app

W, H = 64, 48
UPLOAD_LIMIT = 100_000
PIXEL_LIMIT = 100_000


def png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def inpainter(tmp_path_factory):
    from csa.checkpoints import save_generator
    from csa.config import ModelConfig
    from csa.inference import Inpainter
    from csa.nn.generator import build_generator

    path = tmp_path_factory.mktemp("model") / "tiny.safetensors"
    save_generator(build_generator(ModelConfig(rough_ngf=4, refine_ngf=4)), path)
    return Inpainter.from_pretrained(path)


@pytest.fixture(scope="module")
def client(inpainter):
    app = create_app(inpainter, max_upload_bytes=UPLOAD_LIMIT, max_pixels=PIXEL_LIMIT)
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


@pytest.fixture(scope="module")
def image_arr() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (H, W, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def hole() -> np.ndarray:
    h = np.zeros((H, W), bool)
    h[12:30, 20:44] = True
    return h


def files(image: bytes, mask: bytes, image_type: str = "image/png", mask_type: str = "image/png") -> dict:
    return {"image": ("photo.png", image, image_type), "mask": ("mask.png", mask, mask_type)}


def assert_error(resp: httpx.Response, status: int, error: str) -> dict:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith("application/json")
    body = resp.json()
    assert set(body) == {"error", "detail"}
    assert body["error"] == error
    assert isinstance(body["detail"], str) and body["detail"]
    return body


# --- success ----------------------------------------------------------------------------


def test_inpaint_returns_png_changed_only_in_the_hole(client, image_arr, hole):
    mask = png(np.where(hole, 255, 0).astype(np.uint8))
    resp = client.post("/api/v1/inpaint", files=files(png(image_arr), mask))
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"] == "image/png"
    out = np.asarray(Image.open(io.BytesIO(resp.content)).convert("RGB"))
    assert out.shape == image_arr.shape
    np.testing.assert_array_equal(out[~hole], image_arr[~hole])  # known pixels come back bit-exact
    assert (out[hole] != image_arr[hole]).any(axis=1).mean() > 0.5  # random noise is not what the model paints


def test_invert_flips_the_mask(client, image_arr, hole):
    white_hole = client.post("/api/v1/inpaint", files=files(png(image_arr), png(np.where(hole, 255, 0).astype(np.uint8))))
    black_hole = client.post(
        "/api/v1/inpaint",
        files=files(png(image_arr), png(np.where(hole, 0, 255).astype(np.uint8))),
        data={"invert": "true"},
    )
    assert white_hole.status_code == black_hole.status_code == 200
    a = np.asarray(Image.open(io.BytesIO(white_hole.content)))
    b = np.asarray(Image.open(io.BytesIO(black_hole.content)))
    np.testing.assert_array_equal(a, b)


def test_strategies_and_empty_mask(client, image_arr, hole):
    mask = png(np.where(hole, 255, 0).astype(np.uint8))
    resp = client.post("/api/v1/inpaint", files=files(png(image_arr), mask), data={"strategy": "native"})
    assert resp.status_code == 200, resp.text
    out = np.asarray(Image.open(io.BytesIO(resp.content)))
    np.testing.assert_array_equal(out[~hole], image_arr[~hole])
    body = assert_error(client.post("/api/v1/inpaint", files=files(png(image_arr), mask), data={"strategy": "bogus"}),
                        400, "bad_input")
    assert "bogus" in body["detail"]
    # an empty mask is not an error: the image comes back unchanged, with a warning header
    resp = client.post("/api/v1/inpaint", files=files(png(image_arr), png(np.zeros((H, W), np.uint8))))
    assert resp.status_code == 200
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(resp.content))), image_arr)
    assert "no hole" in resp.headers["x-csa-warning"]


def test_16_bit_grey_stays_16_bit(client, hole):
    grey = np.random.default_rng(1).integers(0, 65536, (H, W), dtype=np.uint16)
    resp = client.post("/api/v1/inpaint", files=files(png(grey), png(np.where(hole, 255, 0).astype(np.uint8))))
    assert resp.status_code == 200, resp.text
    out = np.asarray(Image.open(io.BytesIO(resp.content)))
    assert out.dtype == np.uint16
    np.testing.assert_array_equal(out[~hole].astype(np.int64), grey[~hole].astype(np.int64))


def test_jpeg_and_undeclared_types_are_accepted(client, image_arr, hole):
    buf = io.BytesIO()
    Image.fromarray(image_arr).save(buf, format="JPEG")
    mask = png(np.where(hole, 255, 0).astype(np.uint8))
    resp = client.post("/api/v1/inpaint", files=files(buf.getvalue(), mask, "image/jpeg", "application/octet-stream"))
    assert resp.status_code == 200, resp.text
    assert Image.open(io.BytesIO(resp.content)).size == (W, H)


def test_health_model_docs_and_page(client):
    health = client.get("/api/v1/health")
    assert health.status_code == 200 and health.json()["status"] == "ok"
    assert health.json()["limits"]["max_upload_bytes"] == UPLOAD_LIMIT
    model = client.get("/api/v1/model").json()
    assert {"name", "config", "parameters", "limits"} <= set(model)
    assert model["config"]["rough_ngf"] == 4 and model["parameters"] > 0
    assert model["weights"] == "tiny.safetensors"  # no server paths in the answer
    assert client.get("/docs").status_code == 200
    spec = client.get("/openapi.json").json()
    assert "/api/v1/inpaint" in spec["paths"]
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert "/static/app.js" in page.text and "/static/app.css" in page.text


def test_page_needs_no_internet(client):
    """One HTML, one JS, one CSS; none of them loads anything from another host."""
    for path in ("/", "/static/app.js", "/static/app.css"):
        resp = client.get(path)
        assert resp.status_code == 200, path
        assert "http://" not in resp.text and "https://" not in resp.text and "//cdn" not in resp.text, path


def test_docs_page_is_served_locally(client):
    pytest.importorskip("fastapi_offline", reason="fastapi-offline serves Swagger UI without a CDN")
    docs = client.get("/docs")
    assert docs.status_code == 200
    assert "https://" not in docs.text and "http://" not in docs.text
    assert client.get("/static-offline-docs/swagger-ui-bundle.js").status_code == 200


# --- methods ----------------------------------------------------------------------------


def test_methods_lists_the_model_and_the_installed_classical_methods(client):
    from csa.baselines import BASELINES
    from csa.extras import missing
    from csa.methods import CLASSICAL

    assert list(CLASSICAL) == list(BASELINES), "every baseline needs an entry in csa.methods.REGISTRY"
    resp = client.get("/api/v1/methods")
    assert resp.status_code == 200
    body = resp.json()
    assert body["default"] == "csa"
    by_id = {m["id"]: m for m in body["methods"]}
    assert body["methods"][0]["id"] == "csa"
    assert by_id["csa"]["strategies"] == ["resize", "crop", "native"]
    installed = [k for k, c in CLASSICAL.items() if c.needs is None or not missing(*c.needs)]
    assert [m["id"] for m in body["methods"][1:]] == installed
    assert {"telea", "ns", "smooth"} <= set(installed)  # the core install has them
    for m in body["methods"]:
        assert set(m) == {"id", "description", "strategies", "default_strategy"}
        assert len(m["description"]) > 20
        if m["id"] != "csa":
            assert m["strategies"] == ["native"]  # the whole image at full resolution


def test_a_method_whose_package_is_missing_is_not_offered(inpainter, monkeypatch):
    import csa.methods as methods

    real = methods.missing
    monkeypatch.setattr(methods, "missing", lambda extra, modules=None: ["patchmatch"] if "patchmatch" in (modules or ())
                        else real(extra, modules))
    with TestClient(create_app(inpainter)) as c:
        ids = [m["id"] for m in c.get("/api/v1/methods").json()["methods"]]
        assert "patchmatch" not in ids and "telea" in ids
        body = assert_error(c.post("/api/v1/inpaint", files=files(png(np.zeros((8, 8, 3), np.uint8)),
                                                                  png(np.zeros((8, 8), np.uint8))),
                                   data={"method": "patchmatch"}), 400, "bad_input")
        assert "telea" in body["detail"]


def test_patchmatch_fills_differently_from_the_model_known_pixels_exact(client, image_arr, hole):
    pytest.importorskip("patchmatch")
    mask = png(np.where(hole, 255, 0).astype(np.uint8))
    model = client.post("/api/v1/inpaint", files=files(png(image_arr), mask))
    resp = client.post("/api/v1/inpaint", files=files(png(image_arr), mask), data={"method": "patchmatch"})
    assert model.status_code == resp.status_code == 200, resp.text
    assert resp.headers["x-inpaint-method"] == "patchmatch" and model.headers["x-inpaint-method"] == "csa"
    out = np.asarray(Image.open(io.BytesIO(resp.content)).convert("RGB"))
    by_model = np.asarray(Image.open(io.BytesIO(model.content)).convert("RGB"))
    np.testing.assert_array_equal(out[~hole], image_arr[~hole])
    assert (out[hole] != image_arr[hole]).any(axis=1).mean() > 0.5
    # the model paints a smooth blend; PatchMatch copies the noise around the hole
    assert np.abs(out[hole].astype(int) - by_model[hole].astype(int)).mean() > 20
    # native is what a classical method does anyway: accepted
    again = client.post("/api/v1/inpaint", files=files(png(image_arr), mask),
                        data={"method": "patchmatch", "strategy": "native"})
    assert again.status_code == 200
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(again.content)).convert("RGB")), out)


def test_unknown_method_and_a_strategy_the_method_does_not_take_are_400(client, image_arr, hole):
    mask = png(np.where(hole, 255, 0).astype(np.uint8))
    body = assert_error(client.post("/api/v1/inpaint", files=files(png(image_arr), mask), data={"method": "lama"}),
                        400, "bad_input")
    assert "'lama'" in body["detail"]
    for m in client.get("/api/v1/methods").json()["methods"]:
        assert m["id"] in body["detail"]
    body = assert_error(client.post("/api/v1/inpaint", files=files(png(image_arr), mask),
                                    data={"method": "telea", "strategy": "crop"}), 400, "bad_input")
    assert "telea" in body["detail"] and "native" in body["detail"]


# --- errors -----------------------------------------------------------------------------


def test_upload_over_the_limit_is_413(client, hole):
    big = b"\x89PNG" + bytes(UPLOAD_LIMIT)
    body = assert_error(client.post("/api/v1/inpaint", files=files(big, png(hole.astype(np.uint8) * 255))),
                        413, "too_large")
    assert "limit" in body["detail"]


def test_streamed_upload_is_cut_off_while_reading(client):
    """Without a Content-Length the limit is enforced chunk by chunk, not after buffering.

    Driven at the ASGI level, since the test client buffers a streamed body before sending.
    """
    import asyncio

    chunk, pulled, sent = 16384, 0, []
    head = (b'--b\r\nContent-Disposition: form-data; name="image"; filename="x.png"\r\n'
            b"Content-Type: image/png\r\n\r\n")

    async def receive():
        nonlocal pulled
        pulled += 1
        return {"type": "http.request", "body": head if pulled == 1 else bytes(chunk), "more_body": pulled < 1000}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
             "scheme": "http", "path": "/api/v1/inpaint", "raw_path": b"/api/v1/inpaint", "query_string": b"",
             "root_path": "", "headers": [(b"content-type", b"multipart/form-data; boundary=b")],
             "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80)}
    asyncio.run(client.app(scope, receive, send))
    assert sent[0]["type"] == "http.response.start" and sent[0]["status"] == 413
    body = b"".join(m.get("body", b"") for m in sent[1:])
    assert b'"too_large"' in body
    assert pulled * chunk < UPLOAD_LIMIT + 2 * chunk  # stopped at the limit, not after 16 MB


def test_declared_non_image_type_is_415(client, image_arr, hole):
    mask = png(hole.astype(np.uint8) * 255)
    assert_error(client.post("/api/v1/inpaint", files=files(png(image_arr), mask, image_type="text/plain")),
                 415, "unsupported_media_type")
    body = assert_error(client.post("/api/v1/inpaint", files=files(png(image_arr), mask, mask_type="application/json")),
                        415, "unsupported_media_type")
    assert "mask" in body["detail"]


def test_bytes_that_are_not_an_image_are_400(client, image_arr, hole):
    mask = png(hole.astype(np.uint8) * 255)
    body = assert_error(client.post("/api/v1/inpaint", files=files(b"this is not a picture", mask)), 400, "bad_input")
    assert "image" in body["detail"]
    truncated = png(image_arr)[:200]
    assert_error(client.post("/api/v1/inpaint", files=files(truncated, mask)), 400, "bad_input")


def test_bad_mask_is_400(client, image_arr):
    body = assert_error(client.post("/api/v1/inpaint", files=files(png(image_arr), b"GIF89a nonsense")), 400, "bad_input")
    assert "mask" in body["detail"]
    assert_error(client.post("/api/v1/inpaint", files=files(png(image_arr), b"")), 400, "bad_input")


def test_size_mismatch_is_400(client, image_arr):
    body = assert_error(client.post("/api/v1/inpaint", files=files(png(image_arr), png(np.full((H, W + 1), 255, np.uint8)))),
                        400, "bad_input")
    assert f"{W}x{H}" in body["detail"]
    # the hint names the API's own field, not the command line's flag
    assert "resize_mask=true" in body["detail"] and "--" not in body["detail"]


def test_resize_mask_field_scales_the_mask(client, image_arr):
    half = np.zeros((H // 2, W // 2), np.uint8)
    half[H // 8: H // 4, W // 8: W // 4] = 255
    resp = client.post("/api/v1/inpaint", files=files(png(image_arr), png(half)), data={"resize_mask": "true"})
    assert resp.status_code == 200, resp.text
    out = np.asarray(Image.open(io.BytesIO(resp.content)))
    assert out.shape == image_arr.shape


def test_unknown_form_field_is_400_naming_the_accepted_ones(client, image_arr, hole):
    mask = png(np.where(hole, 255, 0).astype(np.uint8))
    body = assert_error(client.post("/api/v1/inpaint", files=files(png(image_arr), mask), data={"resize-mask": "true"}),
                        400, "bad_input")
    assert "'resize-mask'" in body["detail"]
    for field in ("image", "mask", "invert", "resize_mask", "method", "strategy"):
        assert field in body["detail"]


def test_over_the_pixel_limit_is_413(client):
    flat = np.zeros((400, 300, 3), np.uint8)  # 120,000 pixels, a tiny file
    assert len(png(flat)) < UPLOAD_LIMIT
    body = assert_error(client.post("/api/v1/inpaint", files=files(png(flat), png(flat[:, :, 0]))), 413, "too_large")
    assert "pixels" in body["detail"]


def test_missing_field_and_unknown_route_use_the_error_shape(client, image_arr):
    body = assert_error(client.post("/api/v1/inpaint", files={"image": ("a.png", png(image_arr), "image/png")}),
                        422, "invalid_request")
    assert "mask" in body["detail"]
    assert_error(client.get("/api/v1/nothing-here"), 404, "not_found")
    assert_error(client.get("/api/v1/inpaint"), 405, "method_not_allowed")


def test_unexpected_error_is_a_generic_500_and_logged(inpainter, image_arr, hole, caplog):
    class Broken:
        def inpaint_inputs(self, *a, **k):
            raise RuntimeError("secret internal state")

        def model_info(self):
            return inpainter.model_info()

    with TestClient(create_app(Broken()), raise_server_exceptions=False) as c:
        with caplog.at_level(logging.ERROR, logger="csa.server"):
            resp = c.post("/api/v1/inpaint", files=files(png(image_arr), png(hole.astype(np.uint8) * 255)))
    body = assert_error(resp, 500, "internal")
    assert "secret" not in body["detail"]
    assert "secret internal state" in caplog.text


# --- one model, queued requests -----------------------------------------------------------


class Slow:
    """A stand-in model that takes ``delay`` seconds and counts how many calls overlap.

    (The queue is what is tested here; the real model only makes the test slower.)
    """

    def __init__(self, inner, delay: float) -> None:
        self.inner, self.delay = inner, delay
        self.active = self.max_active = self.calls = 0
        self.lock = threading.Lock()

    def inpaint_inputs(self, *args, **kwargs):
        with self.lock:
            self.active += 1
            self.calls += 1
            self.max_active = max(self.max_active, self.active)
        try:
            time.sleep(self.delay)
            return args[0].image.copy()
        finally:
            with self.lock:
                self.active -= 1

    def model_info(self):
        return self.inner.model_info()


def test_concurrent_requests_queue_on_one_model(inpainter, image_arr, hole):
    from csa.server.background import BackgroundServer

    slow = Slow(inpainter, delay=0.15)
    payload = files(png(image_arr), png(hole.astype(np.uint8) * 255))
    with BackgroundServer(create_app(slow)) as url, httpx.Client(base_url=url, timeout=30) as http:
        with ThreadPoolExecutor(6) as pool:
            futures = [pool.submit(http.post, "/api/v1/inpaint", files=payload) for _ in range(6)]
            time.sleep(0.1)
            t0 = time.perf_counter()
            health = http.get("/api/v1/health")  # the event loop is not blocked by the model
            health_s = time.perf_counter() - t0
            codes = [f.result().status_code for f in futures]
    assert codes == [200] * 6
    assert slow.calls == 6 and slow.max_active == 1
    assert health.status_code == 200 and health_s < 0.5


def test_full_queue_answers_503_with_retry_after(inpainter, image_arr, hole):
    from csa.server.background import BackgroundServer

    slow = Slow(inpainter, delay=0.4)
    payload = files(png(image_arr), png(hole.astype(np.uint8) * 255))
    with BackgroundServer(create_app(slow, max_queue=1)) as url, httpx.Client(base_url=url, timeout=30) as http:
        with ThreadPoolExecutor(3) as pool:
            responses = list(pool.map(lambda _: http.post("/api/v1/inpaint", files=payload), range(3)))
    codes = sorted(r.status_code for r in responses)
    assert codes[0] == 200 and codes[-1] == 503
    busy = next(r for r in responses if r.status_code == 503)
    assert_error(busy, 503, "busy")
    assert busy.headers["retry-after"] == "1"


def abandoned_request(url: str, payload: dict, data: dict) -> socket.socket:
    """Send a whole inpaint request on a raw socket and return it unread: closing it is a
    client that gives up (what the page's Cancel does by aborting its fetch)."""
    req = httpx.Request("POST", f"{url}/api/v1/inpaint", files=payload, data=data)
    body = req.read()
    sock = socket.create_connection((req.url.host, req.url.port))
    head = "".join(f"{k}: {v}\r\n" for k, v in req.headers.items())
    sock.sendall(f"POST /api/v1/inpaint HTTP/1.1\r\n{head}\r\n".encode() + body)
    return sock


def wait_for(predicate, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def slow_method(inner, delay: float):
    from csa.server.methods import FULL_RESOLUTION, Method

    slow = Slow(inner, delay)
    return slow, {"slow": Method("slow", "a stand-in that sleeps, for the queue tests", FULL_RESOLUTION, "native", slow)}


def test_a_waiting_request_whose_client_leaves_is_dropped_and_never_runs(inpainter, image_arr, hole):
    from csa.server.background import BackgroundServer

    slow, extra = slow_method(inpainter, delay=0.8)
    payload = files(png(image_arr), png(hole.astype(np.uint8) * 255))
    with BackgroundServer(create_app(inpainter, methods=extra)) as url, httpx.Client(base_url=url, timeout=30) as http:
        health = lambda: http.get("/api/v1/health").json()  # noqa: E731
        with ThreadPoolExecutor(1) as pool:
            first = pool.submit(http.post, "/api/v1/inpaint", files=payload, data={"method": "slow"})
            wait_for(lambda: slow.active == 1)
            queued = abandoned_request(url, payload, {"method": "slow"})
            wait_for(lambda: health()["queue"] == 2)
            queued.close()
            wait_for(lambda: health()["dropped"] == 1)
            assert slow.active == 1  # still the first one
            assert first.result().status_code == 200
        time.sleep(0.2)  # time for a wrongly kept job to start
        assert slow.calls == 1, "the abandoned request must never run"
        after = health()
        assert after["queue"] == 0 and after["done"] == 1 and after["discarded"] == 0
        assert http.post("/api/v1/inpaint", files=payload, data={"method": "slow"}).status_code == 200
        assert slow.calls == 2


def test_a_running_request_whose_client_leaves_is_discarded(inpainter, image_arr, hole):
    from csa.server.background import BackgroundServer

    slow, extra = slow_method(inpainter, delay=0.5)
    payload = files(png(image_arr), png(hole.astype(np.uint8) * 255))
    with BackgroundServer(create_app(inpainter, methods=extra)) as url, httpx.Client(base_url=url, timeout=30) as http:
        running = abandoned_request(url, payload, {"method": "slow"})
        wait_for(lambda: slow.active == 1)
        running.close()
        wait_for(lambda: http.get("/api/v1/health").json()["discarded"] == 1)
        wait_for(lambda: slow.active == 0)
        resp = http.post("/api/v1/inpaint", files=payload)  # the worker is free again
        assert resp.status_code == 200
        counts = http.get("/api/v1/health").json()
        assert (counts["done"], counts["dropped"], counts["discarded"]) == (1, 0, 1)
        assert slow.calls == 1


# --- the CLI command ------------------------------------------------------------------------


def test_cli_serve_binds_loopback_by_default(monkeypatch, tmp_path):
    import uvicorn

    from csa.checkpoints import save_generator
    from csa.cli import main
    from csa.config import ModelConfig
    from csa.nn.generator import build_generator

    weights = tmp_path / "tiny.safetensors"
    save_generator(build_generator(ModelConfig(rough_ngf=4, refine_ngf=4)), weights)
    seen = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: seen.update(app=app, **kw))
    with pytest.raises(SystemExit) as exit_info:
        main(["serve", "--weights", str(weights), "--port", "8123"])
    assert exit_info.value.code == 0
    assert seen["host"] == "127.0.0.1" and seen["port"] == 8123
    assert TestClient(seen["app"]).get("/api/v1/health").status_code == 200


def test_cli_serve_with_missing_weights_exits_2(tmp_path, capsys):
    from csa.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["serve", "--weights", str(tmp_path / "missing.safetensors")])
    assert exit_info.value.code == 2
    assert "missing.safetensors" in capsys.readouterr().err
