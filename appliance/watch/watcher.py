"""The watch loop: events and rescans feed the stability tracker; complete files are claimed,
submitted at bulk priority, and finished from the job store.

Completion is noticed by polling the store for this watcher's outstanding claims (one bulk
query every `JOB_POLL_SECONDS`), not by trusting an event stream: after a crash the claims in
`.processing/` *are* the list of things to finish, so a restart needs nothing else.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import threading
import time
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import Any

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer
from watchdog.observers.polling import PollingObserver

from appliance.errors import ApplianceError
from appliance.schema import TaskRequest
from appliance.settings import DropFolder, Settings
from appliance.vocab import FAILED, SUCCEEDED
from appliance.watch.claims import Claim, FolderBusy, FolderLock, claim, load_claims
from appliance.watch.dedupe import Dedupe
from appliance.watch.digests import Digests
from appliance.watch.filters import PathFilter, relative
from appliance.watch.outputs import Outputs
from appliance.watch.port import Jobs, JobView
from appliance.watch.stability import StabilityTracker

__all__ = ["FolderBusy", "FolderWatcher", "Watcher", "folder_request"]

log = logging.getLogger(__name__)

JOB_POLL_SECONDS = 0.5


def folder_request(folder: DropFolder) -> TaskRequest:
    return TaskRequest(
        task=folder.task,  # type: ignore[arg-type]  # validated by TaskRequest itself
        prompt=folder.prompt,
        labels=folder.labels,
        fields=folder.fields,
        language=folder.language,
        summarize=folder.summarize,
    )


class _Handler(FileSystemEventHandler):
    """Runs in the observer thread: only hands events over, the loop thread does the work."""

    def __init__(self, sink: queue.SimpleQueue[tuple[str, str, str | None, bool]]) -> None:
        self.sink = sink
        # Wakes the loop at once, so a file's settle time starts at its last event, not at the
        # next tick (the Watcher replaces it with its shared one).
        self.wake = threading.Event()

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.event_type in ("opened", "closed_no_write"):
            return
        dest = os.fsdecode(event.dest_path) if event.dest_path else None
        self.sink.put((event.event_type, os.fsdecode(event.src_path), dest, event.is_directory))
        self.wake.set()


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
        self.outputs = Outputs(self.folder, self.request)
        self.layout = self.outputs.layout
        self.filter = PathFilter(self.folder, self.layout.reserved_dirs())
        self.tracker = StabilityTracker(self.folder.settle_seconds)
        self.digests = Digests(self.folder, self.layout, jobs)
        self.events: queue.SimpleQueue[tuple[str, str, str | None, bool]] = queue.SimpleQueue()
        self.handler = _Handler(self.events)
        self.outstanding: dict[str, Claim] = {}  # claim name -> claim
        self.dedupe = Dedupe(self.folder, self.request.model_dump_json())
        self.on_submitted = on_submitted
        self._last_rescan = 0.0
        self._last_poll = 0.0
        self.lock = FolderLock(self.root)

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
        self._last_rescan = time.monotonic()
        for dirpath, dirnames, filenames in os.walk(self.root):
            rel_dir = PurePosixPath(Path(dirpath).relative_to(self.root).as_posix())
            if rel_dir.parts and self.filter.dir_ignored(rel_dir):
                dirnames[:] = []
                continue
            dirnames[:] = [d for d in dirnames if not self.filter.dir_ignored(rel_dir / d)]
            for name in filenames:
                self._hint(Path(dirpath) / name, rel_dir / name)

    # -- the loop -----------------------------------------------------------------------------

    def tick(self, *, final: bool = False) -> None:
        self._drain_events()
        if time.monotonic() - self._last_rescan >= self.folder.rescan_seconds:
            self.rescan()
        for path in self.tracker.ready():
            try:
                self._take(path)
            except Exception:
                # One odd file (permissions, a vanished share) must not stop the folder; the
                # next rescan offers it again if it is still there.
                log.exception("taking %s failed", path)
        if self.outstanding and time.monotonic() - self._last_poll >= JOB_POLL_SECONDS:
            self._poll()
        self.dedupe.index.prune_when_due()
        self.digests.finish(force=final and not self.outstanding and not len(self.tracker))

    def idle(self) -> bool:
        return not len(self.tracker) and not self.outstanding and not self.digests.pending()

    def _drain_events(self) -> None:
        while True:
            try:
                kind, src, dest, is_dir = self.events.get_nowait()
            except queue.Empty:
                return
            if is_dir:
                if kind in ("created", "moved") and self.folder.recursive:
                    self._walk_dir(Path(dest or src))
                continue
            if kind == "deleted":
                self.tracker.forget(Path(src))
                continue
            if kind == "moved":
                self.tracker.forget(Path(src))
                src_rel = self._rel(Path(src))
                renamed_in = src_rel is None or not self.filter.accepts(src_rel)
                self._hint(Path(dest or src), force=self.folder.rename_completes and renamed_in)
                continue
            self._hint(Path(src))

    def _walk_dir(self, directory: Path) -> None:
        for dirpath, _dirs, filenames in os.walk(directory):
            for name in filenames:
                self._hint(Path(dirpath) / name)

    def _rel(self, path: Path) -> PurePosixPath | None:
        return relative(self.root, path)

    def _hint(self, path: Path, rel: PurePosixPath | None = None, force: bool = False) -> None:
        rel = rel if rel is not None else self._rel(path)
        if rel is None:
            return
        if self.filter.is_marker(rel):
            target = path.with_name(rel.name[: -len(self.folder.marker_suffix)])
            target_rel = rel.with_name(target.name)
            if self.filter.accepts(target_rel) and target.exists():
                self.tracker.force(target)
            elif not target.exists() and not path.exists():
                return
            return
        if not self.filter.accepts(rel):
            return
        marker = path.with_name(path.name + self.folder.marker_suffix)
        if force or (self.folder.marker_suffix and marker.exists()):
            self.tracker.force(path)
        else:
            self.tracker.observe(path)

    # -- taking a file ------------------------------------------------------------------------

    def _take(self, path: Path) -> None:
        if self.outputs.already_done(path):
            return
        c = claim(self.root, path)
        if c is None:
            return
        if self.folder.marker_suffix:
            path.with_name(path.name + self.folder.marker_suffix).unlink(missing_ok=True)
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
            data = c.path.read_bytes()
            c.job_id = self.jobs.submit(
                data,
                c.rel.name,
                self.request,
                batch_id=self.digests.queue_batch(c),
                idempotency_key=c.idempotency_key,
            )
        except ApplianceError as exc:
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

    # -- finishing ----------------------------------------------------------------------------

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
        entry: dict[str, Any]
        if view.state == SUCCEEDED and view.result is not None:
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
        try:
            payload = json.loads(Path(earlier["json"]).read_text())
            result = payload["result"]
        except (OSError, ValueError, KeyError):
            # The earlier sidecar is gone: forget it and run this one for real.
            self.dedupe.index.forget(c.sha256 or "")
            self._dispatch(c)
            return
        job_id = earlier.get("job_id", "")
        duplicate_of = {"job_id": earlier.get("job_id"), "file": earlier.get("json")}
        final, text = self.outputs.succeeded(c, job_id, result, duplicate_of)
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
            fw.handler.wake = self.wake

    @classmethod
    def from_settings(cls, settings: Settings, **kwargs: Any) -> Watcher:
        from appliance.watch.service import ServiceJobs

        return cls(settings.folders, ServiceJobs.from_settings(settings), **kwargs)

    def _observe(self) -> None:
        inotify = None
        for fw in self.folders:
            if fw.folder.polling:
                # Network mounts deliver no inotify events for writes made by other clients.
                obs: Any = PollingObserver(timeout=fw.folder.poll_seconds)
            else:
                if inotify is None:
                    inotify = Observer()
                    self.observers.append(inotify)
                obs = inotify
            # inotify always watches the whole tree: our own claim (root -> .processing/) is then
            # a paired move delivered at once; unpaired, watchdog holds every later event up to
            # 0.5 s waiting for its IN_MOVED_TO. The filter drops what is not an input.
            recursive = fw.folder.recursive or not fw.folder.polling
            obs.schedule(fw.handler, str(fw.root), recursive=recursive)
            if obs is not inotify:
                self.observers.append(obs)
        for obs in self.observers:
            obs.start()

    def run(self, stop: threading.Event | None = None, *, once: bool = False) -> None:
        """Watch until `stop` is set; with `once`, take what is there now, finish it, return."""
        stop = stop or threading.Event()
        for fw in self.folders:
            fw.root.mkdir(parents=True, exist_ok=True)
        if not once:
            # Observers first, then the start-up scan: a file landing in between is not lost.
            self._observe()
        try:
            for fw in self.folders:
                fw.start()
            self.started.set()
            # Sleep until an event, the next file's settle deadline, or the next job poll.
            interval = 0.25
            while not stop.is_set():
                self.wake.clear()  # before the tick: an event during it wakes the next wait
                for fw in self.folders:
                    fw.tick(final=once and not len(fw.tracker))
                if once and all(fw.idle() for fw in self.folders):
                    return
                due = [d for fw in self.folders if (d := fw.tracker.next_due()) is not None]
                if any(fw.outstanding for fw in self.folders):
                    due.append(JOB_POLL_SECONDS)
                self.wake.wait(min([interval, *due]) + 0.005)
        finally:
            for fw in self.folders:
                fw.close()
            for obs in self.observers:
                obs.stop()
            for obs in self.observers:
                obs.join(timeout=5)
            self.observers.clear()
