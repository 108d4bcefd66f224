"""When is a file complete? Size *and* mtime unchanged for the settle time, and openable.

Scanners open, write, close and reopen the same file several times (paperless-ngx PR #4626), so
neither a close event nor a non-zero size means "done": only quiet for `settle` seconds does. A
writer that knows when it is done can say so at once with a marker (`NAME.done`) or a rename.
"""

from __future__ import annotations

import errno
import os
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

# Errors an SMB/NFS client returns while another client still holds the file (paperless #9698):
# not a failure, just "not yet".
BUSY_ERRNOS = frozenset({errno.EBUSY, errno.EACCES, errno.EAGAIN, errno.ETXTBSY, errno.EPERM})


@dataclass
class _Seen:
    size: int
    mtime_ns: int
    since: float  # monotonic time of the last change we saw
    forced: bool = False  # a marker or a completing rename: skip the settle wait


class StabilityTracker:
    """Tracks candidate files until each is complete; `ready()` hands each out once."""

    def __init__(self, settle_seconds: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.settle = settle_seconds
        self.clock = clock
        self._seen: dict[Path, _Seen] = {}

    def __len__(self) -> int:
        return len(self._seen)

    def __contains__(self, path: Path) -> bool:
        return path in self._seen

    def observe(self, path: Path) -> None:
        """A hint that `path` exists or changed (an event or a rescan). Cheap to repeat."""
        try:
            st = _stat(path)
        except _Busy:
            # Locked by a writer: track it with an impossible size so `ready()` re-checks it.
            self._seen.setdefault(path, _Seen(-1, -1, self.clock()))
            return
        if st is None:
            self._seen.pop(path, None)
            return
        seen = self._seen.get(path)
        if seen is None:
            self._seen[path] = _Seen(st.st_size, st.st_mtime_ns, self.clock())
        elif (seen.size, seen.mtime_ns) != (st.st_size, st.st_mtime_ns):
            seen.size, seen.mtime_ns, seen.since = st.st_size, st.st_mtime_ns, self.clock()

    def force(self, path: Path) -> None:
        """The writer declared `path` complete (marker or rename): no settle wait."""
        self.observe(path)
        if path in self._seen:
            self._seen[path].forced = True

    def forget(self, path: Path) -> None:
        self._seen.pop(path, None)

    def ready(self) -> list[Path]:
        """Paths that are complete now, oldest first; each is removed from tracking."""
        now = self.clock()
        done: list[Path] = []
        for path, seen in list(self._seen.items()):
            try:
                st = _stat(path)
            except _Busy:
                continue
            if st is None:  # claimed by someone else, deleted, or renamed away
                del self._seen[path]
                continue
            if (seen.size, seen.mtime_ns) != (st.st_size, st.st_mtime_ns):
                # Still being written: even a forced file waits until it holds still once more.
                seen.size, seen.mtime_ns, seen.since = st.st_size, st.st_mtime_ns, now
                seen.forced = False
                continue
            if not seen.forced and now - seen.since < self.settle:
                continue
            ok = openable(path)
            if ok is None:
                del self._seen[path]
            elif ok:
                done.append(path)
        done.sort(key=lambda p: self._seen[p].since)
        for path in done:
            del self._seen[path]
        return done

    def next_due(self) -> float | None:
        """Seconds until the earliest candidate could be ready (for the loop's sleep)."""
        if not self._seen:
            return None
        now = self.clock()
        return max(
            0.0, min(s.since + (0 if s.forced else self.settle) - now for s in self._seen.values())
        )


def openable(path: Path) -> bool | None:
    """True if it opens for reading, False if busy (retry later), None if it is gone."""
    try:
        with open(path, "rb") as fh:
            fh.read(1)
        return True
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno in BUSY_ERRNOS:
            return False
        if exc.errno == errno.EISDIR:
            return None
        raise


class _Busy(Exception):
    pass


def _stat(path: Path) -> os.stat_result | None:
    """The file's stat, None if it is gone or not a regular file; `_Busy` if locked."""
    try:
        st = path.stat()
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as exc:
        if exc.errno in BUSY_ERRNOS:
            raise _Busy from exc
        raise
    return st if stat.S_ISREG(st.st_mode) else None
