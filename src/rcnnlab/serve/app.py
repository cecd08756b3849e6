"""The ASGI app of `rcnnlab serve`: routes, error answers and the model's life cycle."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.exceptions import HTTPException

from rcnnlab.detector import Detector, Result
from rcnnlab.errors import UserError
from rcnnlab.inference.sources import SourceImage
from rcnnlab.serve.batching import MicroBatcher
from rcnnlab.serve.metrics import ServeMetrics
from rcnnlab.serve.options import ServeOptions
from rcnnlab.serve.uploads import (
    Options,
    Upload,
    UploadError,
    check_header,
    check_raw_type,
    decode,
    media_type,
    parse_options,
)
from rcnnlab.version import __version__

ROUTES = ("/", "/predict", "/healthz", "/readyz", "/info", "/metrics")
MAX_VARIANTS = 16  # detectors kept for distinct per-request eval options


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": " ".join(message.split())}, status_code=status)


class ModelService:
    """The loaded detector, its variants for per-request eval options, and its identity."""

    def __init__(self, source: str | Path | Detector, options: ServeOptions,
                 overrides: Sequence[str]):
        self.source, self.options, self.overrides = source, options, list(overrides)
        self.detector: Detector | None = None
        self.error: str | None = None
        self.model_id = self.config_digest = ""
        self._variants: dict[tuple[str, ...], Detector] = {}

    def load(self, *, raise_errors: bool = False) -> None:
        """Load the model (in a worker thread: the server answers /healthz meanwhile); an
        error is kept for /readyz, or raised with `raise_errors`."""
        if self.detector is not None:
            return
        try:
            if isinstance(self.source, Detector):
                det = self.source
            else:
                det = Detector.load(Path(self.source), device=self.options.device,
                                    overrides=self.overrides, backend=self.options.backend)
            self.model_id, self.config_digest = det.model_id, det.config_digest
            self._variants[()] = det
            self.detector = det  # last: /readyz says ready once everything above is set
        except UserError as exc:
            if raise_errors:
                raise
            self.error = str(exc)
        except Exception as exc:  # reported by /readyz, never a crash of the server
            if raise_errors:
                raise
            self.error = f"{type(exc).__name__}: {exc}"

    def variant(self, overrides: tuple[str, ...]) -> Detector:
        """The detector with these eval.* options (a ConfigError for invalid ones)."""
        if overrides not in self._variants:
            det = self.detector
            assert det is not None
            if len(self._variants) >= MAX_VARIANTS:  # forget the oldest, keep the model's own
                del self._variants[next(k for k in self._variants if k)]
            self._variants[overrides] = det.with_overrides(overrides)
        return self._variants[overrides]

    def run(self, key: tuple[str, ...], items: list[tuple[Upload, int, float]]
            ) -> list[Result | UploadError]:
        """Decode the uploads (each `(upload, its index in its request, threshold)`) and run
        those that decode as one model call (on the batcher's worker thread); an upload that
        does not decode gets its error."""
        images: list[SourceImage | UploadError] = []
        for upload, index, _ in items:
            try:
                images.append(decode(upload, index, self.options.max_pixels))
            except UploadError as exc:
                images.append(exc)
        good = [(image, threshold) for image, (_, _, threshold) in zip(images, items, strict=True)
                if isinstance(image, SourceImage)]
        results = iter(self.variant(key).detect_batch([i for i, _ in good],
                                                      [t for _, t in good]) if good else [])
        return [next(results) if isinstance(image, SourceImage) else image for image in images]

    def info(self) -> dict[str, Any]:
        """What /info says about the model."""
        det = self.detector
        assert det is not None
        return {"model": self.model_id, "source": str(self.source), "backend": det.backend,
                "device": str(det.device), "threshold": det.threshold,
                "reads_numbers": det.digits is not None, "categories": det.categories,
                "config_digest": self.config_digest, "eval": det.cfg.eval.model_dump(mode="json"),
                "serve": self.options.model_dump(), "rcnnlab": __version__}


def _result_json(result: Result, width: int, height: int, batch_size: int) -> dict[str, Any]:
    keep = result.scores >= result.threshold
    return {"source": result.source, "width": width, "height": height,
            "detections": int(keep.sum()),
            "boxes": [[round(v, 2) for v in box] for box in result.boxes[keep].tolist()],
            "scores": [round(v, 4) for v in result.scores[keep].tolist()],
            "class_ids": result.class_ids[keep].tolist(),
            "names": [n for n, k in zip(result.names, keep.tolist(), strict=True) if k],
            "number": result.number, "batch_size": batch_size}


async def _read_body(request: Request, limit: int) -> bytes:
    """The request body, refused (413) as soon as it passes `limit` bytes."""
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > limit:
        raise UploadError(413, f"the body is {int(length):,} bytes, more than the server's "
                          f"limit of {limit:,}: send a smaller image, or fewer at once")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise UploadError(413, f"the body is more than the server's limit of {limit:,} "
                              "bytes: send a smaller image, or fewer at once")
        chunks.append(chunk)
    return b"".join(chunks)


async def _uploads(request: Request, body: bytes, options: ServeOptions
                   ) -> tuple[list[Upload], dict[str, str]]:
    """The images of a request and its option fields (multipart), or its one raw image."""
    kind = media_type(request.headers.get("content-type"))
    if kind != "multipart/form-data":
        check_raw_type(request.headers.get("content-type"))
        return [Upload("", body)], {}
    request._body = body  # starlette parses the form from the body already read
    try:
        form = await request.form(max_files=1024, max_fields=64,  # max_images: below
                                  max_part_size=options.max_upload_bytes)
    except HTTPException as exc:
        raise UploadError(400, f"malformed multipart body: {exc.detail}") from None
    except Exception as exc:  # python-multipart's own parse errors
        raise UploadError(400, f"malformed multipart body: {exc}") from None
    uploads, fields = [], {}
    for name, value in form.multi_items():
        if isinstance(value, str):
            if name in fields:
                raise UploadError(400, f"option {name!r} given twice")
            fields[name] = value
        else:
            uploads.append(Upload(value.filename or name, await value.read()))
    if not uploads:
        raise UploadError(400, "the multipart body holds no file: send images as file fields, "
                          "e.g. curl -F file=@house.png")
    return uploads, fields


def create_app(model: str | Path | Detector, options: ServeOptions | None = None, *,
               overrides: Sequence[str] = (), preload: bool = False) -> FastAPI:
    """The HTTP app serving `model`: a run folder, a checkpoint, an exported model file
    (.onnx, .xml, .torchscript) or a loaded `Detector`; `overrides` are eval.* options for
    every request. The model loads when the server starts (/readyz says when it is ready), or
    here with `preload`, which raises the error of a model that cannot load."""
    options = options or ServeOptions()
    service = ModelService(model, options, overrides)
    metrics = ServeMetrics()

    def observe_batch(size: int) -> None:
        metrics.batch_size.observe(size)
        metrics.images.inc(size)

    # the model's one thread loads it, decodes the uploads and runs the batches
    batcher = MicroBatcher(service.run, max_batch=options.max_batch,
                           max_wait_s=options.max_wait_ms / 1000, observe=observe_batch)
    if preload:
        batcher.run_now(functools.partial(service.load, raise_errors=True))

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        await batcher.start()
        loading = asyncio.ensure_future(batcher.call(service.load))
        yield
        await asyncio.gather(loading, return_exceptions=True)
        await batcher.stop()

    app = FastAPI(title="rcnnlab", version=__version__, lifespan=lifespan,
                  docs_url="/docs", redoc_url=None)
    app.state.service = service

    @app.middleware("http")
    async def count(request: Request, call_next):
        start = time.perf_counter()
        response = await call_next(request)
        route = request.url.path if request.url.path in ROUTES else "other"
        if route != "/metrics":
            metrics.observe_request(route, response.status_code, time.perf_counter() - start)
        return response

    @app.exception_handler(UploadError)
    async def upload_error(request: Request, exc: UploadError):
        return _error(exc.status, exc.message)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException):
        return _error(exc.status_code, str(exc.detail))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {}
        return _error(422, f"{'.'.join(map(str, first.get('loc', ())))}: "
                      f"{first.get('msg', 'invalid request')}")

    def ready() -> Detector:
        if service.detector is None:
            raise UploadError(503, service.error or "the model is still loading: try again")
        return service.detector

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page() -> HTMLResponse:
        return HTMLResponse(resources.files("rcnnlab.serve").joinpath("page.html")
                            .read_text(encoding="utf-8"))

    @app.get("/healthz")
    async def healthz() -> dict:
        """The server answers."""
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz() -> JSONResponse:
        """The model is loaded (503 while it loads, or with the reason it could not)."""
        if service.detector is None:
            return JSONResponse({"ready": False, "error": service.error or "loading"},
                                status_code=503)
        return JSONResponse({"ready": True, "model": service.model_id})

    @app.get("/info")
    async def info() -> dict:
        """The model: its id, categories, threshold, eval options and config digest."""
        ready()
        return service.info()

    @app.get("/metrics", include_in_schema=False)
    async def prometheus() -> Response:
        return Response(metrics.text(), media_type=metrics.content_type)

    @app.post("/predict")
    async def predict(request: Request) -> dict:
        """Detect on one image (the raw body) or several (multipart/form-data files). Options,
        in the query string or as form fields: `threshold` and `eval.*`."""
        start = time.perf_counter()
        det = ready()
        body = await _read_body(request, options.max_upload_bytes)
        uploads, fields = await _uploads(request, body, options)
        if len(uploads) > options.max_images:
            raise UploadError(413, f"{len(uploads)} images in one request, more than the "
                              f"server's limit of {options.max_images}: send fewer at once")
        query = {}
        for name, value in request.query_params.multi_items():
            if name in query or name in fields:
                raise UploadError(400, f"option {name!r} given twice")
            query[name] = value
        wanted: Options = parse_options({**query, **fields})
        try:
            await batcher.call(service.variant, wanted.overrides)
        except UserError as exc:
            raise UploadError(400, str(exc)) from None
        threshold = det.threshold if wanted.threshold is None else wanted.threshold
        read = time.perf_counter()
        sizes = [check_header(u, i, options.max_pixels) for i, u in enumerate(uploads, 1)]
        checked = time.perf_counter()
        try:
            done = await asyncio.gather(*(
                batcher.submit(wanted.overrides, (upload, index, threshold))
                for index, upload in enumerate(uploads, 1)))
        except UploadError:
            raise
        except Exception as exc:  # the model failed: this request only
            return _error(500, f"the model failed on this request ({type(exc).__name__}: "
                          f"{exc})")
        results = [_result_json(d.value, width, height, d.batch_size)
                   for d, (width, height) in zip(done, sizes, strict=True)]
        return {"model": service.model_id, "threshold": threshold, "results": results,
                "timings_ms": {
                    "read": round((read - start) * 1000, 2),
                    "check": round((checked - read) * 1000, 2),
                    "queue": round(max(d.wait_ms for d in done), 2),
                    "inference": round(max(d.run_ms for d in done), 2),
                    "total": round((time.perf_counter() - start) * 1000, 2)}}

    return app
