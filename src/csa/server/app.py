"""The web app behind ``csa serve``: a REST API and one static page, around one model.

Routes:

- ``POST /api/v1/inpaint``: multipart ``image`` and ``mask`` (white = hole), optional
  ``invert``, ``resize_mask``, ``method`` and ``strategy``; answers the inpainted image as PNG.
- ``GET /api/v1/methods``: what ``method`` may say (``methods.py``).
- ``GET /api/v1/health``, ``GET /api/v1/model``; OpenAPI docs at ``/docs``.
- ``GET /``: the brush page (``static/index.html`` + ``app.js`` + ``app.css``).

Every error is JSON ``{"error": kind, "detail": message}``. One model instance serves
every request: decoding, inference and encoding run in a single worker thread, so
concurrent requests wait in a FIFO queue while the event loop stays free to accept
uploads and answer health checks. A client that closes its connection while its request
waits (the page's Cancel aborts the fetch) has the request dropped from the queue before
it runs; one that is already running cannot be interrupted, and its result is discarded.
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
from typing import Any, AsyncIterator, Mapping, Optional, Union

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
from .methods import MODEL_ID, Method, pick, served_methods

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
    past it the API answers 503 with ``Retry-After`` instead of piling up. Cancelling the
    coroutine of :meth:`run` (the client went away) takes a job that has not started out
    of the queue (``dropped``: it never runs); a running one finishes in its thread and
    its result is thrown away (``discarded``).
    """

    def __init__(self, inpainter: Any, max_queue: int = DEFAULT_MAX_QUEUE) -> None:
        self.inpainter = inpainter
        self.max_queue = max_queue
        # Counters only touched on the event loop thread: no lock needed.
        self.pending = 0
        self.done = 0
        self.dropped = 0
        self.discarded = 0
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="csa-model")
        self._closed = False

    async def run(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        if self.pending >= self.max_queue:
            raise CsaError(f"the server is busy ({self.pending} requests waiting): retry in a moment",
                           http_status=503, kind="busy")
        self.pending += 1
        job = self._executor.submit(fn, *args, **kwargs)
        try:
            await asyncio.wait({asyncio.wrap_future(job)})
        except asyncio.CancelledError:
            # cancel() succeeds only while the job waits: the executor then never starts it.
            if job.cancel():
                self.dropped += 1
            else:
                self.discarded += 1
            raise
        finally:
            self.pending -= 1
        self.done += 1  # a result or an error: either way it is answered
        return job.result()

    def counts(self) -> dict[str, int]:
        return {"queue": self.pending, "done": self.done, "dropped": self.dropped, "discarded": self.discarded}

    def open(self) -> None:
        """A fresh thread after :meth:`close` (an app may be started more than once in tests)."""
        if self._closed:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="csa-model")
            self._closed = False

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
        self._closed = True


#: The form fields of POST /api/v1/inpaint.
INPAINT_FIELDS = ("image", "mask", "invert", "resize_mask", "method", "strategy")


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
    from ..inference import InpaintWarning
    from ..inputs import load_inputs

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


class ExplainFrame(BaseModel):
    """One model run and its cell map, enough to map any pixel to its source (see ExplainBody)."""

    box: list[int]  # top, left, bottom, right (exclusive) of the image region the run saw
    fit: list[int]  # rows, columns the box was scaled to
    offset: list[int]  # top, left of the scaled box in the model's canvas (mirror padding around it)
    canvas: list[int]  # rows, columns of the model's input
    cell: int  # canvas pixels per feature cell side
    grid: list[int]  # rows, columns of the feature map
    cells: list[int]  # per cell (raster order): the chosen known cell (raster index), -1 for known cells


class ExplainBody(BaseModel):
    """``POST /api/v1/explain``: the result, the sources picture and the cell maps.

    To map an image pixel (y, x) of the hole: take the frame whose box holds it; its canvas
    row is ``offset[0] + (y - box[0] + 0.5) * fit[0] / (box[2] - box[0]) - 0.5`` (rounded;
    columns alike), its cell that row and column divided by ``cell``; ``cells`` names the
    source cell s (-1: the pixel's cell counts as known, filled by convolution only). The
    source's centre is canvas row ``(s // grid[1]) * cell + cell / 2 - 0.5``; back in the
    scaled box, a row outside [0, fit[0]) is mirrored into it (reflection about the first and
    last rows), then image row = ``box[0] + (row + 0.5) * (box[2] - box[0]) / fit[0] - 0.5``.
    """

    result_png: str  # base64 PNG: the inpainted image
    picture_png: str  # base64 PNG: the input with the hole coloured by where its content came from
    strategy: str
    size: list[int]  # image rows, columns
    frames: list[ExplainFrame]
    hole_pixels: int
    inpaint_s: float
    warnings: list[str]


