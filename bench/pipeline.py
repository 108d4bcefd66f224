"""Throughput of the job queue against the bare engine, on the same (tiny) model.

    python bench/pipeline.py [--jobs 40] [--models DIR] [--max-new-tokens 64] [--rounds 3]

1. engine: a bare in-process loop, `Pipeline.analyze_bytes` one file after another;
2. batch4: the same pipeline with 4 files per `analyze_many` call (dynamic batching's gain);
3. queue: N jobs submitted through `JobService` -> Redis -> one `appliance worker` -> the
   store, timed from the first submit to the last result (worker started and warm before);
   once with batch_size 1 (the like-for-like ratio) and once with batch_size 4;
4. safety: batch4 again with the safety stage on (policy flag, Llama Guard 3 judging each
   answer, `--safety-check output|input|both`) against the same loop with it off:
   `safety_ratio` = throughput on / off. The tiny guards are steered to answer `safe` (a real
   guard's usual two-token answer) by their weights.

Rounds alternate engine and queue so that both see the same background load; the best round
of each counts (a shared 2-core dev box is noisy). Ten by default: on a box whose speed swings
by ±20 % over seconds, the best of five rounds gave ratios from 0.71 to 1.0 between runs of the
same commit; noise only ever slows a round, so more rounds bring both bests nearer the truth.

Both sides run the model with the same CPU threads: what `appliance worker` gives its one
worker on this machine (`cpu_threads_per_worker`), unless `--cpu-threads` says otherwise.

Uses a private redis-server and a SQLite store in a temporary directory; builds the tiny models
there unless `--models` names a models root. The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from PIL import Image, ImageDraw  # noqa: E402

from appliance.jobs import JobInfo  # noqa: E402
from appliance.schema import TaskRequest  # noqa: E402
from appliance.settings import load_settings  # noqa: E402
from tests.queue_helpers import RedisServer, WorkerProcess, models_or_tiny, wait_for, worker_env  # noqa: E402
from workers.gpus import cpu_threads_per_worker  # noqa: E402


def images(n: int, seed: int = 0) -> list[bytes]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        image = Image.new("RGB", (320, 240), tuple(rng.randrange(256) for _ in range(3)))
        draw = ImageDraw.Draw(image)
        for _ in range(6):
            box = (
                sorted(rng.randrange(320) for _ in range(2)),
                sorted(rng.randrange(240) for _ in range(2)),
            )
            draw.rectangle(
                (box[0][0], box[1][0], box[0][1], box[1][1]),
                fill=tuple(rng.randrange(256) for _ in range(3)),
            )
        buf = io.BytesIO()
        image.save(buf, format="PNG")
        out.append(buf.getvalue())
    return out


class Engine:
    """The bare in-process loop, and the same pipeline fed 4 files per call."""

    def __init__(self, pipeline, datas: list[bytes], request: TaskRequest) -> None:  # type: ignore[no-untyped-def]
        self.pipeline, self.datas, self.request = pipeline, datas, request
        pipeline.warm(summarizer=False)
        for data in datas[:8]:  # first real shapes and lengths pay one-time costs: not timed
            pipeline.analyze_bytes(data, request)

    def one_by_one(self) -> float:
        started = time.perf_counter()
        for data in self.datas:
            self.pipeline.analyze_bytes(data, self.request)
        return len(self.datas) / (time.perf_counter() - started)

    def batch4(self) -> float:
        groups = [self.datas[i : i + 4] for i in range(0, len(self.datas) - 3, 4)]
        started = time.perf_counter()
        for group in groups:
            self.pipeline.analyze_many([(self.pipeline.load(d), self.request) for d in group])
        return 4 * len(groups) / (time.perf_counter() - started)

    def checked(self, mode: str) -> float:
        """batch4 through `analyze_checked` with every item's safety policy set to `mode`."""
        request = self.request.model_copy(update={"safety": mode})
        groups = [self.datas[i : i + 4] for i in range(0, len(self.datas) - 3, 4)]
        started = time.perf_counter()
        for group in groups:
            self.pipeline.analyze_checked([(self.pipeline.load(d), request) for d in group])
        return 4 * len(groups) / (time.perf_counter() - started)


class Queue:
    """One `appliance worker` and bursts of jobs through JobService -> Redis -> store."""

    def __init__(self, env: dict[str, str], settings, datas, request, log: Path) -> None:  # type: ignore[no-untyped-def]
        from appliance.jobs import JobService

        self.service = JobService.from_settings(settings)
        self.datas, self.request = datas, request
        self.worker = WorkerProcess(env, ["--queues", "interactive,bulk"], log).start()
        wait_for(
            lambda: any(w.alive and w.state == "idle" for w in self.service.workers()),
            180,
            "the worker to be ready",
        )
        self.burst(datas[:8])  # the same untimed warm-up as the engine's

    def burst(self, datas: list[bytes] | None = None) -> float:
        """Jobs/s from the first submit to the last result (the store's own timestamp)."""
        datas = datas or self.datas
        started = datetime.now(UTC)
        ids = {
            self.service.submit(d, f"{i}.png", self.request, source="api").id
            for i, d in enumerate(datas)
        }

        def finished() -> list[JobInfo] | None:
            jobs = [j for j in self.service.list(since=started, limit=1000).items if j.id in ids]
            return jobs if len(jobs) == len(ids) and all(j.done for j in jobs) else None

        # Seldom: the end time comes from the store, and polling would steal the worker's CPU.
        jobs = wait_for(finished, 600, "the queued jobs", poll=0.5)
        bad = [j for j in jobs if j.state != "succeeded"]
        if bad:
            raise SystemExit(f"job {bad[0].state}: {bad[0].error}")
        last = max(j.finished_at for j in jobs if j.finished_at)
        return len(ids) / (last - started).total_seconds()

    def stop(self) -> None:
        self.worker.stop()


