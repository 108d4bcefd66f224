"""Drop-folder pickup benchmark: file closed -> job queued, with no worker running.

Two phases on one watcher: a trickle (one file every `--gap` s) gives the pickup latency a
camera sees, a burst (`--files` written as fast as possible) gives the sustained files/s the
watcher can claim, hash and queue. Latency includes the settle time by design: that is what a
user waits for. The last line printed is one JSON object.

    python bench/folders.py                       # real JobService + a private redis-server
    python bench/folders.py --redis-url redis://127.0.0.1:6390/5   # an existing Redis
    python bench/folders.py --memory --polling    # watcher alone, in-memory queue
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from PIL import Image  # noqa: E402

from appliance.settings import DropFolder, load_settings  # noqa: E402
from appliance.watch import Watcher  # noqa: E402
from appliance.watch.claims import Claim  # noqa: E402
from appliance.watch.memory import MemoryJobs  # noqa: E402
from tests.queue_helpers import RedisServer  # noqa: E402


def tiny_jpeg(i: int) -> bytes:
    image = Image.new("RGB", (32, 32), (i % 256, (i >> 8) % 256, 99))
    out = io.BytesIO()
    image.save(out, "JPEG", quality=80, comment=f"bench {i}".encode())
    return out.getvalue()


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=500, help="files in the burst")
    ap.add_argument("--trickle", type=int, default=50, help="files in the latency phase")
    ap.add_argument("--gap", type=float, default=0.05, help="seconds between trickle files")
    ap.add_argument("--settle", type=float, default=0.5)
    ap.add_argument("--polling", action="store_true", help="PollingObserver (network mounts)")
    ap.add_argument("--poll-seconds", type=float, default=0.25)
    ap.add_argument("--memory", action="store_true", help="in-memory queue instead of Redis")
    ap.add_argument("--redis-url", default=None)
    ap.add_argument("--timeout", type=float, default=300)
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="bench-folders-"))
    root = tmp / "in"
    folder = DropFolder(
        path=root,
        settle_seconds=args.settle,
        polling=args.polling,
        poll_seconds=args.poll_seconds,
        digest=False,
        batch_gap_seconds=3600,
        rescan_seconds=3600,
    )
    queued: dict[str, float] = {}
    lock = threading.Lock()

    def on_submitted(c: Claim) -> None:
        with lock:
            queued.setdefault(c.rel.name, time.monotonic())

    redis_proc = None
    if args.memory:
        watcher = Watcher([folder], MemoryJobs(auto=False), on_submitted=on_submitted)
        backend = "memory"
    else:
        url = args.redis_url
        if url is None:
            redis_proc = RedisServer(tmp / "redis").start()
            url = redis_proc.url
        settings = load_settings(
            config_file=tmp / "none.toml", data_dir=tmp / "data", redis_url=url, folders=[folder]
        )
        watcher = Watcher.from_settings(settings, on_submitted=on_submitted)
        backend = "jobservice+sqlite+redis"
    try:
        result = run(args, root, watcher, queued, lock)
    finally:
        if redis_proc is not None:
            redis_proc.stop()
    result = {"backend": backend, **result}
    print(json.dumps(result))


def run(
    args: argparse.Namespace,
    root: Path,
    watcher: Watcher,
    queued: dict[str, float],
    lock: threading.Lock,
) -> dict[str, object]:

    payloads = [tiny_jpeg(i) for i in range(args.trickle + args.files)]
    stop = threading.Event()
    thread = threading.Thread(target=watcher.run, args=(stop,), daemon=True)
    thread.start()
    if not watcher.started.wait(60):
        raise SystemExit("watcher did not start")

    closed: dict[str, float] = {}

    def write(name: str, data: bytes) -> None:
        with open(root / name, "wb") as fh:
            fh.write(data)
        closed[name] = time.monotonic()

    def wait_all(names: list[str]) -> None:
        deadline = time.monotonic() + args.timeout
        while time.monotonic() < deadline:
            with lock:
                if all(n in queued for n in names):
                    return
            time.sleep(0.01)
        raise SystemExit(f"timeout: {sum(n in queued for n in names)}/{len(names)} queued")

    trickle = [f"t{i:05}.jpg" for i in range(args.trickle)]
    for i, name in enumerate(trickle):
        write(name, payloads[i])
        time.sleep(args.gap)
    wait_all(trickle)

    burst = [f"b{i:05}.jpg" for i in range(args.files)]
    for i, name in enumerate(burst):
        write(name, payloads[args.trickle + i])
    wait_all(burst)
    stop.set()
    thread.join(30)

    lat = [(queued[n] - closed[n]) * 1000 for n in trickle]
    burst_lat = [(queued[n] - closed[n]) * 1000 for n in burst]
    span = max(queued[n] for n in burst) - min(closed[n] for n in burst)
    return {
        "observer": "polling" if args.polling else "inotify",
        "settle_s": args.settle,
        "trickle_files": len(trickle),
        "pickup_p50_ms": round(percentile(lat, 50), 1),
        "pickup_p99_ms": round(percentile(lat, 99), 1),
        "pickup_mean_ms": round(statistics.fmean(lat), 1) if lat else None,
        "burst_files": len(burst),
        "files_per_s": round(len(burst) / span, 1),
        "burst_pickup_p50_ms": round(percentile(burst_lat, 50), 1),
        "burst_pickup_p99_ms": round(percentile(burst_lat, 99), 1),
    }


if __name__ == "__main__":
    main()
