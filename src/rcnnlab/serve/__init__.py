"""`rcnnlab serve`: a trained detector behind an HTTP API (FastAPI on uvicorn).

    from rcnnlab.serve import ServeOptions, create_app

    app = create_app("runs/orand", ServeOptions(max_batch=8))   # an ASGI app
    # uvicorn.run(app, host="127.0.0.1", port=8000), or `rcnnlab serve runs/orand`

Routes: `POST /predict` (one or several images, multipart or raw bytes), `GET /healthz`,
`GET /readyz`, `GET /info`, `GET /metrics` (Prometheus text) and `GET /`, a page to try the
model in a browser. Requests that arrive within `max_wait_ms` of each other run as one batch
(`batching.MicroBatcher`). Needs the `serve` extra: `pip install 'rcnnlab[serve]'`.
"""

from rcnnlab.serve.options import ServeOptions

__all__ = ["ServeOptions", "create_app"]


def __getattr__(name: str):
    # FastAPI is an optional dependency: importing ServeOptions must not need it
    if name == "create_app":
        from rcnnlab.serve.app import create_app

        return create_app
    raise AttributeError(name)
