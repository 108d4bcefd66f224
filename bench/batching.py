"""Continuous vs static batching through the real worker, on a mixed workload (issue 14).

    python bench/batching.py [--models DIR] [--scale 1.0]

The workload, the same for both modes: a bulk backlog (short captions of 8-24 tokens and long
OCR-like generations of 256, different `max_new_tokens`), more bulk jobs arriving over time,
and interactive jobs (12 tokens) arriving one by one while the bulk load runs. One
`appliance worker` (batch_size 4) runs it twice:

- static: `queue.continuous=false`, rows join only an empty batch (today's static batching:
  a batch runs until its longest row ends);
- continuous: rows join and leave at every step.

Jobs/s counts from the first submit to the last result (the store's timestamps); an
interactive job's latency is its `finished_at - created_at`. The tiny model's random weights
rarely hit an end token, so rows run to their own limits in both modes. Rounds alternate the
modes so both see the same background load; the best of three rounds of each counts (best of
two swung from 1.39 to 2.08 between runs of one commit on a noisy 2-core box). Uses a private
redis-server and a SQLite store in a temporary directory. The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import io
import itertools
import json
import os
import random
import statistics
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from PIL import Image  # noqa: E402

from appliance.schema import TaskRequest  # noqa: E402
from appliance.settings import load_settings  # noqa: E402
from tests.queue_helpers import RedisServer, WorkerProcess, models_or_tiny, wait_for, worker_env  # noqa: E402
from workers.gpus import cpu_threads_per_worker  # noqa: E402

SHORT = (8, 16, 24)
LONG = 256
INTERACTIVE_TOKENS = 12


def png(seed: int) -> bytes:
    rng = random.Random(seed)
    size = rng.choice([(320, 240), (240, 320), (400, 120), (200, 200)])  # 1-4 tiles
    image = Image.new("RGB", size, tuple(rng.randrange(256) for _ in range(3)))
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def workload(scale: float) -> list[tuple[float, str, int]]:
    """(arrival s, lane, max_new_tokens): a backlog, bulk arrivals, interactive arrivals."""
    rng = random.Random(14)
    backlog = int(48 * scale)
    plan = [(0.0, "bulk", LONG if i % 3 == 0 else rng.choice(SHORT)) for i in range(backlog)]
    # Arrivals while the backlog runs (both modes take longer than the last arrival, so
    # jobs/s measures the worker, not the arrival rate).
    plan += [(0.2 + 0.1 * i, "bulk", LONG if i % 3 == 0 else rng.choice(SHORT))
             for i in range(int(8 * scale))]  # fmt: skip
    plan += [(0.3 + 0.15 * i, "interactive", INTERACTIVE_TOKENS) for i in range(int(8 * scale))]
    return sorted(plan, key=lambda p: p[0])


def run_mode(env: dict[str, str], settings, plan, log: Path) -> dict[str, float]:  # type: ignore[no-untyped-def]
    from appliance.jobs import JobService

    service = JobService.from_settings(settings)
    worker = WorkerProcess(env, ["--queues", "interactive,bulk"], log).start()
    try:
        wait_for(
            lambda: any(w.alive and w.state == "idle" for w in service.workers()),
            180,
            "the worker to be ready",
        )
        # Untimed warm-up: the first shapes pay one-time costs.
        warm = [service.submit(png(900 + i), "w.png", TaskRequest(task="caption",
                max_new_tokens=8), source="api").id for i in range(4)]  # fmt: skip
        wait_for(lambda: all(j.done for j in service.get_many(warm).values()), 300, "warm-up")
        ids: dict[str, str] = {}
        started = datetime.now(UTC)
        t0 = time.monotonic()

        def submit() -> None:
            for n, (at, lane, tokens) in enumerate(plan):
                time.sleep(max(0.0, t0 + at - time.monotonic()))
                req = TaskRequest(task="caption" if tokens in SHORT or lane != "bulk" else "ocr",
                                  max_new_tokens=tokens)  # fmt: skip
                source = "api" if lane == "interactive" else "folder"
                job = service.submit(png(n), f"{lane}-{n}.png", req, source=source)
                ids[job.id] = lane

        feeder = threading.Thread(target=submit)
        feeder.start()
        feeder.join()
        jobs = wait_for(
            lambda: (js := service.get_many(list(ids))) and all(j.done for j in js.values()) and js,
            900,
            "the workload",
            poll=0.5,
        )
        bad = [j for j in jobs.values() if j.state != "succeeded"]
        if bad:
            raise SystemExit(f"job {bad[0].state}: {bad[0].error}")
        last = max(j.finished_at for j in jobs.values() if j.finished_at)
        latency = [
            (j.finished_at - j.created_at).total_seconds() * 1000
            for i, j in jobs.items()
            if ids[i] == "interactive" and j.finished_at
        ]
        tokens = sum(p["tokens"] for j in jobs.values() for p in (j.result or {}).get("pages", []))
        return {
            "tokens": tokens,
            "mean_batch": statistics.mean(j.timings["batch_size"] for j in jobs.values()),
            "jobs_per_s": len(jobs) / (last - started).total_seconds(),
            "interactive_p50_ms": statistics.median(latency),
        }
    finally:
        worker.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=Path, default=None)
    parser.add_argument("--scale", type=float, default=1.0, help="Workload size factor.")
    parser.add_argument("--cpu-threads", type=int, default=0, help="0: a worker's share.")
    parser.add_argument("--rounds", type=int, default=3, help="Rounds per mode, alternating.")
    args = parser.parse_args()
    threads = args.cpu_threads or cpu_threads_per_worker(1)
    plan = workload(args.scale)
    out: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-batching-") as tmp_name:
        tmp = Path(tmp_name)
        models = models_or_tiny(args.models, tmp)
        redis = RedisServer(tmp / "redis").start()
        log = tmp / "worker.log"
        try:
            for round_, mode in itertools.product(range(args.rounds), ("static", "continuous")):
                env = worker_env(
                    tmp,
                    models,
                    redis.url,
                    APPLIANCE_DATA_DIR=str(tmp / f"data-{mode}-{round_}"),  # a fresh store
                    APPLIANCE_CPU_THREADS=str(threads),
                    APPLIANCE_QUEUE__BATCH_SIZE="4",
                    APPLIANCE_QUEUE__CONTINUOUS=str(mode == "continuous").lower(),
                )
                os.environ.update({k: v for k, v in env.items() if k.startswith("APPLIANCE_")})
                got = run_mode(env, load_settings(), plan, log)
                print(f"{mode:10s} {got}", file=sys.stderr)
                # The best round counts (a shared 2-core box is noisy): the most jobs/s, the
                # lowest interactive p50.
                best = out.setdefault(mode, got)
                best["jobs_per_s"] = max(best["jobs_per_s"], got["jobs_per_s"])
                best["interactive_p50_ms"] = min(
                    best["interactive_p50_ms"], got["interactive_p50_ms"]
                )
        except (AssertionError, SystemExit):
            if log.exists():
                print(log.read_text(errors="replace")[-4000:], file=sys.stderr)
            raise
        finally:
            redis.stop()
    static, cont = out["static"], out["continuous"]
    print(
        json.dumps(
            {
                "jobs": len(plan),
                "rounds": args.rounds,
                "cpu_threads": threads,
                "static_jobs_per_s": round(static["jobs_per_s"], 3),
                "continuous_jobs_per_s": round(cont["jobs_per_s"], 3),
                "continuous_speedup": round(cont["jobs_per_s"] / static["jobs_per_s"], 3),
                "interactive_p50_ms_static": round(static["interactive_p50_ms"], 1),
                "interactive_p50_ms_continuous": round(cont["interactive_p50_ms"], 1),
                "interactive_p50_ratio": round(
                    cont["interactive_p50_ms"] / static["interactive_p50_ms"], 3
                ),
            }
        )
    )


if __name__ == "__main__":
    main()