def steer_safe(models: Path) -> dict[str, str]:
    """Copies of the tiny guards whose weights answer `safe`, as a real guard mostly does."""
    from appliance.build.tiny_guards import TEXT_GUARD_NAME, VISION_GUARD_NAME, steer_guard

    names = {"vision": VISION_GUARD_NAME + "-safe", "text": TEXT_GUARD_NAME + "-safe"}
    steer_guard(models / VISION_GUARD_NAME, models / names["vision"], "safe", names["vision"])
    steer_guard(models / TEXT_GUARD_NAME, models / names["text"], "safe", names["text"])
    return names


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=40)
    parser.add_argument("--models", type=Path, default=None)
    # A short caption's length (~75 ms per tiny-model job on one CPU thread). The queue's fixed
    # ~4 ms per job (claim and result transactions ~1 ms, Celery's ack and fetch ~1 ms, Redis
    # events) would show as ~0.8 at 16 tokens; on the 11B model it is well under 1 %.
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=10, help="Timed rounds; the best counts.")
    parser.add_argument(
        "--cpu-threads", type=int, default=0, help="Model threads (0: a worker's share)."
    )
    parser.add_argument("--safety-check", choices=["input", "output", "both"], default="output")
    args = parser.parse_args()
    threads = args.cpu_threads or cpu_threads_per_worker(1)

    with tempfile.TemporaryDirectory(prefix="bench-queue-") as tmp_name:
        tmp = Path(tmp_name)
        models = models_or_tiny(args.models, tmp)
        guards = steer_safe(models) if args.models is None else {}
        redis = RedisServer(tmp / "redis").start()
        log = tmp / "worker.log"
        try:
            env = worker_env(tmp, models, redis.url, APPLIANCE_CPU_THREADS=str(threads))
            os.environ.update({k: v for k, v in env.items() if k.startswith("APPLIANCE_")})
            settings = load_settings()
            settings.safety.check = args.safety_check
            settings.safety.vision_model = guards.get("vision", "")
            settings.safety.text_model = guards.get("text", "")
            from appliance.pipeline import Pipeline

            request = TaskRequest(task="caption", max_new_tokens=args.max_new_tokens)
            datas = images(args.jobs)
            engine = Engine(Pipeline(settings), datas, request)
            rates: dict[str, list[float]] = {
                "engine": [], "batch4": [], "queue": [], "queue4": [], "safety_on": [],
                "safety_off": [],
            }  # fmt: skip
            engine.checked("flag")  # loads and warms the guards: not timed
            for _ in range(args.rounds):  # in-process: the guards' own cost, nothing else
                rates["safety_off"].append(engine.checked("off"))
                rates["safety_on"].append(engine.checked("flag"))
            # Rounds alternate engine and queue, so both see the same background load.
            for batch_size, key in ((1, "queue"), (4, "queue4")):
                queue = Queue(
                    {**env, "APPLIANCE_QUEUE__BATCH_SIZE": str(batch_size)},
                    settings,
                    datas,
                    request,
                    log,
                )
                try:
                    for _ in range(args.rounds):
                        rates["engine"].append(engine.one_by_one())
                        rates["batch4"].append(engine.batch4())
                        rates[key].append(queue.burst())
                finally:
                    queue.stop()
        except (AssertionError, SystemExit):
            if log.exists():
                print(log.read_text(errors="replace")[-4000:], file=sys.stderr)
            raise
        finally:
            redis.stop()
    best = {k: max(v) for k, v in rates.items()}
    ratio = best["queue"] / best["engine"]
    batch4 = best["batch4"] / best["engine"]
    print(f"engine loop:   {best['engine']:7.2f} jobs/s (in-process, one by one)")
    print(f"engine batch4: {best['batch4']:7.2f} jobs/s (in-process, 4 per call): {batch4:.2f}x")
    print(f"queue:         {best['queue']:7.2f} jobs/s (Redis -> 1 worker -> store, batch 1)")
    print(f"queue batch 4: {best['queue4']:7.2f} jobs/s (dynamic batching, up to 4)")
    print(f"ratio queue/engine: {ratio:.3f} (target >= 0.9); best of {args.rounds} rounds each")
    safety_ratio = best["safety_on"] / best["safety_off"]
    print(f"safety ({args.safety_check}) on/off: {safety_ratio:.3f} (batch4, in-process)")
    print(
        json.dumps(
            {
                "jobs": args.jobs,
                "max_new_tokens": args.max_new_tokens,
                "cpu_threads": threads,
                "engine_jobs_per_s": round(best["engine"], 3),
                "queue_jobs_per_s": round(best["queue"], 3),
                "ratio": round(ratio, 3),
                "batch4_speedup": round(batch4, 3),
                "queue_batch4_jobs_per_s": round(best["queue4"], 3),
                "queue_batch4_speedup": round(best["queue4"] / best["queue"], 3),
                "safety_check": args.safety_check,
                "safety_on_jobs_per_s": round(best["safety_on"], 3),
                "safety_off_jobs_per_s": round(best["safety_off"], 3),
                "safety_ratio": round(safety_ratio, 3),
            }
        )
    )


if __name__ == "__main__":
    main()
