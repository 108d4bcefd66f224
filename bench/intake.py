"""Intake throughput: POST /api/v1/jobs (a 200 KB JPEG) and GET /api/v1/jobs/{id} through
gunicorn, with no queue worker running (only the intake is measured).

Starts a private redis-server and `appliance web` on loopback in a temp dir, creates a token,
runs bounded loops from a few client threads, and stops everything. The last line printed is
one JSON object: post_rps, post_p50_ms, post_p99_ms, get_rps, get_p50_ms, get_p99_ms, ...

    python bench/intake.py [--posts 400] [--gets 2000] [--clients 8] [--workers 2]
"""

from __future__ import annotations

import argparse
import http.client
import io
import json
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.queue_helpers import RedisServer, free_port  # noqa: E402


def jpeg_200kb() -> bytes:
    """A noisy photo-like JPEG of about 200 KB (noise keeps it from compressing away)."""
    from PIL import Image

    rng = random.Random(0)
    side = 420
    while True:
        raw = bytes(rng.getrandbits(8) for _ in range(side * side * 3))
        out = io.BytesIO()
        Image.frombytes("RGB", (side, side), raw).save(out, "JPEG", quality=85)
        if out.tell() >= 200 * 1024:
            return out.getvalue()
        side += 40


def wait_port(port: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port}")


def multipart(data: bytes) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="task"\r\n\r\ncaption\r\n'
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="bench.jpg"\r\n'
        "Content-Type: image/jpeg\r\n\r\n"
    ).encode()
    return (
        head + data + f"\r\n--{boundary}--\r\n".encode(),
        f"multipart/form-data; boundary={boundary}",
    )


def run_loop(port: int, count: int, clients: int, make_request) -> tuple[list[float], float, list]:  # type: ignore[no-untyped-def]
    """`count` requests over `clients` keep-alive connections; (latencies ms, wall s, bodies)."""
    latencies: list[float] = []
    bodies: list = []
    lock = threading.Lock()
    counter = iter(range(count))

    def client() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        while True:
            with lock:
                index = next(counter, None)
            if index is None:
                break
            method, path, body, headers = make_request(index)
            started = time.perf_counter()
            conn.request(method, path, body=body, headers=headers)
            resp = conn.getresponse()
            payload = resp.read()
            elapsed = (time.perf_counter() - started) * 1000
            if resp.status >= 300:
                raise RuntimeError(f"{method} {path}: {resp.status} {payload[:200]!r}")
            with lock:
                latencies.append(elapsed)
                bodies.append(payload)
        conn.close()

    threads = [threading.Thread(target=client) for _ in range(clients)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return latencies, time.perf_counter() - started, bodies


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--posts", type=int, default=400)
    parser.add_argument("--gets", type=int, default=2000)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2, help="gunicorn processes")
    args = parser.parse_args()

    from appliance.settings import load_settings
    from appliance.tokens import TokenStore

    tmp = Path(tempfile.mkdtemp(prefix="bench-intake-"))
    web_port = free_port()
    redis = RedisServer(tmp / "redis").start()
    env = {
        **os.environ,
        "APPLIANCE_CONFIG_FILE": str(tmp / "none.toml"),
        "APPLIANCE_DATA_DIR": str(tmp / "data"),
        "APPLIANCE_MODELS_DIR": str(tmp / "models"),
        "APPLIANCE_REDIS_URL": redis.url,
        "APPLIANCE_API__RATE_LIMIT_PER_MINUTE": "0",
        "APPLIANCE_API__MAX_QUEUE_DEPTH": str(10 * args.posts + 100),
    }
    web = None
    try:
        settings = load_settings(
            config_file=tmp / "none.toml",
            data_dir=tmp / "data",
            redis_url=env["APPLIANCE_REDIS_URL"],
        )
        _info, secret = TokenStore.from_settings(settings).create("bench", "submit")
        web = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "appliance",
                "web",
                "--bind",
                f"127.0.0.1:{web_port}",
                "--workers",
                str(args.workers),
            ],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        wait_port(web_port)
        auth = {"Authorization": f"Bearer {secret}"}
        image = jpeg_200kb()

        def post(_i: int):  # type: ignore[no-untyped-def]
            body, content_type = multipart(image)
            return "POST", "/api/v1/jobs", body, {**auth, "Content-Type": content_type}

        run_loop(web_port, 2 * args.clients, args.clients, post)  # warm every worker
        post_lat, post_wall, bodies = run_loop(web_port, args.posts, args.clients, post)
        ids = [json.loads(b)["jobs"][0]["id"] for b in bodies]

        def get(i: int):  # type: ignore[no-untyped-def]
            return "GET", f"/api/v1/jobs/{ids[i % len(ids)]}", None, auth

        get_lat, get_wall, _ = run_loop(web_port, args.gets, args.clients, get)
        result = {
            "image_bytes": len(image),
            "gunicorn_workers": args.workers,
            "clients": args.clients,
            "cpus": os.cpu_count(),
            "posts": len(post_lat),
            "post_rps": round(len(post_lat) / post_wall, 1),
            "post_p50_ms": round(statistics.median(post_lat), 2),
            "post_p99_ms": round(pct(post_lat, 0.99), 2),
            "gets": len(get_lat),
            "get_rps": round(len(get_lat) / get_wall, 1),
            "get_p50_ms": round(statistics.median(get_lat), 2),
            "get_p99_ms": round(pct(get_lat, 0.99), 2),
        }
        print(
            f"POST /api/v1/jobs ({len(image) // 1024} KB JPEG): {result['post_rps']} req/s, "
            f"p50 {result['post_p50_ms']} ms, p99 {result['post_p99_ms']} ms"
        )
        print(
            f"GET /api/v1/jobs/{{id}}: {result['get_rps']} req/s, "
            f"p50 {result['get_p50_ms']} ms, p99 {result['get_p99_ms']} ms"
        )
        print(json.dumps(result))
    finally:
        if web is not None:
            os.killpg(web.pid, signal.SIGTERM)
            web.wait(30)
        redis.stop()


if __name__ == "__main__":
    main()
