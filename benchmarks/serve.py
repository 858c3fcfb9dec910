"""Load check of ``csa serve``: N concurrent clients, M requests, latency percentiles.

Starts ``csa serve`` as a subprocess on 127.0.0.1 (a free port) with a tiny random-init
model (or ``--weights``), waits for /api/v1/health, sends ``--requests`` inpaint requests
from ``--clients`` concurrent clients, and prints one table: status counts (2xx / 4xx /
5xx) and p50 / p90 / p99 / max latency. Exits 1 if any request got a 5xx or failed.

    .venv/bin/python benchmarks/serve.py                       # 20 clients, 100 requests
    .venv/bin/python benchmarks/serve.py --weights model.safetensors --size 512
"""
from __future__ import annotations

import argparse
import asyncio
import io
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
from PIL import Image


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def tiny_weights(folder: Path) -> Path:
    from csa.checkpoints import save_generator
    from csa.config import ModelConfig
    from csa.nn.generator import build_generator

    path = folder / "tiny.safetensors"
    save_generator(build_generator(ModelConfig(rough_ngf=4, refine_ngf=4)), path)
    return path


def start_server(weights: Path, port: int, threads: int, device: str) -> subprocess.Popen:
    csa = Path(sys.executable).with_name("csa")
    cmd = [str(csa) if csa.exists() else sys.executable, *([] if csa.exists() else ["-m", "csa"]),
           "serve", "--host", "127.0.0.1", "--port", str(port), "--weights", str(weights), "--device", device,
           "--log-level", "warning"]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def wait_ready(url: str, proc: subprocess.Popen, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"csa serve exited with {proc.returncode}: {proc.stderr.read().decode()[-2000:]}")
        try:
            if httpx.get(url + "/api/v1/health", timeout=1.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise SystemExit(f"csa serve did not answer on {url} within {timeout:.0f} s")


async def load(url: str, clients: int, requests: int, image: bytes, mask: bytes, timeout: float) -> tuple[list[float], list[int], int]:
    """``clients`` workers share a counter of ``requests``; each sends one request at a time."""
    latencies: list[float] = []
    codes: list[int] = []
    failures = 0
    remaining = requests
    files = {"image": ("image.png", image, "image/png"), "mask": ("mask.png", mask, "image/png")}

    async def client(http: httpx.AsyncClient) -> None:
        nonlocal remaining, failures
        while remaining > 0:
            remaining -= 1
            t0 = time.perf_counter()
            try:
                resp = await http.post("/api/v1/inpaint", files=files)
                codes.append(resp.status_code)
            except httpx.HTTPError:
                failures += 1  # no response at all counts as a failure, like a 5xx
            latencies.append(time.perf_counter() - t0)

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=timeout, limits=limits) as http:
        await asyncio.gather(*(client(http) for _ in range(clients)))
    return latencies, codes, failures


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--weights", type=Path, help="model file (default: a tiny random-init model)")
    ap.add_argument("--clients", type=int, default=20)
    ap.add_argument("--requests", type=int, default=100)
    ap.add_argument("--size", type=int, default=256, help="square test image side")
    ap.add_argument("--threads", type=int, default=2, help="torch threads of the server")
    ap.add_argument("--device", default="cpu", help="the server's --device")
    ap.add_argument("--timeout", type=float, default=300.0, help="per-request timeout, seconds")
    args = ap.parse_args()

    rng = np.random.default_rng(0)
    s = args.size
    image = png(rng.integers(0, 256, (s, s, 3), dtype=np.uint8))
    hole = np.zeros((s, s), np.uint8)
    hole[s // 4 : s // 2, s // 4 : 3 * s // 4] = 255
    mask = png(hole)

    with tempfile.TemporaryDirectory() as tmp:
        weights = args.weights or tiny_weights(Path(tmp))
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        proc = start_server(weights, port, args.threads, args.device)
        try:
            wait_ready(url, proc)
            t0 = time.perf_counter()
            latencies, codes, failures = asyncio.run(
                load(url, args.clients, args.requests, image, mask, args.timeout))
            wall = time.perf_counter() - t0
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()

    ms = np.array(latencies) * 1000
    count = lambda lo: sum(lo <= c < lo + 100 for c in codes)  # noqa: E731
    model = "tiny random-init (ngf 4)" if args.weights is None else args.weights.name
    print(f"csa serve load check: {args.clients} clients, {args.requests} requests, "
          f"{s}x{s} PNG with a {s // 2}x{s // 4} hole, model {model}, {args.device}, {args.threads} torch threads")
    print()
    print("| 2xx | 4xx | 5xx | failed | p50 ms | p90 ms | p99 ms | max ms | wall s | req/s |")
    print("|----:|----:|----:|-------:|-------:|-------:|-------:|-------:|-------:|------:|")
    print(f"| {count(200)} | {count(400)} | {count(500)} | {failures} | "
          f"{np.percentile(ms, 50):.0f} | {np.percentile(ms, 90):.0f} | {np.percentile(ms, 99):.0f} | "
          f"{ms.max():.0f} | {wall:.2f} | {len(codes) / wall:.1f} |")
    return 1 if count(500) or failures else 0


if __name__ == "__main__":
    sys.exit(main())
