"""The web app behind ``csa serve``: a REST API and one static page, around one model.

Routes:

- ``POST /api/v1/inpaint``: multipart ``image`` and ``mask`` (white = hole), optional
  ``invert`` and ``strategy``; answers the inpainted image as PNG.
- ``GET /api/v1/health``, ``GET /api/v1/model``; OpenAPI docs at ``/docs``.
- ``GET /``: the brush page (``static/index.html`` + ``app.js`` + ``app.css``).

Every error is JSON ``{"error": kind, "detail": message}``. One model instance serves
every request: decoding, inference and encoding run in a single worker thread, so
concurrent requests wait in a FIFO queue while the event loop stays free to accept
uploads and answer health checks.
"""
from __future__ import annotations

import asyncio
import io
import logging
import os
import tempfile
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from importlib import resources
from pathlib import Path
from typing import Any, AsyncIterator, Optional, Union

import numpy as np
from fastapi import FastAPI, File, Form, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..errors import CsaError
from ..imageio import DEFAULT_MAX_PIXELS, array_to_pil, save_array

try:  # the same FastAPI, with /docs served from local files instead of a CDN
    from fastapi_offline import FastAPIOffline as _FastAPI
except ImportError:  # without it /docs still works, but needs the internet
    _FastAPI = FastAPI

log = logging.getLogger("csa.server")

DEFAULT_MAX_UPLOAD_BYTES = 32 * 1024 * 1024
DEFAULT_MAX_QUEUE = 64
API = "/api/v1"
# Parts sent without a declared type (curl without ;type=, some HTTP libraries) are let
# through: the decoder is the real judge. A declared non-image type is refused (415).
_UNDECLARED_TYPES = {"", "application/octet-stream"}


def static_dir() -> Path:
    """The folder of the page (package data ``server/static/*``)."""
    return Path(str(resources.files("csa") / "server" / "static"))


class ErrorBody(BaseModel):
    """Every error the API answers."""

    error: str
    detail: str


def error_response(status: int, error: str, detail: str, headers: Optional[dict[str, str]] = None) -> JSONResponse:
    return JSONResponse({"error": error, "detail": detail}, status_code=status, headers=headers)


_STATUS_KINDS = {400: "bad_input", 404: "not_found", 405: "method_not_allowed", 413: "too_large",
                 415: "unsupported_media_type", 422: "invalid_request", 503: "busy"}


# --- upload size limit ------------------------------------------------------------------


class UploadTooLarge(StarletteHTTPException):
    """Raised from inside ``receive`` once the body passes the limit.

    An ``HTTPException`` on purpose: FastAPI re-raises those from its form parsing (any
    other exception would become a generic 400), so the app's handler answers 413.
    """

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"the upload is over the limit of {limit:,} bytes "
                              f"({limit / 2**20:.0f} MiB): send a smaller image or raise --max-upload-mb")


