"""`rcnnlab serve` under load: concurrent clients on the loopback against the offline speed of
the same model and backend.

    python benchmarks/bench_serve.py runs/orand [--clients 1 4 16 64] [--requests 50]
    python benchmarks/bench_serve.py runs/orand/export/model.onnx --backend onnxruntime

First the offline throughput: `Detector.predict` on the image files in batches of `--max-batch`
(decoding included, as the server decodes each upload), the median of 5 passes. Then a server
process (`rcnnlab serve RUN --max-batch B --max-wait-ms W` on a free loopback port) and, for each
number of clients, that many concurrent clients (httpx, asyncio, one process) each sending
`--requests` requests of one image (the raw file as the body), the images in turn. Prints per
concurrency: requests, errors, throughput (img/s), latency p50 / p95 / p99 (ms), the mean batch the
server ran, throughput as a ratio of the offline one, and the clients' share of the CPU time
the clients and the server used. Then the server's resident memory (VmRSS)
after 1,000 and after 10,000 requests in all (`--memory`), sent by 16 clients. Nothing is asserted.
The clients share the machine's cores with the server: on a small CPU they take part of what the
server could use.
"""

from __future__ import annotations

import argparse
import asyncio
import glob
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx

from rcnnlab import Detector
from rcnnlab.data.splits import load_splits
from rcnnlab.runs.environment import machine_description


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def image_files(model: str, pattern: str | None, limit: int) -> list[Path]:
    """The files of `pattern`, else those of the run's validation split."""
    if pattern:
        files = sorted(Path(p) for p in glob.glob(pattern))
    else:
        det = Detector.load(model, device="cpu")
        data = load_splits(det.cfg.data, need=("valid",))["valid"]
        files = [data.image_root / img["file_name"] for img in data.images]
    if not files:
        raise SystemExit(f"no images: {pattern or 'the run has no validation split'}")
    return files[:limit]


def offline_throughput(model: str, files: list[Path], batch: int, backend: str,
                       passes: int = 5) -> tuple[float, float, float]:
    """img/s of Detector.predict over the files in batches of `batch`, after a warm-up: the
    median, lowest and highest of `passes` passes (one pass is short, so it varies)."""
    det = Detector.load(model, device="cpu", backend=backend)
    det.predict(files[:batch], batch_size=batch, keep_images=False)
    rates = []
    for _ in range(passes):
        start = time.perf_counter()
        det.predict(files, batch_size=batch, keep_images=False)
        rates.append(len(files) / (time.perf_counter() - start))
    return statistics.median(rates), min(rates), max(rates)


def cpu_seconds(pid: int) -> float:
    """The process's user + system CPU time in seconds (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> float:
    """The process's resident memory in MB (Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def load(base: str, bodies: list[bytes], clients: int, requests: int
               ) -> tuple[list[float], int, float, list[int]]:
    """`clients` concurrent clients sending `requests` each: (latencies in s, errors, wall s,
    batch sizes reported)."""
    latencies: list[float] = []
    batches: list[int] = []
    errors = 0
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=base, timeout=120, limits=limits) as client:
        async def one_client(index: int) -> None:
            nonlocal errors
            for i in range(requests):
                body = bodies[(index * requests + i) % len(bodies)]
                start = time.perf_counter()
                try:
                    answer = await client.post("/predict", content=body,
                                               headers={"content-type": "image/jpeg"})
                    ok = answer.status_code == 200
                    if ok:
                        batches.append(answer.json()["results"][0]["batch_size"])
                except httpx.HTTPError:
                    ok = False
                latencies.append(time.perf_counter() - start)
                errors += not ok

        start = time.perf_counter()
        await asyncio.gather(*(one_client(i) for i in range(clients)))
        return latencies, errors, time.perf_counter() - start, batches


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0-100) of the values, in the values' unit."""
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="a run folder, checkpoint or exported model")
    parser.add_argument("--images", default=None, help="a glob of image files (default: the "
                        "run's validation images)")
    parser.add_argument("--limit", type=int, default=200, help="images used at most")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16, 64])
    parser.add_argument("--requests", type=int, default=50, help="requests per client")
    parser.add_argument("--max-batch", type=int, default=8)
    parser.add_argument("--max-wait-ms", type=float, default=10.0)
    parser.add_argument("--backend", default="auto")
    parser.add_argument("--memory", type=int, nargs="*", default=[1000, 10000],
                        help="total requests after which the server's memory is read")
    args = parser.parse_args()

    print(machine_description(), flush=True)
    files = image_files(args.model, args.images, args.limit)
    bodies = [f.read_bytes() for f in files]
    offline, low, high = offline_throughput(args.model, files, args.max_batch, args.backend)
    print(f"{len(files)} images; offline Detector.predict, batch {args.max_batch}: "
          f"{offline:.1f} img/s (median of 5 passes, {low:.1f}-{high:.1f})", flush=True)

    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "rcnnlab", "serve", args.model, "--port", str(port), "--device",
         "cpu", "--backend", args.backend, "--max-batch", str(args.max_batch), "--max-wait-ms",
         str(args.max_wait_ms)], env={**os.environ, "PYTHONUNBUFFERED": "1"})
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while True:
            if server.poll() is not None:
                raise SystemExit("the server stopped before it was ready")
            try:
                if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit("the server was not ready within 300 s")
            time.sleep(0.2)
        asyncio.run(load(base, bodies, 1, 3))  # warm-up
        print(f"served (max batch {args.max_batch}, max wait {args.max_wait_ms:g} ms), "
              f"{args.requests} requests a client, one image each")
        print(f"{'clients':>7} {'requests':>8} {'errors':>6} {'img/s':>8} {'p50 ms':>8} "
              f"{'p95 ms':>8} {'p99 ms':>8} {'batch':>6} {'x offline':>9} "
              f"{'clients CPU':>11}")
        sent = 3
        marks = sorted(args.memory)
        for clients in args.clients:
            server_cpu, client_cpu = cpu_seconds(server.pid), time.process_time()
            latencies, errors, wall, batches = asyncio.run(
                load(base, bodies, clients, args.requests))
            server_cpu = cpu_seconds(server.pid) - server_cpu
            client_cpu = time.process_time() - client_cpu
            sent += len(latencies)
            ms = [v * 1000 for v in latencies]
            throughput = (len(latencies) - errors) / wall
            mean_batch = statistics.fmean(batches) if batches else float("nan")
            print(f"{clients:>7} {len(latencies):>8} {errors:>6} {throughput:>8.1f} "
                  f"{percentile(ms, 50):>8.1f} {percentile(ms, 95):>8.1f} "
                  f"{percentile(ms, 99):>8.1f} {mean_batch:>6.2f} {throughput / offline:>9.2f} "
                  f"{client_cpu / (client_cpu + server_cpu):>11.0%}", flush=True)
            while marks and sent >= marks[0]:  # passed during the load above
                print(f"server memory after {sent:,} requests: {rss_mb(server.pid):.0f} MB")
                marks.pop(0)
        for total in marks:
            while sent < total:
                count = min(total - sent, 16 * args.requests)
                per_client = max(1, count // 16)
                latencies, errors, _, _ = asyncio.run(load(base, bodies, 16, per_client))
                if errors:
                    print(f"  {errors} errors while sending up to {total} requests")
                sent += len(latencies)
            print(f"server memory after {sent:,} requests: {rss_mb(server.pid):.0f} MB",
                  flush=True)
    finally:
        server.terminate()
        server.wait(timeout=30)


if __name__ == "__main__":
    main()
