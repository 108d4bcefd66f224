"""`JobRunner`: what a worker does with a job message (claim, batch, infer, write once).

1. Claim the job in the store (queued -> running, attempt counted, fresh claim token). A job
   that is not queued (done, cancelled, or a duplicate message) is skipped.
2. Continuous batching: the job starts the worker's in-flight batch, which claims more queued
   first-attempt jobs (any generation parameters, interactive first) while it has free rows;
   their own messages later find them done and are skipped (`runtime.batchloop`).
3. Write each result as its last row ends, only if the claim is still ours (a cancel or a
   takeover voids it).
4. Summaries are chained: a `summarize_job` message on the text queue per job that asks.

Bad input fails the job at once with the reason (the file stays); transient errors re-queue it
with exponential backoff; after `max_attempts` the job fails with the last reason. A run that
outlives its hard time limit fails; a decode step that does ends the worker process (the
supervisor starts a fresh one): a stuck GPU call cannot be interrupted any other way.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from appliance.errors import TransientError
from appliance.runtime.failures import is_oom, is_permanent, one_line
from appliance.runtime.watchdog import Watchdog
from appliance.schema import AnalysisResult, TaskRequest
from appliance.store.tables import Job
from appliance.vocab import FAILED, INTERACTIVE, PENDING, RUNNING, SUCCEEDED

if TYPE_CHECKING:
    from PIL import Image

    from appliance.engines.inflight import Finished, InflightBatch
    from appliance.jobs.backend import JobBackend
    from appliance.pipeline import Pipeline

log = logging.getLogger(__name__)

# Exit status of a worker killed by its own watchdog (the supervisor restarts it).
EXIT_TIMEOUT = 75


class JobRunner:
    def __init__(
        self,
        backend: JobBackend,
        *,
        hostname: str,
        device: str,
        pipeline: Pipeline | None = None,
        exit_on_timeout: Callable[[int], None] = os._exit,
    ) -> None:
        self.backend = backend
        self.settings = backend.settings
        self.store = backend.store
        self.hostname = hostname
        self.device = device
        self._pipeline = pipeline
        self._exit = exit_on_timeout
        # Held for a whole run; the reconciler only heals this worker's jobs while it is free.
        self.lock = threading.Lock()
        self.current: list[str] = []
        # Set when `current` changes: the heartbeat thread writes it soon, off the job's path.
        self.changed = threading.Event()
        self.watchdog = Watchdog(self._timed_out)
        # Cancelling a running job: `check_cancelled` (on a cancel notice, and at every
        # heartbeat) finds it in the store and sets `_stop`, which the generation asks after
        # every step. `_guard` ties both to one run's claim: a late check never stops the next.
        self._guard = threading.Lock()
        self._run_claim: str | None = None
        self._stop = threading.Event()  # set when a job of the run was stopped
        self._stopped: set[str] = set()
        self.jobs_done = 0
        self.boot = ""  # set when the worker registers (see appliance.runtime.recovery)

    @property
    def pipeline(self) -> Pipeline:
        if self._pipeline is None:
            from appliance.pipeline import Pipeline  # torch: only in workers

            self._pipeline = Pipeline(self.settings)
        return self._pipeline

    @property
    def state(self) -> str:
        return "busy" if self.current else "idle"

    def warm(self, vision: bool = True, summarizer: bool = True) -> None:
        """Load the models this worker will use and run one tiny generation with each."""
        # A text-only worker never loads the vision model.
        self.pipeline.warm(vision=vision, summarizer=summarizer)

    # -- jobs -------------------------------------------------------------------------------

    def run_job(self, job_id: str) -> str:
        """Handle one `run_job` message: its job starts (or is) the worker's in-flight batch,
        which takes more queued jobs while it has free rows (`runtime.batchloop`). Returns a
        one-word outcome for the log."""
        with self.lock:
            claim = uuid.uuid4().hex
            primary = self.store.claim(
                job_id, worker=self.hostname, device=self.device, claim=claim
            )
            if primary is None:
                return "skipped"
            with self._guard:
                self._stop.clear()
                self._stopped.clear()
            self.set_current([primary.id], claim)
            from appliance.runtime.batchloop import run_loop  # torch: only in workers

            try:
                return run_loop(self, claim, primary)
            finally:
                self.watchdog.disarm()
                self.set_current([], None)

    def set_current(self, ids: list[str], claim: str | None) -> None:
        """The jobs in the batch now (the heartbeat reports them, cancels are checked on them)."""
        with self._guard:
            self.current, self._run_claim = list(ids), claim
        self.changed.set()

    def take_stopped(self) -> set[str]:
        """The running jobs found cancelled (or taken over) since the last call."""
        with self._guard:
            stopped, self._stopped = self._stopped, set()
            return stopped

    def check_cancelled(self) -> bool:
        """Stop the rows of the running jobs that are no longer ours to finish (cancelled, or
        taken over). Called from the worker's heartbeat and cancel-listener threads; True if
        it stopped one."""
        with self._guard:
            claim, ids = self._run_claim, list(self.current)
        if claim is None or not ids:
            return False
        ours = {j.id for j in self.store.get_many(ids) if j.state == RUNNING and j.claim == claim}
        gone = [i for i in ids if i not in ours]
        with self._guard:
            if self._run_claim != claim:
                return False
            gone = [i for i in gone if i in self.current and i not in self._stopped]
            if not gone:
                return False
            self._stopped.update(gone)
            self._stop.set()
        log.info("stopping the generation of %s: cancelled", ", ".join(gone))
        return True

    def streamer(self, job: Job) -> Callable[[str], None] | None:
        """Where a job's rows report their text as it grows: interactive chats only (the
        OpenAI streaming endpoint reads it back), at most every 50 ms."""
        if job.priority != INTERACTIVE or job.params.get("task") != "chat":
            return None
        broker, last = self.backend.broker, [0.0]

        def report(text: str) -> None:
            now = time.monotonic()
            if now - last[0] >= 0.05:
                last[0] = now
                broker.set_partial(job.id, text)

        return report

    def _joining(self, job: Job) -> None:
        """A job joins the batch (a seam for the chaos tests)."""

    def _step(self, batch: InflightBatch) -> list[Finished]:
        """One step of the batch: the model call (a seam for the tests)."""
        return batch.step()

    def _write(
        self,
        job: Job,
        claim: str,
        pages: list[Image.Image],
        intake_ms: float,
        result: AnalysisResult,
        run_ms: float,
        batch_size: int,
    ) -> str:
        """Write a job's result if the claim is still ours; chain its summary."""
        timings: dict[str, Any] = dict(result.timings)
        timings.update(
            intake_ms=intake_ms,
            run_ms=run_ms,
            queue_ms=_ms_between(job.created_at, job.started_at),
            batch_size=batch_size,
        )
        wants_summary = bool(job.params.get("summarize"))
        ok = self.store.succeed(
            job.id,
            claim,
            result=result.model_dump(mode="json"),
            text=result.text,
            timings=timings,
            pages=len(pages),
            summary_state=PENDING if wants_summary else None,
        )
        if not ok:
            log.info("job %s: result dropped (cancelled or taken over)", job.id)
            return "dropped"
        if wants_summary:
            self.backend.broker.send_summary(job.id)
        self.backend.job_ended(job.batch_id)
        self.jobs_done += 1
        return SUCCEEDED

    def _fail(self, job: Job, claim: str, reason: str, code: str) -> None:
        log.warning("job %s failed (%s): %s", job.id, code, reason)
        if self.store.fail(job.id, reason, code, claim=claim):
            self.backend.job_ended(job.batch_id)

    def _transient(self, jobs: list[Job], claim: str, exc: BaseException) -> None:
        q = self.settings.queue
        reason = one_line(exc)
        for job in jobs:
            if job.attempts >= q.max_attempts:
                self._fail(
                    job, claim, f"gave up after {job.attempts} attempts: {reason}", "gave_up"
                )
                continue
            delay = min(q.retry_backoff_max_s, q.retry_backoff_s * 2 ** (job.attempts - 1))
            log.warning("job %s: %s; retrying in %.1f s", job.id, reason, delay)
            alone = len(jobs) > 1 or is_oom(exc)
            if self.store.requeue(
                job.id, f"retrying: {reason}", claim=claim, delay_s=delay, run_alone=alone
            ):
                self.backend.broker.send_job(job.id, job.priority, countdown=delay)

    def _timed_out(self, limit: float, jobs: list[Job], claim: str) -> None:
        try:
            for job in jobs:
                self._fail(job, claim, f"exceeded the hard time limit of {limit:.0f} s", "timeout")
        finally:
            log.critical("run of %s exceeded %.0f s; restarting the worker", self.current, limit)
            logging.shutdown()
            self._exit(EXIT_TIMEOUT)

    # -- follow-up text work ----------------------------------------------------------------

    def summarize_job(self, job_id: str) -> str:
        job = self.store.get(job_id)
        if job is None or job.summary_state != PENDING or job.result is None:
            return "skipped"
        result = AnalysisResult.model_validate(job.result)
        try:
            text = self.pipeline.summarize(result, _request(job).language)
        except Exception as exc:
            if is_permanent(exc):
                self.store.summary_done(job_id, None, error=one_line(exc))
                return FAILED
            raise TransientError(one_line(exc)) from exc
        self.store.summary_done(job_id, text)
        return "done"

    def digest_batch(self, batch_id: str) -> str:
        batch, _ = self.store.get_batch(batch_id)
        if batch is None or batch.digest_state != PENDING:
            return "skipped"
        texts = [t for t in self.store.batch_texts(batch_id) if t.strip()]
        if not texts:
            self.store.digest_done(batch_id, None, error="no job of the batch succeeded")
            return FAILED
        try:
            text = self.pipeline.digest(texts, batch.language)
        except Exception as exc:
            if is_permanent(exc):
                self.store.digest_done(batch_id, None, error=one_line(exc))
                return FAILED
            raise TransientError(one_line(exc)) from exc
        self.store.digest_done(batch_id, text)
        return "done"


def _request(job: Job) -> TaskRequest:
    return TaskRequest.model_validate(job.params)


def _ms_between(start: Any, end: Any) -> float | None:
    if start is None or end is None:
        return None
    return (end - start).total_seconds() * 1000
