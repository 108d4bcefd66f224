"""Same content, one GPU run: an index of earlier successes, and the identical files in flight.

The index is `.processing/.index.jsonl`, one line per success (sha256, the request it ran with,
its job and its JSON sidecar), appended as results land so a crash loses at most the line being
written. It forgets entries older than `dedupe_days` on start and hourly, so a camera dropping
files all year keeps a bounded file. Only entries made with this folder's exact request count:
the same photo asked a different question is a different job.

Files with the same content that arrive together do not race for the GPU: the first one is in
flight, the others wait on it and take its result (or their own chance, if it failed).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from appliance.files import atomic_write
from appliance.settings import DropFolder
from appliance.watch.claims import Claim
from appliance.watch.filters import PROCESSING_DIR

log = logging.getLogger(__name__)

INDEX = ".index.jsonl"  # in .processing/: sha256 -> earlier result
INDEX_PRUNE_SECONDS = 3600.0


class DedupeIndex:
    """sha256 -> the earlier success with this request, kept in a JSON-lines file."""

    def __init__(self, path: Path, request_key: str, days: float | None) -> None:
        self.path = path
        self.request_key = request_key
        self.days = days
        self.items: dict[str, dict[str, Any]] = {}
        self._last_prune = time.monotonic()

    def _cutoff(self) -> float | None:
        return None if self.days is None else time.time() - self.days * 86400

    def load(self) -> None:
        """Read the file, dropping torn and expired lines (and rewriting it if any were)."""
        if not self.path.exists():
            return
        cutoff, kept, dropped = self._cutoff(), [], 0
        for line in self.path.read_text().splitlines():
            try:
                item = json.loads(line)
            except ValueError:
                dropped += 1
                continue  # a torn last line after a crash
            item.setdefault("at", time.time())  # written before entries had a time: from now
            if cutoff is not None and item["at"] < cutoff:
                dropped += 1
                continue
            kept.append(item)
            if item.get("request") == self.request_key:
                self.items.setdefault(item["sha256"], item)
        if dropped:
            atomic_write(self.path, "".join(json.dumps(i) + "\n" for i in kept))
            log.info("%s: dedupe index: forgot %d old entries", self.path.parent.parent, dropped)

    def prune_when_due(self) -> None:
        """Hourly: forget entries older than `dedupe_days`, in memory and in the file."""
        if time.monotonic() - self._last_prune < INDEX_PRUNE_SECONDS:
            return
        self._last_prune = time.monotonic()
        cutoff = self._cutoff()
        if cutoff is None or not any(i["at"] < cutoff for i in self.items.values()):
            return
        self.items = {}
        self.load()  # rewrites the file without them, and reloads what is left

    def get(self, sha256: str) -> dict[str, Any] | None:
        return self.items.get(sha256)

    def forget(self, sha256: str) -> None:
        self.items.pop(sha256, None)

    def add(self, sha256: str, job_id: str, sidecar: Path) -> None:
        item = {
            "sha256": sha256,
            "request": self.request_key,
            "job_id": job_id,
            "json": str(sidecar),
            "at": time.time(),
        }
        self.items.setdefault(sha256, item)
        with open(self.path, "a") as fh:
            fh.write(json.dumps(item) + "\n")


class Dedupe:
    """Decides, per claim, between an earlier result, waiting on a twin, and a run of its own."""

    def __init__(self, folder: DropFolder, request_key: str) -> None:
        self.enabled = folder.dedupe
        # Loaded and pruned even when dedupe is off: turning it back on finds a bounded index.
        self.index = DedupeIndex(
            folder.path / PROCESSING_DIR / INDEX, request_key, folder.dedupe_days
        )
        self.inflight: dict[str, Claim] = {}  # sha256 -> first claim with that content
        self.waiting: dict[str, list[Claim]] = {}  # sha256 -> twins waiting on inflight

    def earlier(self, c: Claim) -> dict[str, Any] | None:
        """The index entry of an earlier success with the same content, if dedupe is on."""
        return self.index.get(c.sha256 or "") if self.enabled else None

    def wait_behind_twin(self, c: Claim) -> bool:
        """True when an identical file is in flight (`c` now waits on it); otherwise `c`
        becomes the one in flight for its content and should run."""
        if not self.enabled:
            return False
        assert c.sha256 is not None
        first = self.inflight.get(c.sha256)
        if first is not None and first.name != c.name:
            self.waiting.setdefault(c.sha256, []).append(c)
            return True
        self.inflight[c.sha256] = c
        return False

    def resumed(self, c: Claim) -> None:
        """A claim with a job found on start: an identical newcomer waits on it."""
        if self.enabled and c.sha256:
            self.inflight.setdefault(c.sha256, c)

    def is_waiting(self, c: Claim) -> bool:
        return any(c in group for group in self.waiting.values())

    def succeeded(self, c: Claim, job_id: str, sidecar: Path) -> None:
        if self.enabled and c.sha256:
            self.index.add(c.sha256, job_id, sidecar)

    def release(self, c: Claim) -> list[Claim]:
        """`c` is finished: the twins that waited on it, to be dispatched again."""
        if c.sha256 and self.inflight.get(c.sha256) is c:
            del self.inflight[c.sha256]
            return self.waiting.pop(c.sha256, [])
        return []