def _explain_json(inpainter: Any, image_bytes: bytes, mask_bytes: bytes, invert: bool, resize_mask: bool,
                  strategy: Optional[str], max_pixels: int) -> dict[str, Any]:
    """Decode, check, explain and encode one request (runs in the model thread)."""
    import base64

    from ..explain import refuse
    from ..inference import InpaintWarning
    from ..inputs import load_inputs

    if not hasattr(inpainter, "explain"):
        raise refuse("this method", "it has no attention layer")
    inputs = load_inputs(image_bytes, mask_bytes, invert=invert, resize_mask=resize_mask, max_pixels=max_pixels)
    t0 = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", InpaintWarning)
        ex = inpainter.explain(inputs, strategy=strategy)
    seconds = time.perf_counter() - t0
    picture = io.BytesIO()
    ex.picture().save(picture, format="PNG")
    body = ex.to_json()
    return {
        "result_png": base64.b64encode(_encode_png(ex.result)).decode("ascii"),
        "picture_png": base64.b64encode(picture.getvalue()).decode("ascii"),
        "strategy": body["strategy"], "size": body["size"], "frames": body["frames"],
        "hole_pixels": int(inputs.hole.sum()), "inpaint_s": seconds,
        "warnings": [str(w.message) for w in caught if issubclass(w.category, InpaintWarning)],
    }


