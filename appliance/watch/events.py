"""From the file system to claimed files: watchdog events and rescans become hints, the
stability tracker settles them, and a complete file is claimed into `.processing/`.

Events are only hints: the observer thread queues them and wakes the loop, and the loop
thread looks at the file itself. A rescan every `rescan_seconds` (and one on start) finds what
the events missed, so a lost event costs latency, never a file.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from collections.abc import Iterable
from pathlib import Path, PurePosixPath
from typing import Any

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer
from watchdog.observers.polling import PollingObserver

from appliance.settings import DropFolder
from appliance.watch.claims import Claim, claim
from appliance.watch.filters import PathFilter, relative
from appliance.watch.stability import StabilityTracker

# (event type, src path, dest path or None, is a directory)
Event = tuple[str, str, str | None, bool]


class EventHandler(FileSystemEventHandler):
    """Runs in the observer thread: only hands events over, the loop thread does the work."""

    def __init__(self, sink: queue.SimpleQueue[Event]) -> None:
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


class FolderEvents:
    """One folder's candidates: hinted by events and rescans, handed out once complete."""

    def __init__(self, folder: DropFolder, reserved_dirs: tuple[str, ...]) -> None:
        self.folder = folder
        self.root = folder.path
        self.filter = PathFilter(folder, reserved_dirs)
        self.tracker = StabilityTracker(folder.settle_seconds)
        self.queue: queue.SimpleQueue[Event] = queue.SimpleQueue()
        self.handler = EventHandler(self.queue)
        self._last_rescan = 0.0

    def __len__(self) -> int:
        """Files seen but not yet complete."""
        return len(self.tracker)

    def next_due(self) -> float | None:
        return self.tracker.next_due()

    def complete(self) -> list[Path]:
        """Take in the queued events (and a rescan when due); the files complete now."""
        self._drain()
        if time.monotonic() - self._last_rescan >= self.folder.rescan_seconds:
            self.rescan()
        return self.tracker.ready()

    def claim(self, path: Path) -> Claim | None:
        """Claim a complete file; None if someone else got it first (or it vanished)."""
        c = claim(self.root, path)
        if c is not None and self.folder.marker_suffix:
            # The marker said "complete"; left behind it would look like a new hint.
            path.with_name(path.name + self.folder.marker_suffix).unlink(missing_ok=True)
        return c

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

    def _drain(self) -> None:
        while True:
            try:
                kind, src, dest, is_dir = self.queue.get_nowait()
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
                src_rel = relative(self.root, Path(src))
                # Renamed in from a name we never take (`x.jpg.part`): the writer is done.
                renamed_in = src_rel is None or not self.filter.accepts(src_rel)
                self._hint(Path(dest or src), force=self.folder.rename_completes and renamed_in)
                continue
            self._hint(Path(src))

    def _walk_dir(self, directory: Path) -> None:
        for dirpath, _dirs, filenames in os.walk(directory):
            for name in filenames:
                self._hint(Path(dirpath) / name)

    def _hint(self, path: Path, rel: PurePosixPath | None = None, force: bool = False) -> None:
        rel = rel if rel is not None else relative(self.root, path)
        if rel is None:
            return
        if self.filter.is_marker(rel):
            # `NAME.done` appeared: NAME is complete now, whatever its settle clock says.
            target = path.with_name(rel.name[: -len(self.folder.marker_suffix)])
            if self.filter.accepts(rel.with_name(target.name)) and target.exists():
                self.tracker.force(target)
            return
        if not self.filter.accepts(rel):
            return
        marker = path.with_name(path.name + self.folder.marker_suffix)
        if force or (self.folder.marker_suffix and marker.exists()):
            self.tracker.force(path)
        else:
            self.tracker.observe(path)


def start_observers(folders: Iterable[FolderEvents]) -> list[Any]:
    """One inotify observer for all local folders, a polling one per network folder."""
    observers: list[Any] = []
    inotify = None
    for events in folders:
        folder = events.folder
        if folder.polling:
            # Network mounts deliver no inotify events for writes made by other clients.
            obs: Any = PollingObserver(timeout=folder.poll_seconds)
        else:
            if inotify is None:
                inotify = Observer()
                observers.append(inotify)
            obs = inotify
        # inotify always watches the whole tree: our own claim (root -> .processing/) is then
        # a paired move delivered at once; unpaired, watchdog holds every later event up to
        # 0.5 s waiting for its IN_MOVED_TO. The filter drops what is not an input.
        recursive = folder.recursive or not folder.polling
        obs.schedule(events.handler, str(events.root), recursive=recursive)
        if obs is not inotify:
            observers.append(obs)
    for obs in observers:
        obs.start()
    return observers


def stop_observers(observers: list[Any]) -> None:
    for obs in observers:
        obs.stop()
    for obs in observers:
        obs.join(timeout=5)
    observers.clear()