class BodyLimitMiddleware:
    """Refuse request bodies over ``max_bytes`` without buffering them.

    A declared ``Content-Length`` over the limit is answered at once, before any of the
    body is read; a body that streams past the limit (chunked, or a lying header) is cut
    off at the first chunk over it.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            exc = UploadTooLarge(self.max_bytes)
            await error_response(413, "too_large", exc.detail, {"Connection": "close"})(scope, receive, send)
            return
        seen = 0

        async def limited_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise UploadTooLarge(self.max_bytes)
            return message

        await self.app(scope, limited_receive, send)


# --- the model worker -----------------------------------------------------------------


class ModelWorker:
    """One model, one thread: jobs run one at a time in arrival order.

    ``max_queue`` bounds how many requests may wait (each holds its upload in memory);
    past it the API answers 503 with ``Retry-After`` instead of piling up.
    """

    def __init__(self, inpainter: Any, max_queue: int = DEFAULT_MAX_QUEUE) -> None:
        self.inpainter = inpainter
        self.max_queue = max_queue
        self.pending = 0
        self.done = 0
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="csa-model")
        self._closed = False

    async def run(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        if self.pending >= self.max_queue:
            raise CsaError(f"the server is busy ({self.pending} requests waiting): retry in a moment",
                           http_status=503, kind="busy")
        self.pending += 1  # only touched on the event loop thread: no lock needed
        try:
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(self._executor, lambda: fn(*args, **kwargs))
        finally:
            self.pending -= 1
            self.done += 1

    def open(self) -> None:
        """A fresh thread after :meth:`close` (an app may be started more than once in tests)."""
        if self._closed:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="csa-model")
            self._closed = False

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
        self._closed = True


#: The form fields of POST /api/v1/inpaint.
INPAINT_FIELDS = ("image", "mask", "invert", "resize_mask", "strategy")


def check_fields(form: Any, accepted: tuple[str, ...]) -> None:
    """Refuse form fields an endpoint does not take, naming the ones it does."""
    unknown = sorted(set(form.keys()) - set(accepted))
    if unknown:
        raise CsaError(f"unknown form field{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}: "
                       f"this endpoint takes {', '.join(accepted)}")


def _check_declared_type(upload: UploadFile, field: str) -> None:
    declared = (upload.content_type or "").split(";")[0].strip().lower()
    if declared not in _UNDECLARED_TYPES and not declared.startswith("image/"):
        raise CsaError(f"the {field} part was sent as {declared!r}, which is not an image type: "
                       f"send a PNG, JPEG, WebP, BMP or TIFF file", http_status=415,
                       kind="unsupported_media_type")


def _encode_png(arr: np.ndarray) -> bytes:
    """The result as PNG bytes; 16-bit images stay 16-bit (through imageio's writer)."""
    if arr.dtype == np.uint8:
        buf = io.BytesIO()
        array_to_pil(np.ascontiguousarray(arr)).save(buf, format="PNG")
        return buf.getvalue()
    with tempfile.TemporaryDirectory(prefix="csa-serve-") as tmp:
        path = Path(tmp) / "result.png"
        save_array(arr, path)
        return path.read_bytes()


def _inpaint_png(inpainter: Any, image_bytes: bytes, mask_bytes: bytes, invert: bool, resize_mask: bool,
                 strategy: Optional[str], max_pixels: int) -> tuple[bytes, dict[str, Any]]:
    """Decode, check, inpaint and encode one request (runs in the model thread).

    Reading and checking is inference's own ``load_inputs`` (the one mask rule, the size
    check), with the server's pixel limit.
    """
    from ..inference import InpaintWarning, load_inputs

    t0 = time.perf_counter()
    inputs = load_inputs(image_bytes, mask_bytes, invert=invert, resize_mask=resize_mask, max_pixels=max_pixels)
    t1 = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", InpaintWarning)
        out = inpainter.inpaint_inputs(inputs, strategy=strategy)
    t2 = time.perf_counter()
    png = _encode_png(out)
    width, height = inputs.size
    stats = {"width": width, "height": height, "hole_pixels": int(inputs.hole.sum()),
             "decode_s": t1 - t0, "inpaint_s": t2 - t1, "encode_s": time.perf_counter() - t2,
             "warnings": [str(w.message) for w in caught if issubclass(w.category, InpaintWarning)]}
    return png, stats


def _load_inpainter(source: Union[str, os.PathLike, None], device: str) -> Any:
    from ..inference import Inpainter

    return Inpainter.from_pretrained(source, device=device)


# --- the app --------------------------------------------------------------------------


def create_app(
    inpainter_or_weights: Any = None,
    *,
    device: str = "cpu",
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_queue: int = DEFAULT_MAX_QUEUE,
) -> FastAPI:
    """Build the app around one model.

    ``inpainter_or_weights``: an :class:`~csa.inference.Inpainter` (the server uses its
    ``inpaint_inputs()`` and ``model_info()``), or a weights path, or None for the bundled
    default model (loaded here, so a bad path fails at start-up).
    """
    if inpainter_or_weights is None or isinstance(inpainter_or_weights, (str, os.PathLike)):
        inpainter = _load_inpainter(inpainter_or_weights, device)
    else:
        inpainter = inpainter_or_weights
    worker = ModelWorker(inpainter, max_queue=max_queue)
    limits = {"max_upload_bytes": max_upload_bytes, "max_pixels": max_pixels, "max_queue": max_queue}

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        worker.open()
        yield
        worker.close()

    app = _FastAPI(
        title="csa inpainting",
        version=_version(),
        summary="Coherent Semantic Attention image inpainting: send an image and a mask, get the image back with the hole filled.",
        lifespan=lifespan,
    )
    app.state.worker = worker
    app.state.limits = limits
    app.add_middleware(BodyLimitMiddleware, max_bytes=max_upload_bytes)

    @app.exception_handler(CsaError)
    async def _csa_error(_: Request, exc: CsaError) -> JSONResponse:
        headers = {"Retry-After": "1"} if exc.http_status == 503 else None
        return error_response(exc.http_status, exc.kind, exc.render("api"), headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind = _STATUS_KINDS.get(exc.status_code, "http_error")
        return error_response(exc.status_code, kind, str(exc.detail), getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        problems = []
        for err in exc.errors():
            where = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
            problems.append(f"{where}: {err.get('msg', 'invalid')}" if where else err.get("msg", "invalid"))
        detail = "; ".join(problems) + " (send multipart/form-data with files 'image' and 'mask')"
        return error_response(422, "invalid_request", detail)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.error("unexpected error on %s %s", request.method, request.url.path, exc_info=exc)
        return error_response(500, "internal", "unexpected server error: see the server log")

    errors: dict[Union[int, str], dict[str, Any]] = {
        400: {"model": ErrorBody, "description": "unreadable image or mask, or a size mismatch"},
        413: {"model": ErrorBody, "description": "upload over the byte limit, or image over the pixel limit"},
        415: {"model": ErrorBody, "description": "a part declared with a type that is not an image"},
        422: {"model": ErrorBody, "description": "a missing or malformed form field"},
        500: {"model": ErrorBody, "description": "unexpected server error (logged)"},
        503: {"model": ErrorBody, "description": "too many requests waiting: retry later"},
    }

    @app.post(
        f"{API}/inpaint",
        response_class=Response,
        responses={200: {"content": {"image/png": {}}, "description": "the inpainted image, PNG"}, **errors},
        tags=["inpainting"],
    )
    async def inpaint(
        request: Request,
        image: UploadFile = File(..., description="the photo (PNG, JPEG, WebP, BMP, TIFF)"),
        mask: UploadFile = File(..., description="same size as the image (or see resize_mask); white (>= 128) = hole"),
        invert: bool = Form(False, description="black = hole instead"),
        resize_mask: bool = Form(False, description="scale a mask of another size to the image's size"),
        strategy: Optional[str] = Form(None, description="high-resolution strategy of the inpainter (default: its own)"),
    ) -> Response:
        """Fill the hole of ``image`` marked by ``mask``; answers the result as PNG at the image's size.

        A form field this endpoint does not know is refused (400), so a misspelt option is
        never silently ignored.
        """
        check_fields(await request.form(), INPAINT_FIELDS)
        _check_declared_type(image, "image")
        _check_declared_type(mask, "mask")
        # Bounded: the body limit middleware has cut off anything over max_upload_bytes.
        image_bytes, mask_bytes = await image.read(), await mask.read()
        try:
            png, stats = await worker.run(_inpaint_png, inpainter, image_bytes, mask_bytes,
                                          invert, resize_mask, strategy or None, max_pixels)
        except CsaError:
            raise
        except Exception:
            log.exception("inpainting failed")
            return error_response(500, "internal", "unexpected server error: see the server log")
        log.info("inpainted %dx%d (%d hole pixels) in %.3fs", stats["width"], stats["height"],
                 stats["hole_pixels"], stats["inpaint_s"])
        headers = {
            "Content-Disposition": 'inline; filename="inpainted.png"',
            "Cache-Control": "no-store",
            "X-Inpaint-Seconds": f"{stats['inpaint_s']:.4f}",
        }
        if stats["warnings"]:  # e.g. an empty mask: the image comes back unchanged
            headers["X-Csa-Warning"] = "; ".join(stats["warnings"]).encode("ascii", "replace").decode()
        return Response(png, media_type="image/png", headers=headers)

    @app.get(f"{API}/health", tags=["service"])
    async def health() -> dict[str, Any]:
        """Liveness and queue state; answered at once even while the model is busy."""
        return {"status": "ok", "queue": worker.pending, "done": worker.done, "limits": limits}

    @app.get(f"{API}/model", tags=["service"])
    async def model() -> dict[str, Any]:
        """The loaded model: name, config, size (from the inpainter's ``model_info()``)."""
        info = _jsonable(inpainter.model_info() if hasattr(inpainter, "model_info") else {})
        if info.get("weights"):  # the file's name, not where it lives on the server
            info["weights"] = Path(info["weights"]).name
        return {**info, "limits": limits}

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(static_dir() / "index.html", headers={"Cache-Control": "no-cache"})

    app.mount("/static", StaticFiles(directory=static_dir()), name="static")
    return app


def _jsonable(value: Any) -> Any:
    """model_info() may hold tuples, paths or dataclasses: make it JSON."""
    import dataclasses

    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = dataclasses.asdict(value)
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("csa-inpaint")
    except Exception:  # not installed (running from a source tree)
        return "0"
