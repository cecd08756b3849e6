"""`rcnnlab serve`: the HTTP API through a test client and a real server process, dynamic
batching, and one clear 4xx for each kind of bad request."""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import shutil
import socket
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="rcnnlab serve needs the serve extra "
                    "(pip install 'rcnnlab[serve]')")
httpx = pytest.importorskip("httpx", reason="the test client needs httpx")

from fastapi.testclient import TestClient  # noqa: E402

from rcnnlab import Detector  # noqa: E402
from rcnnlab.serve import ServeOptions, create_app  # noqa: E402
from rcnnlab.serve.batching import MicroBatcher  # noqa: E402


@pytest.fixture(scope="module")
def run(tiny_run) -> Path:
    return tiny_run


@pytest.fixture(scope="module")
def image(synth_dir) -> Path:
    return sorted((synth_dir / "test").glob("*.jpg"))[0]


def _ready(client: TestClient) -> None:
    deadline = time.monotonic() + 120
    while client.get("/readyz").status_code != 200:
        assert time.monotonic() < deadline, client.get("/readyz").json()
        time.sleep(0.05)


@pytest.fixture(scope="module")
def client(run):
    options = ServeOptions(max_upload_mb=1, max_pixels=4_000_000, max_images=4, device="cpu")
    with TestClient(create_app(run, options)) as c:
        _ready(c)
        yield c


def test_health_ready_info_and_the_page(client, run):
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz").json()
    assert ready["ready"] is True and ready["model"].startswith(f"{run.name}@")
    info = client.get("/info").json()
    assert info["model"] == ready["model"] and info["reads_numbers"] is True
    assert [c["name"] for c in info["categories"]] == [str(d) for d in range(10)]
    assert info["threshold"] == 0.5 and len(info["config_digest"]) == 12
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert 'id="number"' in page.text and "http://" not in page.text  # nothing fetched


def test_predict_a_raw_image_reads_what_the_detector_reads(client, run, image):
    expected = Detector.load(run, device="cpu").predict(image, threshold=0.3)[0]
    answer = client.post("/predict?threshold=0.3", content=image.read_bytes(),
                         headers={"content-type": "image/jpeg"})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["threshold"] == 0.3 and body["model"] == client.get("/info").json()["model"]
    (result,) = body["results"]
    keep = expected.scores >= 0.3
    assert result["number"] == expected.number and result["detections"] == int(keep.sum())
    assert result["scores"] == [round(s, 4) for s in expected.scores[keep].tolist()]
    assert result["names"] == [n for n, k in zip(expected.names, keep.tolist(), strict=True)
                               if k]
    assert (result["width"], result["height"]) == tuple(expected.image.shape[-1:-3:-1])
    assert set(body["timings_ms"]) == {"read", "check", "queue", "inference", "total"}


def test_predict_several_images_in_a_multipart_form(client, synth_dir):
    paths = sorted((synth_dir / "test").glob("*.jpg"))[:3]
    files = [("file", (p.name, p.read_bytes(), "image/jpeg")) for p in paths]
    answer = client.post("/predict", files=files, data={"threshold": "0.0"})
    assert answer.status_code == 200, answer.text
    results = answer.json()["results"]
    assert [r["source"] for r in results] == [p.name for p in paths]
    assert all(r["number"] not in (None, "-1") for r in results)  # threshold 0: digits read


