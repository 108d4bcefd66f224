"""Celery tasks: parse the message, call `appliance`, return a one-word outcome."""

from __future__ import annotations

from appliance.errors import TransientError
from appliance.queue import DELIVER_WEBHOOKS, DIGEST_BATCH, RUN_JOB, SUMMARIZE_JOB
from workers.celery_app import app, settings
from workers.runtime import runtime


@app.task(name=RUN_JOB)
def run_job(job_id: str) -> str:
    return runtime(settings).runner.run_job(str(job_id))  # type: ignore[union-attr]


_RETRY = {
    "autoretry_for": (TransientError,),
    "retry_backoff": 2,
    "retry_backoff_max": 120,
    "max_retries": 5,
}


@app.task(name=SUMMARIZE_JOB, **_RETRY)
def summarize_job(job_id: str) -> str:
    return runtime(settings).runner.summarize_job(str(job_id))  # type: ignore[union-attr]


@app.task(name=DIGEST_BATCH, **_RETRY)
def digest_batch(batch_id: str) -> str:
    return runtime(settings).runner.digest_batch(str(batch_id))  # type: ignore[union-attr]


@app.task(name=DELIVER_WEBHOOKS)
def deliver_webhooks() -> str:
    return runtime(settings).deliver_webhooks()
