"""The reconciler: make Redis agree with the job store again, whatever crashed.

- A worker that starts re-queues the jobs the store says it was running (it was killed), so
  they run again within seconds of its return instead of after Redis' visibility timeout.
- Jobs running on a worker that stopped sending heartbeats are re-queued by any live worker.
- Each interrupted run counts as an attempt; after `max_attempts` the job fails as poison.
- Queued jobs, pending summaries and digests whose message is nowhere in Redis (flushed, lost
  with the last second of AOF) are sent again.
- Webhook deliveries that are due (retries, or rows whose ring was lost) get a ring.
- OpenAI batches: the output files of one whose jobs all ended (its last one cancelled from a
  request, or a worker died before writing them), the rest of the lines of one whose web
  request died while queueing them, and the end of one whose completion window ran out.
- Retention: input files of jobs that ended `retention_days` ago are deleted (off by default).

Every change is a conditional write, so reconcilers on several workers can run at once.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from appliance.openai.finish import BatchFinisher
from appliance.store.base import utcnow
from appliance.store.tables import Job

if TYPE_CHECKING:
    from appliance.jobs.backend import JobBackend

log = logging.getLogger(__name__)


class Reconciler:
    def __init__(self, backend: JobBackend, hostname: str | None = None) -> None:
        self.backend = backend
        self.store = backend.store
        self.broker = backend.broker
        self.settings = backend.settings
        self.hostname = hostname
        self.openai_batches = BatchFinisher(backend)

    def recover_worker(self, hostname: str, why: str) -> int:
        """Re-queue (or fail as poison) every job the store says `hostname` is running."""
        jobs = self.store.running_on([hostname])
        for job in jobs:
            self._recover(job, why)
        return len(jobs)

    def run_once(self) -> dict[str, int]:
        """One pass; returns what it did. Safe to call from several processes at once."""
        q = self.settings.queue
        now = utcnow()
        stale_before = now - timedelta(seconds=q.stale_after_s)
        counts = {"recovered": 0, "resent": 0, "batches": 0}
        stale = [h for h in self.store.stale_workers(stale_before) if h != self.hostname]
        for job in self.store.running_on(stale) if stale else []:
            self._recover(job, f"worker {job.worker} stopped responding")
            counts["recovered"] += 1
        for job in self.store.orphaned_running(stale_before):
            self._recover(job, f"worker {job.worker} is unknown")
            counts["recovered"] += 1
        counts["resent"] = self._resend_lost(now - timedelta(seconds=q.lost_after_s))
        for batch_id in self.store.unfinished_closed_batches():
            self.backend.job_ended(batch_id)
            counts["batches"] += 1
        counts["openai_batches"] = self.openai_batches.sweep()
        if self.store.has_due_deliveries(now):
            counts["webhooks"] = int(self.broker.send_webhooks())
        if any(counts.values()):
            log.info("reconciler: %s", counts)
        return counts

    def _recover(self, job: Job, why: str) -> None:
        limit = self.settings.queue.max_attempts
        if job.attempts >= limit:
            reason = (
                f"poison: its worker died {job.attempts} times while running it "
                f"(last on {job.worker}); not retried"
            )
            if self.store.fail(job.id, reason, "poison", claim=job.claim):
                log.error("job %s: %s", job.id, reason)
                self.backend.job_ended(job.batch_id)
            return
        if self.store.requeue(job.id, f"interrupted: {why}", claim=job.claim, run_alone=True):
            log.warning("job %s re-queued: %s (attempt %d)", job.id, why, job.attempts)
            self.broker.send_job(job.id, job.priority)

    def _resend_lost(self, sent_before: datetime) -> int:
        q = self.settings.queue
        queued = self.store.queued_before(sent_before)
        summaries = self.store.pending_summaries(sent_before)
        digests = self.store.pending_digests(sent_before)
        if not (queued or summaries or digests):
            return 0
        try:
            present = self.broker.present_ids(q.stale_after_s)
        except Exception as exc:  # Redis down: nothing to compare with, try next pass
            log.warning("reconciler: cannot read Redis: %s", exc)
            return 0
        resent = 0
        lost = [job for job in queued if job.id not in present]
        for job in lost:
            if self.broker.send_job(job.id, job.priority):
                resent += 1
        if lost:
            self.store.mark_enqueued([job.id for job in lost])
        for job_id in summaries:
            if f"summary-{job_id}" not in present and self.broker.send_summary(job_id):
                resent += 1
        for batch_id in digests:
            if f"digest-{batch_id}" not in present and self.broker.send_digest(batch_id):
                resent += 1
        return resent

    def purge(self) -> int:
        """Delete input files of jobs ended more than `retention_days` ago, from the local
        uploads dir or the shared object store; returns how many files. Never one a queued or
        running job needs, nor a file outside the uploads dir (a drop folder's)."""
        days = self.settings.queue.retention_days
        if not days:
            return 0
        ids, paths = self.store.purgeable(utcnow() - timedelta(days=days))
        blobs = self.backend.blobs
        removed = sum(1 for location in sorted(paths) if blobs.delete(location))
        if ids:
            self.store.mark_purged(ids)
            log.info("retention: purged %d files of %d jobs", removed, len(ids))
        return removed