def _png_header(width: int, height: int) -> bytes:
    """A PNG that declares width x height pixels and holds none (a decompression bomb's
    header)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data)))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


def test_every_bad_request_is_one_4xx_line_and_the_server_goes_on(client, image):
    jpeg = {"content-type": "image/jpeg"}
    png = image.read_bytes()
    bad = {
        "empty body": dict(content=b"", headers=jpeg),
        "text as an image": dict(content=b"hello, not an image", headers=jpeg),
        "20000 x 20000 PNG header": dict(content=_png_header(20000, 20000),
                                         headers={"content-type": "image/png"}),
        "body over the limit": dict(content=b"\0" * (2 * 1024 * 1024), headers=jpeg),
        "wrong content type": dict(content=png, headers={"content-type": "text/plain"}),
        "no content type": dict(content=png, headers={"content-type": ""}),
        "malformed multipart": dict(content=b"--x\r\nnot a part",
                                    headers={"content-type": "multipart/form-data; boundary=x"}),
        "multipart without a file": dict(data={"threshold": "0.5"},
                                         files={"note": (None, "x")}),
        "unknown option": dict(content=png, headers=jpeg, params={"colour": "red"}),
        "threshold out of range": dict(content=png, headers=jpeg, params={"threshold": "3"}),
        "threshold not a number": dict(content=png, headers=jpeg, params={"threshold": "high"}),
        "invalid eval option": dict(content=png, headers=jpeg, params={"eval.nms": "best"}),
        "option given twice": dict(content=png, headers=jpeg,
                                   params=[("threshold", "0.1"), ("threshold", "0.2")]),
        "too many images": dict(files=[("file", (f"{i}.jpg", png, "image/jpeg"))
                                       for i in range(5)]),
    }
    too_large = {"20000 x 20000 PNG header", "body over the limit", "too many images"}
    for what, kwargs in bad.items():
        answer = client.post("/predict", **kwargs)
        status = (413 if what in too_large else 415 if "content type" in what else 400)
        assert answer.status_code == status, (what, answer.status_code, answer.text)
        error = answer.json()["error"]
        assert error and "\n" not in error and "Traceback" not in error, (what, error)
    assert client.get("/nowhere").status_code == 404
    assert client.get("/predict").status_code == 405
    assert client.get("/healthz").status_code == 200
    assert client.post("/predict", content=png, headers=jpeg).status_code == 200
    metrics = client.get("/metrics").text
    assert 'rcnnlab_errors_total{route="/predict",status="413"}' in metrics
    assert 'rcnnlab_requests_total{route="/predict",status="200"}' in metrics


def test_a_failing_model_call_is_a_500_and_the_next_request_succeeds(client, image,
                                                                     monkeypatch):
    service = client.app.state.service

    def fail(*args, **kwargs):
        raise RuntimeError("out of memory")

    monkeypatch.setattr(service.variant(()), "predictor", fail)
    answer = client.post("/predict", content=image.read_bytes(),
                         headers={"content-type": "image/jpeg"})
    assert answer.status_code == 500 and "out of memory" in answer.json()["error"]
    monkeypatch.undo()
    assert client.post("/predict", content=image.read_bytes(),
                       headers={"content-type": "image/jpeg"}).status_code == 200


def test_metrics_count_requests_latency_and_batch_sizes(client, image):
    client.post("/predict", content=image.read_bytes(), headers={"content-type": "image/jpeg"})
    text = client.get("/metrics").text
    for name in ("rcnnlab_requests_total", "rcnnlab_request_seconds_bucket",
                 "rcnnlab_batch_size_bucket", "rcnnlab_images_total"):
        assert name in text, name


def test_a_model_that_cannot_load_is_not_ready_and_says_why(tmp_path):
    with TestClient(create_app(tmp_path / "missing", ServeOptions(device="cpu"))) as c:
        deadline = time.monotonic() + 30
        while c.get("/readyz").json().get("error") == "loading":
            assert time.monotonic() < deadline
            time.sleep(0.05)
        answer = c.get("/readyz")
        assert answer.status_code == 503 and "missing" in answer.json()["error"]
        assert c.get("/healthz").status_code == 200
        assert c.post("/predict", content=b"x").status_code == 503


# ------------------------------------------------------------------------ dynamic batching
def _batches(items, *, max_batch, max_wait_s, keys=None, fail_on=None):
    calls = []

    def run(key, batch):
        calls.append((key, list(batch)))
        if fail_on is not None and fail_on in batch:
            raise RuntimeError("boom")
        return [x * 10 for x in batch]

    async def main():
        batcher = MicroBatcher(run, max_batch=max_batch, max_wait_s=max_wait_s)
        await batcher.start()
        try:
            return await asyncio.gather(*(batcher.submit(k, x) for k, x in zip(
                keys or [None] * len(items), items, strict=True)), return_exceptions=True)
        finally:
            await batcher.stop()

    return asyncio.run(main()), calls


def test_requests_within_the_wait_run_as_one_batch():
    outs, calls = _batches([1, 2, 3, 4, 5], max_batch=8, max_wait_s=0.2)
    assert calls == [(None, [1, 2, 3, 4, 5])]
    assert [o.value for o in outs] == [10, 20, 30, 40, 50]
    assert {o.batch_size for o in outs} == {5}


def test_batches_are_capped_and_split_by_options():
    _, calls = _batches([1, 2, 3, 4, 5], max_batch=2, max_wait_s=0.2)
    assert [batch for _, batch in calls] == [[1, 2], [3, 4], [5]]
    outs, calls = _batches([1, 2, 3, 4], max_batch=8, max_wait_s=0.2, keys=["a", "b", "a", "b"])
    assert calls == [("a", [1, 3]), ("b", [2, 4])] and [o.value for o in outs] == [10, 20, 30, 40]


def test_a_failing_batch_fails_its_own_requests_only():
    outs, calls = _batches([1, 2, 3], max_batch=8, max_wait_s=0.2, keys=["a", "b", "a"],
                           fail_on=2)
    assert isinstance(outs[1], RuntimeError) and [outs[0].value, outs[2].value] == [10, 30]


# ------------------------------------------------------------------------ a real server
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serving(model: Path, cwd: Path, *args: str):
    """`rcnnlab serve MODEL` in a process of its own on a free loopback port, once ready:
    yields (its base URL, the process)."""
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "rcnnlab", "serve", str(model), "--port", str(port), "--device",
         "cpu", *args], cwd=cwd, env={**os.environ, "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert server.poll() is None, server.stdout.read()
            try:
                if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the server never became ready"
            time.sleep(0.2)
        yield base, server
    finally:
        server.terminate()
        server.communicate(timeout=30)


def test_rcnnlab_serve_answers_on_a_loopback_port(run, image, tmp_path):
    with serving(run, tmp_path, "--max-wait-ms", "5") as (base, _):
        expected = Detector.load(run, device="cpu").predict(image)[0].number
        files = {"file": (image.name, io.BytesIO(image.read_bytes()), "image/jpeg")}
        answer = httpx.post(f"{base}/predict", files=files, timeout=60)
        assert answer.status_code == 200 and answer.json()["results"][0]["number"] == expected
        assert httpx.post(f"{base}/predict", content=b"junk", timeout=10,
                          headers={"content-type": "image/png"}).status_code == 400
        assert "rcnnlab_requests_total" in httpx.get(f"{base}/metrics", timeout=10).text


def _chromium() -> str | None:
    """A Chromium for Playwright: the system's, else None (Playwright's own is found by
    Playwright itself when `playwright install chromium` was run)."""
    return shutil.which("chromium") or shutil.which("chromium-browser")


def test_the_page_reads_an_uploaded_image_in_a_real_browser(run, image, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api", reason="the browser test needs "
                                   "Playwright (pip install playwright)")
    executable = _chromium()
    with sync_api.sync_playwright() as pw:
        try:
            browser = pw.chromium.launch(executable_path=executable, args=[
                "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update",
                "--disable-sync"])
        except sync_api.Error as exc:
            pytest.skip("no Chromium to drive (apt-get install chromium, or playwright "
                        f"install chromium): {str(exc).splitlines()[0]}")
        try:
            with serving(run, tmp_path) as (base, _):
                page = browser.new_page()
                page.goto(f"{base}/")
                page.wait_for_function(
                    "document.getElementById('model').textContent.includes('@')")
                page.eval_on_selector("#threshold", "e => { e.value = '0.05'; }")
                page.set_input_files("#file", str(image))
                page.wait_for_function("document.getElementById('status').textContent"
                                       ".includes('detection')", timeout=60_000)
                shown = page.text_content("#number")
                page.screenshot(path=str(tmp_path / "page.png"), full_page=True)
                canvas = page.eval_on_selector("#canvas", "c => [c.width, c.height]")
        finally:
            browser.close()
    expected = Detector.load(run, device="cpu").predict(image, threshold=0.05)[0].number
    assert shown == (expected if expected != "-1" else "nothing read")
    assert canvas[1] >= 320 and (tmp_path / "page.png").stat().st_size > 0


def test_serve_refuses_a_missing_model_and_a_bad_option_in_one_line(tmp_path):
    from typer.testing import CliRunner

    from rcnnlab.cli import app

    result = CliRunner().invoke(app, ["serve", str(tmp_path / "nothing")])
    assert result.exit_code == 2 and "error:" in result.output
    result = CliRunner().invoke(app, ["serve", str(tmp_path), "--max-batch", "0"])
    assert result.exit_code == 2 and "--max-batch" in result.output
