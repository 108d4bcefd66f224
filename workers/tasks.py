"""Celery tasks: parse the message, call `appliance`, return a one-word outcome."""

from __future__ import annotations

from appliance.errors import TransientError
from appliance.queue import DIGEST_BATCH, PURGE, RUN_JOB, SUMMARIZE_JOB
from appliance.runtime.worker import WorkerRuntime
from appliance.settings import Settings
from workers.celery_app import app, settings

_runtime: WorkerRuntime | None = None


def start_runtime(settings: Settings, hostname: str, queues: list[str] | None = None) -> None:
    global _runtime
    _runtime = WorkerRuntime(settings, hostname, queues=queues)
    _runtime.start()


def stop_runtime() -> None:
    if _runtime is not None:
        _runtime.stop()


def runtime() -> WorkerRuntime:
    global _runtime
    if _runtime is None:  # outside a worker (eager calls, shell): start without warm-up
        _runtime = WorkerRuntime(settings, "local@" + __import__("socket").gethostname())
        _runtime.start(warm=False)
    return _runtime


@app.task(name=RUN_JOB)
def run_job(job_id: str) -> str:
    return runtime().runner.run_job(str(job_id))  # type: ignore[union-attr]


_RETRY = {
    "autoretry_for": (TransientError,),
    "retry_backoff": 2,
    "retry_backoff_max": 120,
    "max_retries": 5,
}


@app.task(name=SUMMARIZE_JOB, **_RETRY)
def summarize_job(job_id: str) -> str:
    return runtime().runner.summarize_job(str(job_id))  # type: ignore[union-attr]


@app.task(name=DIGEST_BATCH, **_RETRY)
def digest_batch(batch_id: str) -> str:
    return runtime().runner.digest_batch(str(batch_id))  # type: ignore[union-attr]


@app.task(name=PURGE)
def purge() -> int:
    return runtime().reconciler.purge()  # type: ignore[union-attr]
