"""`JobLoop`: a worker's continuous batch of jobs on the vision engine's in-flight batch.

A `run_job` message starts the loop with its job. While the batch has free rows, the loop
claims more queued first-attempt jobs from the store (interactive ones first, any generation
parameters: each row samples on its own): at once when a row leaves, else every
`queue.batch_wait_ms`; their own messages later
find them running or done and are skipped (`acks_late` stays: a SIGKILL leaves the message
unacked, and the restarted worker's reconciler re-queues every job it was running, once).
A job's pages are rows; they join as rows free up, interactive rows ahead of bulk ones. A job
is written the moment its last row ends, while the others keep decoding.

A joining job's input is read through blob storage (`JobRunner._load_input`). The safety stage
(policy per job, `req.safety`) runs as guard batches on this thread between decode steps: the
input check of the jobs joining in a step before any of their rows is admitted (a blocked job
never runs), the output check of the jobs whose last row ended in a step before their results
are written (a blocked answer is withheld); the checks are stored with the job.

The loop ends when the batch is empty and nothing is queued. It stops claiming after
`time_limit_s * (batch_size - 1)` so the message is acked within the bound the visibility
timeout is checked against. The hard time limit is per row (a row that outlives it fails as
`timeout`), and per decode step on the watchdog (a step stuck that long ends the process).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from appliance.engines.inflight import default_budget
from appliance.engines.run import ItemRun
from appliance.errors import Cancelled
from appliance.runtime.failures import error_code, is_oom, is_permanent
from appliance.schema import TaskRequest
from appliance.vocab import CANCELLED, FAILED, INTERACTIVE, SUCCEEDED

if TYPE_CHECKING:
    from PIL import Image

    from appliance.engines.inflight import Finished, InflightBatch
    from appliance.safety.verdicts import Check
    from appliance.schema import AnalysisResult
    from appliance.store.tables import Job


class LoopHost(Protocol):
    """What the loop needs from its `JobRunner` (which imports this module: no import back)."""

    settings: Any
    store: Any
    pipeline: Any
    watchdog: Any
    hostname: str
    device: str

    def set_current(self, ids: list[str], claim: str | None) -> None: ...
    def take_stopped(self) -> set[str]: ...
    def streamer(self, job: Job) -> Callable[[str], None] | None: ...
    def _joining(self, job: Job) -> None: ...
    def _step(self, batch: InflightBatch) -> list[Finished]: ...
    def _load_input(self, job: Job, claim: str, req: TaskRequest) -> list | str: ...
    def _block(self, job: Job, claim: str, blocked: Any, pages: int) -> str: ...
    def _fail(self, job: Job, claim: str, reason: str, code: str) -> None: ...
    def _transient(self, jobs: list[Job], claim: str, exc: BaseException) -> None: ...
    def _write(self, job: Job, claim: str, pages: list, intake_ms: float, result: Any,
               run_ms: float, batch_size: int) -> str: ...  # fmt: skip


log = logging.getLogger(__name__)


@dataclass
class _Item:
    job: Job
    run: ItemRun
    pages: list[Image.Image]
    intake_ms: float
    started: float = field(default_factory=time.perf_counter)
    checks: list[Check] = field(default_factory=list)  # its safety checks so far


class JobLoop:
    def __init__(self, runner: LoopHost, claim: str, primary: Job) -> None:
        self.runner = runner
        self.claim = claim
        self.primary = primary
        q = runner.settings.queue
        self.q = q
        engine = runner.pipeline.vision
        budget = (
            default_budget(engine.device, q.gpu_memory_fraction)
            if engine.device.type == "cuda"
            else q.batch_memory_mb << 20
        )
        # A retried job (it may have killed its worker) and a job sent back to run alone
        # (an OOM) get the batch to themselves.
        alone = primary.run_alone or primary.attempts > 1 or q.batch_size <= 1
        self.alone = alone
        self.batch: InflightBatch = engine.inflight(
            1 if alone else q.batch_size, budget_bytes=budget, static=not q.continuous
        )
        self.items: dict[str, _Item] = {}
        self.outcomes: list[str] = []
        self.ended: list[tuple[_Item, AnalysisResult]] = []  # last row done, not yet written
        self.claim_until = time.monotonic() + q.time_limit_s * max(1, q.batch_size - 1)

    # -- the loop ---------------------------------------------------------------------------

    def run(self) -> str:
        self._join([self.primary])
        next_poll = 0.0  # look for companions at once: the first step takes them too
        freed = False  # a row left in the last step
        while True:
            self._drop_stopped()
            now = time.monotonic()
            # A row that just left is refilled at once: waiting for the next poll left it
            # empty for half a poll interval on average (~10 steps of a tiny model).
            if freed or now >= next_poll or not self.batch.busy:
                next_poll = now + self.q.batch_wait_ms / 1000
                self._join(self._claim_more())
            if not self.batch.busy:
                break
            self.runner.watchdog.arm(self.q.time_limit_s, self._jobs(), self.claim)
            try:
                finished = self.runner._step(self.batch)
            except Exception as exc:  # the whole batch's failure (an OOM, a broken step)
                self._batch_failed(exc)
                continue
            finally:
                self.runner.watchdog.disarm()
            freed = bool(finished)
            for done in finished:
                self._row_done(done)
            self._write_ended()
        if SUCCEEDED in self.outcomes:
            return SUCCEEDED
        return self.outcomes[0] if self.outcomes else FAILED

    def _jobs(self) -> list[Job]:
        return [item.job for item in self.items.values()]

    def _may_claim(self) -> bool:
        if time.monotonic() > self.claim_until:
            return False
        if self.alone:
            # With batch_size 1 the loop still takes the next queued job the moment its row
            # ends, rather than going back through Celery (ack, fetch, deliver, claim): that
            # round trip left the model idle ~10 % of a short job's time (bench/pipeline.py).
            return self.q.batch_size <= 1 and not self.batch.busy and not self.primary.run_alone
        return self.batch.free_rows > 0 and (self.q.continuous or not self.batch.busy)

    def _claim_more(self) -> list[Job]:
        if not self._may_claim():
            return []
        return self.runner.store.claim_companions(
            self.primary,
            self.batch.free_rows,
            worker=self.runner.hostname,
            device=self.runner.device,
            claim=self.claim,
            same_params=False,
        )

    def _join(self, jobs: list[Job]) -> None:
        """Jobs join: their input read and decoded, then (policy flag/block) the input check,
        one guard batch for all of them; a job the check blocks never gets a row."""
        runner, joining = self.runner, []
        for job in jobs:
            started = time.perf_counter()
            req = TaskRequest.model_validate(job.params).model_copy(update={"summarize": False})
            pages = runner._load_input(job, self.claim, req)
            if isinstance(pages, str):  # failed, re-queued or waiting for storage
                self.outcomes.append(pages)
                continue
            joining.append((job, req, pages, (time.perf_counter() - started) * 1000))
        checks = self._guarded(
            [job for job, *_ in joining],
            lambda: runner.pipeline.input_checks([(pages, req) for _, req, pages, _ in joining]),
        )
        if checks is None:  # the guard failed: the jobs went back to the queue (or failed)
            joining, checks = [], []
        for (job, req, pages, intake_ms), check in zip(joining, checks, strict=True):
            if check is not None and self._stopped_by(job, req, [check], len(pages)):
                continue
            run = ItemRun(
                pages,
                req,
                runner.settings.generation,
                priority=0 if job.priority == INTERACTIVE else 1,
                deadline=time.monotonic() + self.q.time_limit_s,
                on_text=runner.streamer(job),
            )
            item = _Item(job, run, pages, intake_ms, checks=[check] if check else [])
            self.items[job.id] = item
            for row in run.rows():
                self.batch.add(row)
        runner.set_current([item.job.id for item in self.items.values()], self.claim)

    def _guarded(self, jobs: list[Job], call: Callable[[], list[Check | None]]) -> Any:
        """A guard batch for `jobs` between decode steps, under the watchdog like a step; if
        it raises, the jobs go back to the queue (or, permanent, fail) and this gives None."""
        if not jobs:
            return []
        self.runner.watchdog.arm(self.q.time_limit_s, [*self._jobs(), *jobs], self.claim)
        try:
            return call()
        except Exception as exc:
            self._failed(jobs, exc)
            return None
        finally:
            self.runner.watchdog.disarm()

    def _stopped_by(self, job: Job, req: TaskRequest, checks: list[Check], pages: int) -> bool:
        """Whether the last check blocks the job under its policy; if so it ends BLOCKED."""
        hit = self.runner.pipeline.blocks(checks[-1], req)
        if hit is None:
            return False
        blocked = self.runner.pipeline.withheld(hit, [c.to_dict() for c in checks])
        self.outcomes.append(self.runner._block(job, self.claim, blocked, pages))
        return True

    def _leave(self, job_id: str) -> None:
        item = self.items.pop(job_id, None)
        if item is not None:
            for page in range(len(item.run.pages)):
                self.batch.cancel((item.run, page))
            self.runner.set_current(list(self.items), self.claim)

    def _drop_stopped(self) -> None:
        for job_id in self.runner.take_stopped():
            if job_id in self.items:
                log.info("job %s: cancelled while it ran; its rows leave the batch", job_id)
                self._leave(job_id)
                self.outcomes.append(CANCELLED)

    # -- rows that ended --------------------------------------------------------------------

    def _item_of(self, done: Finished) -> _Item | None:
        run, _page = done.key
        return next((i for i in self.items.values() if i.run is run), None)

    def _row_done(self, done: Finished) -> None:
        item = self._item_of(done)
        if item is None:  # a row of a job that already left (cancelled, failed)
            return
        job = item.job
        if done.error is not None:
            self._leave(job.id)
            exc = done.error
            if isinstance(exc, Cancelled):
                self.outcomes.append(CANCELLED)
            elif isinstance(exc, TimeoutError):
                limit = f"exceeded the hard time limit of {self.q.time_limit_s:.0f} s"
                self.runner._fail(job, self.claim, limit, "timeout")
                self.outcomes.append(FAILED)
            elif is_oom(exc) or not is_permanent(exc):
                self.runner._transient([job], self.claim, exc)
                self.outcomes.append("retrying")
            else:
                self.runner._fail(job, self.claim, str(exc) or type(exc).__name__, error_code(exc))
                self.outcomes.append(FAILED)
            return
        assert done.generation is not None
        for row in item.run.finish(done.key[1], done.generation):
            self.batch.add(row)
        if not item.run.done:
            return
        self.items.pop(job.id)
        self.runner.set_current(list(self.items), self.claim)
        results = item.run.results()
        if not isinstance(results, list):
            self.runner._fail(job, self.claim, str(results), error_code(results))
            self.outcomes.append(FAILED)
            return
        wall_ms = (time.perf_counter() - item.started) * 1000
        self.ended.append((item, self.runner.pipeline.result_for(item.run.req, results, wall_ms)))

    def _write_ended(self) -> None:
        """The jobs whose last row ended in this step: (policy flag/block) the output check,
        one guard batch for all of them, then each result written, or withheld (BLOCKED)."""
        ended, self.ended = self.ended, []
        checks = self._guarded(
            [item.job for item, _ in ended],
            lambda: self.runner.pipeline.output_checks(
                [(item.pages, item.run.req) for item, _ in ended], [r for _, r in ended]
            ),
        )
        if checks is None:  # the guard failed: the jobs went back to the queue (or failed)
            ended, checks = [], []
        for (item, result), check in zip(ended, checks, strict=True):
            job, pages = item.job, item.pages
            if check is not None:
                item.checks.append(check)
                if self._stopped_by(job, item.run.req, item.checks, len(pages)):
                    continue
            result.safety = [c.to_dict() for c in item.checks]
            wall_ms = (time.perf_counter() - item.started) * 1000
            peak = int(max(p.timings.get("batch_size", 1.0) for p in result.pages))
            self.outcomes.append(
                self.runner._write(job, self.claim, pages, item.intake_ms, result, wall_ms, peak)
            )

    def _batch_failed(self, exc: BaseException) -> None:
        """A step failed for the whole batch: every job in it goes back to the queue (to run
        alone, so the culprit fails by itself) or, alone and permanent, fails."""
        jobs = self._jobs()
        self.batch.clear()
        self.items.clear()
        self.runner.set_current([], self.claim)
        self._failed(jobs, exc)

    def _failed(self, jobs: list[Job], exc: BaseException) -> None:
        _free_gpu_memory(exc)
        if len(jobs) == 1 and is_permanent(exc) and not is_oom(exc):
            self.runner._fail(jobs[0], self.claim, str(exc) or type(exc).__name__, error_code(exc))
            self.outcomes.append(FAILED)
            return
        self.runner._transient(jobs, self.claim, exc)
        self.outcomes.append("retrying")


def _free_gpu_memory(exc: BaseException) -> None:
    if is_oom(exc):
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def run_loop(runner: LoopHost, claim: str, primary: Job) -> Any:
    """The loop on the model thread (see `engines.model_thread`)."""
    loop = JobLoop(runner, claim, primary)
    return runner.pipeline.thread.run(loop.run)
