"""Files that arrive together (one scanner run, one camera minute) form a batch.

A claim joins the open batch if it arrives within `gap` seconds of the batch's last arrival,
else it opens a new one. A batch ends when the gap has passed and every member is finished;
then its digest is written. State lives in `.processing/.batches/<id>/`, one small file per
finished member (so a burst costs O(1) writes per file, not a growing list rewritten each time)
plus `batch.json`; a restart picks it up and outstanding members are known from the claims.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from appliance.files import atomic_write
from appliance.watch.filters import PROCESSING_DIR

BATCHES = ".batches"


@dataclass
class Batch:
    id: str
    started: float  # wall clock
    last_arrival: float
    members: set[str] = field(default_factory=set)  # claim names not yet finished
    queue_id: str | None = None  # the job queue's batch
    closed: bool = False  # told the queue that no more jobs join
    closed_at: float | None = None
    output: str | None = None  # the digest file, chosen once (a retry overwrites, never adds)

    def meta(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "started": self.started,
            "queue_id": self.queue_id,
            "closed": self.closed,
            "closed_at": self.closed_at,
            "output": self.output,
        }


class BatchBook:
    def __init__(
        self, root: Path, gap_seconds: float, clock: Callable[[], float] = time.time
    ) -> None:
        self.dir = root / PROCESSING_DIR / BATCHES
        self.gap = gap_seconds
        self.clock = clock
        self.batches: dict[str, Batch] = {}
        self.open: Batch | None = None

    # -- state on disk ------------------------------------------------------------------------

    def _path(self, batch_id: str) -> Path:
        return self.dir / batch_id

    def _save_meta(self, batch: Batch) -> None:
        atomic_write(self._path(batch.id) / "batch.json", json.dumps(batch.meta()))

    def load(self, outstanding: Iterable[tuple[str, str | None, float]]) -> None:
        """Rebuild from disk plus the outstanding claims `(claim name, batch id, claimed_at)`."""
        if self.dir.is_dir():
            for entry in os.scandir(self.dir):
                try:
                    meta = json.loads((Path(entry.path) / "batch.json").read_text())
                except (OSError, ValueError):
                    meta = {"id": entry.name, "started": self.clock()}
                b = Batch(meta["id"], meta["started"], meta["started"])
                b.queue_id, b.closed = meta.get("queue_id"), bool(meta.get("closed"))
                b.output, b.closed_at = meta.get("output"), meta.get("closed_at")
                for item in self.entries(b.id):
                    b.last_arrival = max(b.last_arrival, item.get("claimed_at", b.started))
                self.batches[b.id] = b
        for name, batch_id, claimed_at in outstanding:
            if batch_id and batch_id in self.batches:
                b = self.batches[batch_id]
                b.members.add(name)
                b.last_arrival = max(b.last_arrival, claimed_at)
        if self.batches:
            latest = max(self.batches.values(), key=lambda b: b.last_arrival)
            if self.clock() - latest.last_arrival <= self.gap:
                self.open = latest

    def entries(self, batch_id: str) -> list[dict[str, Any]]:
        out = []
        d = self._path(batch_id)
        if d.is_dir():
            for entry in os.scandir(d):
                if entry.name.startswith("m-"):
                    try:
                        out.append(json.loads(Path(entry.path).read_text()))
                    except (OSError, ValueError):
                        continue
        return sorted(out, key=lambda e: e.get("claim", ""))

    # -- lifecycle ----------------------------------------------------------------------------

    def assign(self, claim_name: str, claimed_at: float) -> str:
        b = self.open
        if b is None or claimed_at - b.last_arrival > self.gap:
            stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(claimed_at))
            b = Batch(f"{stamp}-{secrets.token_hex(2)}", claimed_at, claimed_at)
            self.batches[b.id] = b
            self._save_meta(b)
            self.open = b
        b.members.add(claim_name)
        b.last_arrival = max(b.last_arrival, claimed_at)
        return b.id

    def record(self, batch_id: str | None, claim_name: str, entry: dict[str, Any]) -> None:
        """A member finished; `entry` is what its digest line needs (file, text or error)."""
        if not batch_id:
            return
        b = self.batches.get(batch_id)
        if b is None:  # its state was lost (e.g. a hand-cleaned folder): start it again
            b = Batch(batch_id, entry.get("claimed_at", self.clock()), self.clock())
            self.batches[batch_id] = b
            self._save_meta(b)
        atomic_write(
            self._path(batch_id) / f"m-{claim_name[:120]}.json",
            json.dumps({"claim": claim_name, **entry}),
        )
        b.members.discard(claim_name)

    def save(self, batch: Batch) -> None:
        self._save_meta(batch)

    def due(self, force: bool = False) -> list[Batch]:
        """Batches whose gap has passed (or all, when `force`) and whose members all finished."""
        now = self.clock()
        return [
            b
            for b in self.batches.values()
            if not b.members and (force or now - b.last_arrival > self.gap)
        ]

    def close(self, batch: Batch) -> None:
        shutil.rmtree(self._path(batch.id), ignore_errors=True)
        self.batches.pop(batch.id, None)
        if self.open is batch:
            self.open = None

    def pending(self) -> bool:
        return bool(self.batches)
