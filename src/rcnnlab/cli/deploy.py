"""`rcnnlab export` and `rcnnlab serve`: the model where results go."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from rcnnlab.cli.app import app
from rcnnlab.cli.common import (
    DeviceOpt,
    EvalOverridesArg,
    RunArg,
    console,
    in_range,
    user_errors,
)
from rcnnlab.errors import ConfigError


@app.command()
@user_errors
def export(
    run: RunArg,
    format: Annotated[str, typer.Option(
        "--format", help="onnx, torchscript or openvino.")] = "onnx",
    out: Annotated[Path | None, typer.Option(
        help="The model file to write (default: RUN/export/model.onnx, .torchscript or "
        ".xml).")] = None,
    overrides: EvalOverridesArg = None,
):
    """Export the run's best model to ONNX, TorchScript or OpenVINO IR, with a sidecar json
    (categories, threshold, config); `Detector.load(file)` and `rcnnlab predict FILE ...`
    run it (ONNX Runtime, torch, OpenVINO). eval.proposals=N sets the proposals the graph's
    box head scores."""
    from rcnnlab import api

    path = api.export(run, out, format=format, overrides=overrides or [])
    console.print(f"model: {path}\nsidecar: {path.with_suffix('.json')}")


@app.command()
@user_errors
def serve(
    model: Annotated[Path, typer.Argument(
        help="Run folder, checkpoint, or exported model (.onnx, .xml, .torchscript).")],
    host: Annotated[str, typer.Option(help="Address to listen on (0.0.0.0: every "
                                      "interface).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    max_batch: Annotated[int, typer.Option(help="Images run as one batch at most.")] = 8,
    max_wait_ms: Annotated[float, typer.Option(
        help="How long a batch's first image waits for others to join it.")] = 10.0,
    max_upload_mb: Annotated[float, typer.Option(help="Largest request body (MiB).")] = 20.0,
    max_pixels: Annotated[int, typer.Option(
        help="Largest image (width x height), checked before decoding.")] = 40_000_000,
    max_images: Annotated[int, typer.Option(help="Images in one request at most.")] = 16,
    device: DeviceOpt = "auto",
    backend: Annotated[str, typer.Option(
        help="For an exported model: onnxruntime (auto) or openvino for .onnx; openvino for "
        ".xml; torchscript for .torchscript.")] = "auto",
    overrides: EvalOverridesArg = None,
):
    """Serve the model over HTTP: POST /predict, GET /healthz, /readyz, /info, /metrics, and a
    page at / to try it in a browser (needs the serve extra)."""
    try:
        import uvicorn

        from rcnnlab.serve.app import create_app
    except ImportError as exc:
        raise ConfigError(f"rcnnlab serve needs the serve extra ({exc.name} is missing). Fix: "
                          "pip install 'rcnnlab[serve]'") from None
    from pydantic import ValidationError

    from rcnnlab.serve.options import ServeOptions

    in_range("--port", port, 1, 65535)
    try:
        options = ServeOptions(max_batch=max_batch, max_wait_ms=max_wait_ms,
                               max_upload_mb=max_upload_mb, max_pixels=max_pixels,
                               max_images=max_images, device=device, backend=backend)
    except ValidationError as exc:  # one line naming the flag and its range
        first = exc.errors()[0]
        flag = "--" + str(first["loc"][0]).replace("_", "-")
        raise ConfigError(f"{flag} {first['input']!r}: {first['msg']}") from None
    app_ = create_app(model, options, overrides=overrides or [], preload=True)
    service = app_.state.service
    console.print(f"serving {service.model_id} at http://{host}:{port}/ (POST /predict; "
                  "Ctrl+C stops)", highlight=False, soft_wrap=True)
    uvicorn.run(app_, host=host, port=port, log_level="warning")


