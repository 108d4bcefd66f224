"""Jobs per second through one box's worker, then through two boxes' workers, sharing one head.

    python bench/scaleout.py [--jobs 120] [--models DIR] [--max-new-tokens 48]

The head services are real: SeaweedFS (S3) for the files, a private redis-server, and a
PostgreSQL database of its own on 127.0.0.1:5432. Box A (this process) submits the jobs
through `JobService` (inputs go to the object store); each worker box has its own data dir
and runs `appliance worker` with one CPU thread inside a mount namespace where box A's
directory is hidden (root and unshare(1) needed), so every input is read from the store.

1. one box: box B's worker alone; N jobs timed from the first submit to the last result;
2. two boxes: box B's and box C's workers, both warm; the same N (new) jobs.

On one machine the two "boxes" share its cores, memory bandwidth and the head services, so
the ratio stays under 2 (each real box brings its own GPU). The last line is one JSON object:
one_box_jobs_per_s, two_box_jobs_per_s, scaleout_ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from appliance.jobs import JobService  # noqa: E402
from appliance.schema import TaskRequest  # noqa: E402
from appliance.settings import load_settings  # noqa: E402
from bench.pipeline import images  # noqa: E402
from tests.queue_helpers import (  # noqa: E402
    RedisServer,
    create_pg_database,
    drop_pg_database,
    postgres_reachable,
    wait_for,
)
from tests.scaleout_helpers import BoxProcess, SeaweedFS, can_hide_dirs  # noqa: E402

HOST = socket.gethostname()


def run(tmp: Path, models: Path, jobs: int, tokens: int) -> dict[str, float]:
    weed = SeaweedFS(tmp / "head" / "weed").start()
    redis = RedisServer(tmp / "head" / "redis").start()
    db = create_pg_database()
    procs: list[BoxProcess] = []
    try:
        env = {
            **os.environ,
            "APPLIANCE_CONFIG_FILE": str(tmp / "none.toml"),
            "APPLIANCE_MODELS_DIR": str(models),
            "APPLIANCE_REDIS_URL": redis.url,
            "APPLIANCE_DATABASE_URL": f"postgresql+psycopg://postgres@127.0.0.1:5432/{db}",
            "APPLIANCE_STORAGE__URL": "s3://appliance/bench",
            "APPLIANCE_STORAGE__ENDPOINT_URL": weed.endpoint,
            "APPLIANCE_DEVICE": "cpu",
            "APPLIANCE_CPU_THREADS": "1",
            "APPLIANCE_GENERATION__MAX_NEW_TOKENS": str(tokens),
            "OMP_NUM_THREADS": "1",
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
        }
        box_a = tmp / "boxA"
        (box_a / "data").mkdir(parents=True)
        settings = load_settings(
            config_file=tmp / "none.toml",
            data_dir=box_a / "data",
            models_dir=models,
            redis_url=redis.url,
            database_url=env["APPLIANCE_DATABASE_URL"],
            storage={"url": "s3://appliance/bench", "endpoint_url": weed.endpoint},
        )
        service = JobService.from_settings(settings)
        request = TaskRequest(task="caption", max_new_tokens=tokens)
        datas = images(2 * jobs + 8, seed=7)

        def start_box(name: str, device: str) -> None:
            box_env = env | {"APPLIANCE_DATA_DIR": str(tmp / name / "data")}
            args = ["worker", "--devices", device, "--simulate-gpus"]
            args += ["--queues", "interactive,bulk", "--loglevel", "WARNING"]
            proc = BoxProcess(box_env, args, tmp / f"{name}.log", hide=box_a)
            procs.append(proc.start())
            hostname = f"gpu{device}@{HOST}"
            try:
                wait_for(
                    lambda: any(w.hostname == hostname and w.alive for w in service.workers()),
                    180,
                    f"{name}'s worker",
                )
            except AssertionError:
                print(proc.tail(), file=sys.stderr)
                raise

        def timed(batch: list[bytes], label: str) -> float:
            started = time.perf_counter()
            ids = [
                service.submit(data, f"{label}-{i}.png", request, source="api").id
                for i, data in enumerate(batch)
            ]
            ended = service.wait(ids, timeout=900)
            assert all(j.state == "succeeded" for j in ended), [j.error for j in ended]
            return len(ids) / (time.perf_counter() - started)

        start_box("boxB", "0")
        timed(datas[:4], "warm-b")  # first shapes pay one-time costs: not timed
        one = timed(datas[4 : 4 + jobs], "one")
        start_box("boxC", "1")
        timed(datas[4 + jobs : 8 + jobs], "warm-c")
        two = timed(datas[8 + jobs : 8 + 2 * jobs], "two")
        return {
            "jobs": jobs,
            "max_new_tokens": tokens,
            "cores": os.cpu_count() or 1,
            "one_box_jobs_per_s": round(one, 3),
            "two_box_jobs_per_s": round(two, 3),
            "scaleout_ratio": round(two / one, 3),
        }
    finally:
        for proc in procs:
            proc.stop(kill=True)
        weed.stop(kill=True)
        redis.stop()
        from appliance.store.db import dispose_all

        dispose_all()
        drop_pg_database(db)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=120)
    parser.add_argument("--models", type=Path, default=None)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    args = parser.parse_args()
    why = can_hide_dirs() or postgres_reachable()
    if why is not None:
        sys.exit(f"bench/scaleout.py: {why}")
    with tempfile.TemporaryDirectory(prefix="bench-scaleout-") as name:
        tmp = Path(name)
        models = args.models.resolve() if args.models else None
        if models is None:
            from appliance.build.tiny import make_tiny

            models = tmp / "models"
            print("building tiny models ...", file=sys.stderr)
            make_tiny(models)
        figures = run(tmp, models, args.jobs, args.max_new_tokens)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