async def _client_gone(request: Request) -> None:
    """Return once the client has closed the connection.

    Called after the body is read: the next ASGI message is ``http.disconnect``, which the
    server sends when the connection drops (or after the response is sent, by which time
    nobody waits on this any more).
    """
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return
        await asyncio.sleep(0.05)  # not expected after the body; never spin on it


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
    methods: Optional[Mapping[str, Method]] = None,
) -> FastAPI:
    """Build the app around one model.

    ``inpainter_or_weights``: an :class:`~csa.inference.Inpainter` (the server uses its
    ``inpaint_inputs()`` and ``model_info()``), or a weights path, or None for the bundled
    default model (loaded here, so a bad path fails at start-up). The model is method
    ``csa``; the installed classical methods are offered next to it, and ``methods`` adds
    more by id (tests add slow stand-ins).
    """
    if inpainter_or_weights is None or isinstance(inpainter_or_weights, (str, os.PathLike)):
        inpainter = _load_inpainter(inpainter_or_weights, device)
    else:
        inpainter = inpainter_or_weights
    runnable = served_methods(inpainter, methods)
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
    app.state.methods = runnable
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
        400: {"model": ErrorBody, "description": "unreadable image or mask, a size mismatch, an unknown field, "
                                                 "method or strategy"},
        413: {"model": ErrorBody, "description": "upload over the byte limit, or image over the pixel limit"},
        415: {"model": ErrorBody, "description": "a part declared with a type that is not an image"},
        422: {"model": ErrorBody, "description": "a missing or malformed form field"},
        500: {"model": ErrorBody, "description": "unexpected server error (logged)"},
        503: {"model": ErrorBody, "description": "too many requests waiting: retry later"},
    }

    async def run_cancellable(request: Request, fn: Any, *args: Any) -> Any:
        """Run ``fn(*args)`` in the model worker; a Response (499, 500) when it gives no result.

        A client that disconnects first has its request dropped from the queue (or, running,
        its result discarded).
        """
        job = asyncio.ensure_future(worker.run(fn, *args))
        gone = asyncio.ensure_future(_client_gone(request))
        try:
            await asyncio.wait({job, gone}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            gone.cancel()
        if not job.done():  # the client went away: nobody will read the answer
            dropped = worker.dropped
            job.cancel()
            try:
                await job
            except asyncio.CancelledError:
                pass
            log.info("request cancelled by its client: %s", "dropped from the queue" if worker.dropped > dropped
                     else "it was running; its result is discarded")
            return Response(status_code=499)  # nginx's "client closed request"; never delivered
        try:
            return job.result()
        except CsaError:
            raise
        except Exception:
            log.exception("inpainting failed")
            return error_response(500, "internal", "unexpected server error: see the server log")

    async def read_request(request: Request, image: UploadFile, mask: UploadFile, method: str,
                           strategy: Optional[str]) -> tuple[Any, Optional[str], bytes, bytes]:
        """The checks both fill endpoints make, in order: fields, method, strategy, part types;
        then the two parts' bytes (bounded: the body limit middleware cuts off larger uploads)."""
        check_fields(await request.form(), INPAINT_FIELDS)
        chosen = pick(runnable, method)
        used_strategy = chosen.check_strategy(strategy or None)
        _check_declared_type(image, "image")
        _check_declared_type(mask, "mask")
        return chosen, used_strategy, await image.read(), await mask.read()

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
        method: str = Form(MODEL_ID, description="what fills the hole: csa (the model) or a classical method "
                                                 "(GET /api/v1/methods lists this server's)"),
        strategy: Optional[str] = Form(None, description="high-resolution strategy, one the method takes "
                                                         "(default: its own)"),
    ) -> Response:
        """Fill the hole of ``image`` marked by ``mask``; answers the result as PNG at the image's size.

        A form field this endpoint does not know is refused (400), so a misspelt option is
        never silently ignored; so are an unknown method and a strategy the method does not
        take. A client that disconnects before the answer cancels the request.
        """
        chosen, used_strategy, image_bytes, mask_bytes = await read_request(request, image, mask, method, strategy)
        answer = await run_cancellable(request, _inpaint_png, chosen.inpainter, image_bytes, mask_bytes,
                                       invert, resize_mask, used_strategy, max_pixels)
        if isinstance(answer, Response):
            return answer
        png, stats = answer
        log.info("inpainted %dx%d (%d hole pixels) with %s in %.3fs", stats["width"], stats["height"],
                 stats["hole_pixels"], chosen.id, stats["inpaint_s"])
        headers = {
            "Content-Disposition": 'inline; filename="inpainted.png"',
            "Cache-Control": "no-store",
            "X-Inpaint-Seconds": f"{stats['inpaint_s']:.4f}",
            "X-Inpaint-Method": chosen.id,
        }
        if stats["warnings"]:  # e.g. an empty mask: the image comes back unchanged
            headers["X-Csa-Warning"] = "; ".join(stats["warnings"]).encode("ascii", "replace").decode()
        return Response(png, media_type="image/png", headers=headers)

    @app.post(f"{API}/explain", response_model=ExplainBody, responses=errors, tags=["inpainting"])
    async def explain(
        request: Request,
        image: UploadFile = File(..., description="the photo (PNG, JPEG, WebP, BMP, TIFF)"),
        mask: UploadFile = File(..., description="same size as the image (or see resize_mask); white (>= 128) = hole"),
        invert: bool = Form(False, description="black = hole instead"),
        resize_mask: bool = Form(False, description="scale a mask of another size to the image's size"),
        method: str = Form(MODEL_ID, description="csa: only the model has attention (others answer 400)"),
        strategy: Optional[str] = Form(None, description="high-resolution strategy (default: the model's own)"),
    ) -> Any:
        """Inpaint like ``/inpaint`` and say where each filled region came from (the CSA layer's choice per
        feature cell): the result and the picture as base64 PNGs, and the cell maps with each model run's
        geometry, so that a client maps any pixel itself (see the response schema). It is the layer's
        choice per cell, not pixel-exact provenance. Classical methods have no attention: 400.
        """
        chosen, used_strategy, image_bytes, mask_bytes = await read_request(request, image, mask, method, strategy)
        answer = await run_cancellable(request, _explain_json, chosen.inpainter, image_bytes, mask_bytes,
                                       invert, resize_mask, used_strategy, max_pixels)
        if isinstance(answer, Response):
            return answer
        log.info("explained %dx%d (%d hole pixels) in %.3fs", answer["size"][1], answer["size"][0],
                 answer["hole_pixels"], answer["inpaint_s"])
        return JSONResponse(answer, headers={"Cache-Control": "no-store"})

    @app.get(f"{API}/health", tags=["service"])
    async def health() -> dict[str, Any]:
        """Liveness and queue state; answered at once even while the model is busy.

        ``queue``: requests waiting or running; ``done``: finished (a result or an error);
        ``dropped``: cancelled by their client before they ran (they never run);
        ``discarded``: cancelled while running (they finish, the result is thrown away).
        """
        return {"status": "ok", **worker.counts(), "limits": limits}

    @app.get(f"{API}/methods", tags=["inpainting"])
    async def list_methods() -> dict[str, Any]:
        """What the ``method`` field of ``/inpaint`` may say: the model (``csa``) and the classical
        methods whose packages are installed, each with a description and the strategies it takes."""
        return {"default": MODEL_ID, "methods": [m.public() for m in runnable.values()]}

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
