"""A folder batch's life on the queue side, and its `batch-<time>.md` digest.

`BatchBook` (batches.py) decides which claims belong together and keeps that on disk; this
module ties each folder batch to a queue batch (opened on its first submit, so jobs carry it),
closes the queue batch once the folder batch is over, waits for the summarizer's digest and
writes the markdown beside the results.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from appliance.files import atomic_write
from appliance.settings import DropFolder
from appliance.vocab import PENDING
from appliance.watch.batches import Batch, BatchBook
from appliance.watch.claims import Claim
from appliance.watch.outputs import Layout, free_name
from appliance.watch.port import Jobs

log = logging.getLogger(__name__)

# How long a closed batch waits for its digest before the file is written without it.
DIGEST_WAIT_SECONDS = 900.0


class Digests:
    """The batches of one folder: membership, the queue batch, and the digest file."""

    def __init__(self, folder: DropFolder, layout: Layout, jobs: Jobs) -> None:
        self.folder = folder
        self.root = folder.path
        self.layout = layout
        self.jobs = jobs
        self.book = BatchBook(self.root, folder.batch_gap_seconds)

    def load(self, claims: Iterable[Claim]) -> None:
        """Rebuild the open batches from disk and the claims found in `.processing/`."""
        self.book.load((c.name, c.batch_id, c.claimed_at) for c in claims if c.batch_id)

    def assign(self, c: Claim) -> None:
        c.batch_id = self.book.assign(c.name, c.claimed_at)

    def record(self, c: Claim, entry: dict[str, Any]) -> None:
        """`c` is finished; `entry` is its digest line (file and text, or file and error)."""
        self.book.record(c.batch_id, c.name, {**entry, "claimed_at": c.claimed_at})

    def pending(self) -> bool:
        return self.book.pending()

    def queue_batch(self, c: Claim) -> str | None:
        """The queue's batch for this claim's folder batch, opened on first use."""
        batch = self.book.batches.get(c.batch_id or "")
        if batch is None:
            return None
        if batch.queue_id is None:
            batch.queue_id = self.jobs.open_batch(
                label=f"{self.root}: batch {batch.id}",
                language=self.folder.language,
                digest=self.folder.digest,
            )
            self.book.save(batch)
        return batch.queue_id

    def finish(self, force: bool = False) -> None:
        """Close every batch that is over (all of them, with `force`) and write its digest."""
        for batch in self.book.due(force=force):
            try:
                if self._close(batch):
                    self.book.close(batch)
            except Exception:
                log.exception("closing batch %s failed; will retry", batch.id)

    def _close(self, batch: Batch) -> bool:
        """Close the queue batch, wait for its digest, write `batch-<time>.md`. True when done."""
        if batch.queue_id and not batch.closed:
            self.jobs.close_batch(batch.queue_id)
            batch.closed = True
            batch.closed_at = time.time()
            self.book.save(batch)
        entries = self.book.entries(batch.id)
        if not entries or not self.folder.digest:
            return True
        digest, note = None, ""
        view = self.jobs.get_batch(batch.queue_id) if batch.queue_id else None
        if view is not None and view.digest_state == PENDING:
            waited = time.time() - (batch.closed_at or time.time())
            if waited < DIGEST_WAIT_SECONDS:
                return False  # the summarizer has not run yet: ask again next tick
            # No worker for the text queue, or it is stuck: the file list is still worth having.
            note = f"digest not ready after {waited:.0f} s"
        if view is not None and view.digest:
            digest = view.digest
        elif view is not None and view.digest_error:
            note = f"digest failed: {view.digest_error}"
        if batch.output is None:
            # Chosen once and saved: a retry after a crash overwrites this file, never adds one.
            stamp = batch.id.rsplit("-", 1)[0]
            batch.output = str(free_name(self.layout.digest_dir(), f"batch-{stamp}.md"))
            self.book.save(batch)
        atomic_write(Path(batch.output), digest_markdown(batch, entries, digest, note, self.root))
        return True


def digest_markdown(
    batch: Batch, entries: list[dict[str, Any]], digest: str | None, note: str, root: Path
) -> str:
    """The digest file: a count, the summarizer's digest (or why there is none), the files."""
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(batch.started))
    failed = sum(1 for e in entries if e.get("error"))
    lines = [
        f"# Batch {started}",
        "",
        f"{len(entries)} file(s) from `{root}`, {failed} failed.",
        "",
    ]
    if digest:
        lines += ["## Digest", "", digest.strip(), ""]
    elif note:
        lines += [f"_{note}_", ""]
    lines += ["## Files", ""]
    for e in entries:
        if e.get("error"):
            lines.append(f"- **{e['file']}**: failed: {e['error']}")
        else:
            first = (e.get("text") or "").strip().splitlines()
            lines.append(f"- **{e['file']}**: {first[0] if first else ''}")
    return "\n".join(lines) + "\n"
