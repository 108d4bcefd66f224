"""`JobRunner`: what a worker does with a job message (claim, batch, infer, write once).

1. Claim the job in the store (queued -> running, attempt counted, fresh claim token). A job
   that is not queued (done, cancelled, or a duplicate message) is skipped.
2. Continuous batching: the job starts the worker's in-flight batch, which claims more queued
   first-attempt jobs (any generation parameters, interactive first) while it has free rows;
   their own messages later find them done and are skipped (`runtime.batchloop`).
   Inputs are read through blob storage, their sha256 checked; the safety stage (input check
   before a job's rows join, output check after its last row ends) runs between decode steps.
3. Write each result as its last row ends, only if the claim is still ours (a cancel or a
   takeover voids it); a job the safety stage stops under policy `block` ends BLOCKED instead.
4. Summaries are chained: a `summarize_job` message on the text queue per job that asks (the
   text guard judges it, and batch digests, when the job's policy asks).

Bad input (or a checksum mismatch) fails the job at once with the reason (the file stays);
object storage away is a wait, not an attempt; transient errors re-queue it
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

from appliance.errors import IntakeError, SafetyBlocked, TransientError
from appliance.runtime.failures import is_oom, is_permanent, one_line
from appliance.runtime.watchdog import Watchdog
from appliance.safety.verdicts import blocking, reason
from appliance.schema import AnalysisResult, TaskRequest
from appliance.storage import ChecksumMismatch, StorageUnavailable
from appliance.store.tables import Job
from appliance.vocab import (
    BLOCK,
    BLOCKED,
    DIGEST,
    FAILED,
    FLAG,
    INTERACTIVE,
    OFF,
    PENDING,
    RUNNING,
    SUCCEEDED,
    SUMMARY,
)

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
        # Inputs fetched in a row while the object store was away: the next wait's backoff.
        self._storage_waits = 0
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

    def _load_input(self, job: Job, claim: str, req: TaskRequest) -> list[Image.Image] | str:
        """A joining job's pages, read through blob storage (sha256 checked); or, when it
        cannot join, the outcome after it was failed, re-queued or given back to wait."""
        try:
            self._joining(job)
            data = self.backend.blobs.get(job.input_path, job.input_sha256)
            self._storage_waits = 0
            # A text-only chat's input file is its conversation, which the request already
            # holds: it must be there like any input, but it is no image to decode.
            return self.pipeline.load(data) if req.has_image else []
        except FileNotFoundError:
            self._fail(job, claim, f"input file is missing: {job.input_path}", "missing_input")
        except ChecksumMismatch as exc:
            self._fail(job, claim, str(exc), "checksum")
        except StorageUnavailable as exc:  # a wait, not an attempt: the job stays queued
            self._wait_for_storage(job, claim, exc)
            return "waiting"
        except IntakeError as exc:
            self._fail(job, claim, str(exc), "bad_input")
        except Exception as exc:  # e.g. EIO on a network share: try again later
            self._transient([job], claim, exc)
            return "retrying"
        return FAILED

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
            safety=result.safety,
        )
        if not ok:
            log.info("job %s: result dropped (cancelled or taken over)", job.id)
            return "dropped"
        if wants_summary:
            self.backend.broker.send_summary(job.id)
        self.backend.job_ended(job.batch_id)
        self.jobs_done += 1
        return SUCCEEDED

    def _block(self, job: Job, claim: str, blocked: SafetyBlocked, pages: int) -> str:
        """The safety stage withheld this job: it ends BLOCKED (never retried), file kept."""
        log.warning("job %s blocked: %s", job.id, blocked)
        if not self.store.block(job.id, str(blocked), claim, blocked.checks, pages):
            return "dropped"
        self.backend.job_ended(job.batch_id)
        self.jobs_done += 1
        return BLOCKED

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

    def _wait_for_storage(self, job: Job, claim: str, exc: BaseException) -> None:
        """The store is away: give the job back (its attempt refunded) to be tried after a
        backoff that grows with each wait, so an outage of any length fails nothing."""
        q = self.settings.queue
        self._storage_waits = min(self._storage_waits + 1, 10)
        delay = min(q.retry_backoff_max_s, q.retry_backoff_s * 2 ** (self._storage_waits - 1))
        log.warning("job %s: %s; trying again in %.1f s", job.id, one_line(exc), delay)
        reason = f"waiting for storage: {one_line(exc)}"
        if self.store.requeue(job.id, reason, claim=claim, delay_s=delay, refund_attempt=True):
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
        req = _request(job)
        try:
            text = self.pipeline.summarize(result, req.language)
            withheld = self._check_summary(job_id, req, text)
        except Exception as exc:
            if is_permanent(exc):
                self.store.summary_done(job_id, None, error=one_line(exc))
                return FAILED
            raise TransientError(one_line(exc)) from exc
        if withheld:
            self.store.summary_done(job_id, None, error=withheld)
            return BLOCKED
        self.store.summary_done(job_id, text)
        return "done"

    def _check_summary(self, job_id: str, req: TaskRequest, text: str) -> str | None:
        """The text guard on a summary (policy flag/block): the reason when it is withheld."""
        if req.safety == OFF or not self.settings.safety.check_summaries:
            return None
        check = self.pipeline.check_text(SUMMARY, text)
        self.store.add_safety(job_id, check.to_dict())
        hit = blocking([check], req.safety, self.settings.safety.fail_mode)
        return reason(hit, self.pipeline.safety.categories) if hit else None

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
            withheld = self._check_digest(batch_id, text)
        except Exception as exc:
            if is_permanent(exc):
                self.store.digest_done(batch_id, None, error=one_line(exc))
                return FAILED
            raise TransientError(one_line(exc)) from exc
        if withheld:
            self.store.digest_done(batch_id, None, error=withheld)
            return BLOCKED
        self.store.digest_done(batch_id, text)
        return "done"

    def _check_digest(self, batch_id: str, text: str) -> str | None:
        """The text guard on a batch digest when its jobs' policies ask (the strictest one
        decides): the reason when it is withheld."""
        modes = self.store.batch_safety_modes(batch_id) - {OFF}
        if not modes or not self.settings.safety.check_summaries:
            return None
        mode = BLOCK if BLOCK in modes else FLAG
        check = self.pipeline.check_text(DIGEST, text)
        log.info("batch %s digest: safety %s %s", batch_id, check.verdict, check.categories)
        hit = blocking([check], mode, self.settings.safety.fail_mode)
        return reason(hit, self.pipeline.safety.categories) if hit else None


def _request(job: Job) -> TaskRequest:
    return TaskRequest.model_validate(job.params)


def _ms_between(start: Any, end: Any) -> float | None:
    if start is None or end is None:
        return None
    return (end - start).total_seconds() * 1000
