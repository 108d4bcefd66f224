"""The watch loop. A file's walk through it goes one way, each step in its own module:

    event -> settle -> claim              events.py (watchdog, rescans, stability.py, claims.py)
    -> duplicate? -> finish as one        dedupe.py
    -> submit -> poll -> finish           here, on the job queue (port.py)
    -> sidecars, move -> batch digest     outputs.py, digests.py

Completion is noticed by polling the store for this watcher's outstanding claims (one bulk
query every `JOB_POLL_SECONDS`), not by trusting an event stream: after a crash the claims in
`.processing/` *are* the list of things to finish, so a restart needs nothing else.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from appliance.errors import ApplianceError
from appliance.schema import TaskRequest
from appliance.settings import DropFolder, Settings
from appliance.vocab import BLOCKED, FAILED, SUCCEEDED
from appliance.watch.claims import Claim, FolderBusy, FolderLock, load_claims
from appliance.watch.dedupe import Dedupe
from appliance.watch.digests import Digests
from appliance.watch.events import FolderEvents, start_observers, stop_observers
from appliance.watch.outputs import Outputs, sidecar_field
from appliance.watch.port import Jobs, JobView

__all__ = ["FolderBusy", "FolderWatcher", "Watcher", "folder_request"]

log = logging.getLogger(__name__)

JOB_POLL_SECONDS = 0.5


def folder_request(folder: DropFolder) -> TaskRequest:
    """The analysis every file of this folder gets."""
    return TaskRequest(
        task=folder.task,  # type: ignore[arg-type]  # validated by TaskRequest itself
        prompt=folder.prompt,
        labels=folder.labels,
        fields=folder.fields,
        language=folder.language,
        summarize=folder.summarize,
        safety=folder.safety,
    )


class FolderWatcher:
    """One drop folder. Drive it with `start()`, then `tick()` until `idle()` (or forever)."""

    def __init__(
        self,
        folder: DropFolder,
        jobs: Jobs,
        *,
        on_submitted: Callable[[Claim], None] | None = None,
    ) -> None:
        self.folder = folder.model_copy(update={"path": Path(folder.path).resolve()})
        self.root = self.folder.path
        self.jobs = jobs
        self.request = folder_request(folder)
        self.lock = FolderLock(self.root)
        self.outputs = Outputs(self.folder, self.request)
        self.events = FolderEvents(self.folder, self.outputs.layout.reserved_dirs())
        self.dedupe = Dedupe(self.folder, self.request.model_dump_json())
        self.digests = Digests(self.folder, self.outputs.layout, jobs)
        self.outstanding: dict[str, Claim] = {}  # claim name -> claim
        self.on_submitted = on_submitted
        self._last_poll = 0.0

    # -- start-up and reconciliation ----------------------------------------------------------

    def start(self) -> None:
        self.lock.acquire()  # creates the folder and .processing/ first
        self.dedupe.index.load()
        claims = load_claims(self.root)
        self.digests.load(claims)
        for c in claims:
            self._resume(c)
        self.rescan()

    def close(self) -> None:
        self.lock.release()

    def _resume(self, c: Claim) -> None:
        """A claim found on start: finish it, or (re-)submit it. The key makes re-submits safe."""
        if c.sha256 is None or c.size is None:
            c.hash()
        if c.batch_id is None:
            self.digests.assign(c)
        self.outstanding[c.name] = c
        if c.job_id is None:
            self._dispatch(c)
        else:
            self.dedupe.resumed(c)
        # Claims with a job id are checked by the next poll, which also re-submits missing jobs.

    def rescan(self) -> None:
        """Walk the folder: files present at start, and whatever events were missed."""
        self.events.rescan()

    # -- the loop -----------------------------------------------------------------------------

    def tick(self, *, final: bool = False) -> None:
        for path in self.events.complete():
            try:
                self._take(path)
            except Exception:
                # One odd file (permissions, a vanished share) must not stop the folder; the
                # next rescan offers it again if it is still there.
                log.exception("taking %s failed", path)
        if self.outstanding and time.monotonic() - self._last_poll >= JOB_POLL_SECONDS:
            self._poll()
        self.dedupe.index.prune_when_due()
        self.digests.finish(force=final and not self.outstanding and not len(self.events))

    def idle(self) -> bool:
        return not len(self.events) and not self.outstanding and not self.digests.pending()

    def next_due(self) -> float | None:
        """Seconds until this folder has work: a file's settle deadline or the next job poll."""
        due = self.events.next_due()
        if self.outstanding:
            due = JOB_POLL_SECONDS if due is None else min(due, JOB_POLL_SECONDS)
        return due

    # -- one file's walk ----------------------------------------------------------------------

    def _take(self, path: Path) -> None:
        if self.outputs.already_done(path):
            return
        c = self.events.claim(path)
        if c is None:
            return
        self.digests.assign(c)
        self.outstanding[c.name] = c
        try:
            c.hash()
        except OSError as exc:
            # Ours now but unreadable (permissions, I/O error): failed/, with the reason.
            self._finish(c, JobView(id="", state=FAILED, error=f"cannot read the file: {exc}"))
            return
        self._dispatch(c)

    def _dispatch(self, c: Claim) -> None:
        """Link to an earlier result, wait on an identical in-flight file, or submit."""
        assert c.sha256 is not None
        earlier = self.dedupe.earlier(c)
        if earlier is not None:
            self._finish_duplicate(c, earlier)
            return
        if self.dedupe.wait_behind_twin(c):
            c.save()  # its hash and batch outlive a restart
            return
        self._submit(c)

    def _submit(self, c: Claim) -> None:
        try:
            c.job_id = self.jobs.submit(
                c.path.read_bytes(),
                c.rel.name,
                self.request,
                batch_id=self.digests.queue_batch(c),
                idempotency_key=c.idempotency_key,
            )
        except ApplianceError as exc:
            if exc.transient:  # the object store is away: a wait, never the file's fault
                log.warning("submit of %s waits: %s; will retry", c.rel, exc)
                return
            # The queue refused the file itself (type, size, pages): a final answer.
            self._finish(c, JobView(id="", state=FAILED, error=str(exc)))
            return
        except Exception:
            # Redis or the store is down, the disk is full: keep the claim, retry next poll.
            log.exception("submit of %s failed; will retry", c.rel)
            return
        c.save()
        if self.on_submitted is not None:
            self.on_submitted(c)

    def _poll(self) -> None:
        self._last_poll = time.monotonic()
        pending = [c for c in self.outstanding.values() if c.job_id]
        for c in list(self.outstanding.values()):
            if c.job_id is None and not self.dedupe.is_waiting(c):
                self._dispatch(c)  # an earlier submit failed: retry
        if not pending:
            return
        try:
            views = self.jobs.get_many([c.job_id for c in pending if c.job_id])
        except Exception:
            log.exception("job store unreachable; will retry")
            return
        for c in pending:
            view = views.get(c.job_id or "")
            if view is None:
                # The store lost the job (restored backup, wiped DB): the claim is the truth.
                log.warning("job %s of %s is missing; submitting again", c.job_id, c.rel)
                c.job_id = None
                self._submit(c)
            elif view.terminal:
                try:
                    self._finish(c, view)
                except OSError:
                    # Disk full or the share went away: keep the claim, retry (paperless #8329).
                    log.exception("finishing %s failed; will retry", c.rel)

    def _finish(self, c: Claim, view: JobView) -> None:
        if not c.path.exists():
            # Someone removed it from .processing/ by hand: nothing left to place.
            log.warning("claimed file %s vanished; dropping its claim", c.path)
            self._done_with(c)
            return
        if view.state == BLOCKED:
            final, reason = self.outputs.blocked(c, view)
            entry = {"file": final.name, "error": reason}
        elif view.state == SUCCEEDED and view.result is not None:
            final, text = self.outputs.succeeded(c, view.id, view.result)
            self.dedupe.succeeded(c, view.id, self.outputs.sidecar(c, final))
            entry = {"file": final.name, "text": text}
        else:
            final, reason = self.outputs.failed(c, view)
            entry = {"file": final.name, "error": reason}
        self._place(c, final, entry)
        for twin in self.dedupe.release(c):
            # Finds c's result in the index; if c failed, the twin gets its own chance.
            self._dispatch(twin)

    def _finish_duplicate(self, c: Claim, earlier: dict[str, Any]) -> None:
        """Same content as an earlier success: link to it instead of a second GPU run."""
        sidecar = earlier.get("json")
        result = sidecar_field(Path(sidecar), "result") if sidecar else None
        if result is None:
            # The earlier sidecar is gone: forget it and run this one for real.
            self.dedupe.index.forget(c.sha256 or "")
            self._dispatch(c)
            return
        duplicate_of = {"job_id": earlier.get("job_id"), "file": sidecar}
        final, text = self.outputs.succeeded(c, earlier.get("job_id", ""), result, duplicate_of)
        self._place(c, final, {"file": final.name, "text": text})

    def _place(self, c: Claim, final: Path, entry: dict[str, Any]) -> None:
        """The batch learns of it before the move: a crash in between re-records, not loses."""
        self.digests.record(c, entry)
        self.outputs.place(c, final)
        self._done_with(c)

    def _done_with(self, c: Claim) -> None:
        c.drop_manifest()
        self.outstanding.pop(c.name, None)


