"""`JobRunner`: what a worker does with a job message (claim, batch, infer, write once).

1. Claim the job in the store (queued -> running, attempt counted, fresh claim token). A job
   that is not queued (done, cancelled, or a duplicate message) is skipped.
2. Dynamic batching: claim up to `batch_size - 1` more first-attempt queued jobs with the same
   generation parameters, waiting at most `batch_wait_ms`, and run all of them through one
   `Pipeline.analyze_many` (their own messages later find them done and are skipped).
3. Write each result only if the claim is still ours (a cancel or a takeover voids it).
4. Summaries are chained: a `summarize_job` message on the text queue per job that asks.

Bad input fails the job at once with the reason (the file stays); transient errors re-queue it
with exponential backoff; after `max_attempts` the job fails with the last reason. A run that
outlives its hard time limit fails its jobs and ends the worker process (the supervisor starts
a fresh one): a stuck GPU call cannot be interrupted any other way.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from appliance.errors import Cancelled, IntakeError, SafetyBlocked, TransientError
from appliance.runtime.failures import error_code, is_oom, is_permanent, one_line
from appliance.runtime.watchdog import Watchdog
from appliance.safety.verdicts import blocking, reason
from appliance.schema import AnalysisResult, TaskRequest
from appliance.storage import ChecksumMismatch, StorageUnavailable
from appliance.store.tables import Job
from appliance.vocab import (
    BLOCK,
    BLOCKED,
    CANCELLED,
    DIGEST,
    FAILED,
    FLAG,
    OFF,
    PENDING,
    RUNNING,
    SUCCEEDED,
    SUMMARY,
)

if TYPE_CHECKING:
    from PIL import Image

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
        self._stop = threading.Event()
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
        """Handle one `run_job` message. Returns a one-word outcome for the log."""
        with self.lock:
            claim = uuid.uuid4().hex
            primary = self.store.claim(
                job_id, worker=self.hostname, device=self.device, claim=claim
            )
            if primary is None:
                return "skipped"
            jobs = [primary]
            q = self.settings.queue
            if q.batch_size > 1 and not primary.run_alone and primary.attempts == 1:
                jobs += self._companions(primary, claim)
            with self._guard:
                self.current = [j.id for j in jobs]
                self._run_claim = claim
                self._stop.clear()
            self.changed.set()
            self.watchdog.arm(q.time_limit_s * len(jobs), jobs, claim)
            try:
                return self._execute(jobs, claim)
            finally:
                self.watchdog.disarm()
                with self._guard:
                    self.current, self._run_claim = [], None
                self.changed.set()

    def check_cancelled(self) -> bool:
        """Stop the running generation when none of its jobs is still ours to finish
        (cancelled, or taken over). Called from the worker's heartbeat and cancel-listener
        threads; True if it stopped."""
        with self._guard:
            claim, ids = self._run_claim, list(self.current)
        if claim is None or self._stop.is_set():
            return False
        if any(j.state == RUNNING and j.claim == claim for j in self.store.get_many(ids)):
            return False
        with self._guard:
            if self._run_claim != claim:
                return False
            self._stop.set()
        log.info("stopping the generation of %s: cancelled", ", ".join(ids))
        return True

    def _companions(self, primary: Job, claim: str) -> list[Job]:
        q = self.settings.queue
        deadline = time.monotonic() + q.batch_wait_ms / 1000
        found: list[Job] = []
        while True:
            found += self.store.claim_companions(
                primary,
                q.batch_size - 1 - len(found),
                worker=self.hostname,
                device=self.device,
                claim=claim,
            )
            left = deadline - time.monotonic()
            if len(found) >= q.batch_size - 1 or left <= 0:
                return found
            time.sleep(min(0.01, left))

    def _execute(self, jobs: list[Job], claim: str) -> str:
        loaded: list[tuple[Job, list[Image.Image], float]] = []
        for job in jobs:
            started = time.perf_counter()
            try:
                data = self.backend.blobs.get(job.input_path, job.input_sha256)
                self._storage_waits = 0
                # A text-only chat's input file is its conversation, which the request already
                # holds: it must be there like any input, but it is no image to decode.
                pages = self.pipeline.load(data) if _request(job).has_image else []
            except FileNotFoundError:
                self._fail(job, claim, f"input file is missing: {job.input_path}", "missing_input")
                continue
            except ChecksumMismatch as exc:
                self._fail(job, claim, str(exc), "checksum")
                continue
            except StorageUnavailable as exc:  # a wait, not an attempt: the job stays queued
                self._wait_for_storage(job, claim, exc)
                continue
            except IntakeError as exc:
                self._fail(job, claim, str(exc), "bad_input")
                continue
            except Exception as exc:  # e.g. EIO on a network share: try again later
                self._transient([job], claim, exc)
                continue
            loaded.append((job, pages, (time.perf_counter() - started) * 1000))
        if not loaded:
            return FAILED
        return self._infer_and_write(loaded, claim)

    def _infer_and_write(
        self, loaded: list[tuple[Job, list[Image.Image], float]], claim: str
    ) -> str:
        jobs = [job for job, _, _ in loaded]
        items = [
            (pages, _request(job).model_copy(update={"summarize": False}))
            for job, pages, _ in loaded
        ]
        started = time.perf_counter()
        try:
            results = self._infer(jobs, items)
        except Cancelled:
            return CANCELLED  # the store already says so; nothing to write
        except Exception as exc:
            if is_oom(exc) or not is_permanent(exc):
                self._transient(jobs, claim, exc)
                return "retrying"
            if len(loaded) > 1:  # find the culprit: the others must not fail with it
                outcomes = [self._infer_and_write([one], claim) for one in loaded]
                return SUCCEEDED if SUCCEEDED in outcomes else outcomes[0]
            self._fail(jobs[0], claim, str(exc) or type(exc).__name__, error_code(exc))
            return FAILED
        run_ms = (time.perf_counter() - started) * 1000
        written = 0
        for (job, pages, intake_ms), result in zip(loaded, results, strict=True):
            if isinstance(result, SafetyBlocked):
                written += self._block(job, claim, result, len(pages))
                continue
            timings: dict[str, Any] = dict(result.timings)
            timings.update(
                intake_ms=intake_ms,
                run_ms=run_ms,
                queue_ms=_ms_between(job.created_at, job.started_at),
                batch_size=len(loaded),
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
                continue
            written += 1
            if wants_summary:
                self.backend.broker.send_summary(job.id)
            self.backend.job_ended(job.batch_id)
        self.jobs_done += written
        return SUCCEEDED if written else "dropped"

    def _infer(
        self, jobs: list[Job], items: list[tuple[list[Image.Image], TaskRequest]]
    ) -> list[AnalysisResult | SafetyBlocked]:
        """The model call (one padded batch for all items, each with its safety policy's
        checks); a seam for the chaos tests."""
        return self.pipeline.analyze_checked(items, should_stop=self._stop.is_set)

    def _block(self, job: Job, claim: str, blocked: SafetyBlocked, pages: int) -> int:
        """The safety stage withheld this job: it ends BLOCKED (never retried), file kept."""
        log.warning("job %s blocked: %s", job.id, blocked)
        if not self.store.block(job.id, str(blocked), claim, blocked.checks, pages):
            return 0
        self.backend.job_ended(job.batch_id)
        return 1

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