class Watcher:
    """All configured folders, one loop. `run(stop)` until the stop flag, or `once=True`."""

    def __init__(
        self,
        folders: list[DropFolder],
        jobs: Jobs,
        *,
        on_submitted: Callable[[Claim], None] | None = None,
    ) -> None:
        self.folders = [FolderWatcher(f, jobs, on_submitted=on_submitted) for f in folders]
        self.observers: list[Any] = []
        # Set once observers run and reconciliation is done: tests and the bench wait on it.
        self.started = threading.Event()
        self.wake = threading.Event()
        for fw in self.folders:
            fw.events.handler.wake = self.wake

    @classmethod
    def from_settings(cls, settings: Settings, **kwargs: Any) -> Watcher:
        from appliance.watch.service import ServiceJobs

        return cls(settings.folders, ServiceJobs.from_settings(settings), **kwargs)

    def run(self, stop: threading.Event | None = None, *, once: bool = False) -> None:
        """Watch until `stop` is set; with `once`, take what is there now, finish it, return."""
        stop = stop or threading.Event()
        for fw in self.folders:
            fw.root.mkdir(parents=True, exist_ok=True)
        if not once:
            # Observers first, then the start-up scan: a file landing in between is not lost.
            self.observers = start_observers(fw.events for fw in self.folders)
        try:
            for fw in self.folders:
                fw.start()
            self.started.set()
            # Sleep until an event, the next file's settle deadline, or the next job poll.
            interval = 0.25
            while not stop.is_set():
                self.wake.clear()  # before the tick: an event during it wakes the next wait
                for fw in self.folders:
                    fw.tick(final=once and not len(fw.events))
                if once and all(fw.idle() for fw in self.folders):
                    return
                due = [d for fw in self.folders if (d := fw.next_due()) is not None]
                self.wake.wait(min([interval, *due]) + 0.005)
        finally:
            for fw in self.folders:
                fw.close()
            stop_observers(self.observers)
