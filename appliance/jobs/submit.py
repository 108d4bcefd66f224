"""The intake half of `JobService`: queue one file (`submit`), several at once (`submit_many`),
and the batches that group them. Every door comes in here: the REST API and the panel through
`submit_many`, the OpenAI-compatible endpoint through `submit_chat`, the drop-folder watcher and `appliance submit`
through `submit` and the batch calls.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from appliance.errors import InvalidRequest, JobNotFound
from appliance.jobs.views import BatchInfo, JobInfo
from appliance.queue import LANES
from appliance.schema import TaskRequest
from appliance.store.tables import Batch, Job
from appliance.vocab import SOURCES, Priority, Source, default_priority

# The input file of a text-only chat: the conversation itself.
CHAT_TRANSCRIPT = "chat.json"

if TYPE_CHECKING:
    from appliance.jobs.backend import JobBackend
    from appliance.queue import Broker
    from appliance.settings import Settings
    from appliance.store.repo import JobStore


@dataclass(frozen=True)
class Submission:
    """What `submit_many` queued: the jobs, in the order of the files, and their batch."""

    jobs: list[JobInfo]
    batch_id: str | None


class Submitting:
    """Mixed into `JobService`, which provides the backend, the store, the broker and
    `get_batch`."""

    backend: JobBackend
    settings: Settings
    store: JobStore
    broker: Broker
    get_batch: Callable[[str], BatchInfo | None]

    def submit(
        self,
        data: bytes,
        filename: str,
        request: TaskRequest,
        *,
        source: Source,
        priority: Priority | None = None,
        batch_id: str | None = None,
        idempotency_key: str | None = None,
        owner: str | None = None,
        input_path: Path | str | None = None,
    ) -> JobInfo:
        """Queue one file. Returns at once with the queued job; never runs the model.

        - `data` is stored content-addressed through `backend.blobs` (local files or the shared
          object store; unless, on one box, `input_path` names a file that already holds
          exactly these bytes and stays put, e.g. a claimed drop-folder file). It is never
          deleted because the job failed. Raises StorageUnavailable while the store is away.
        - `priority` defaults to `bulk` for `source="folder"`, else `interactive`.
        - `batch_id`: join that batch (created on first use, see `open_batch`); call
          `close_batch` when no more jobs will join, so its digest can be made.
        - `idempotency_key`: a second submit with the same key and owner returns the first
          job instead of queueing again.
        - Bad files are *not* rejected here: the worker fails the job with the reason.
        """
        if source not in SOURCES:
            raise InvalidRequest(f"unknown source {source!r}")
        lane = priority or default_priority(source)
        if lane not in LANES:
            raise InvalidRequest(f"unknown priority {lane!r}")
        sha = hashlib.sha256(data).hexdigest()
        blobs = self.backend.blobs
        if input_path is not None:
            location = blobs.adopt(Path(input_path), data, sha)
        else:
            location = blobs.put(data, sha)
        job = Job(
            id=str(uuid.uuid4()),
            source=source,
            priority=lane,
            owner=owner,
            batch_id=batch_id,
            idempotency_key=f"{owner or ''}\x1f{idempotency_key}" if idempotency_key else None,
            filename=os.path.basename(filename)[:512] or "upload",
            input_path=location,
            input_sha256=sha,
            size_bytes=len(data),
            task=request.task,
            prompt=request.prompt,
            params=request.model_dump(mode="json"),
            compat_key=repr(request.batch_key()),
        )
        batch = None
        if batch_id is not None:
            batch = Batch(id=batch_id, source=source, owner=owner, language=request.language)
        row, created = self.store.create_job(job, batch=batch)
        if created:
            self.broker.send_job(row.id, row.priority)
        return JobInfo.from_row(row)

    def open_batch(
        self,
        *,
        source: Source,
        owner: str | None = None,
        label: str | None = None,
        language: str = "en",
        digest: bool = False,
        batch_id: str | None = None,
    ) -> BatchInfo:
        """Start a batch (or return the existing one with that id). `digest=True` asks for a
        digest even if no job asks for a summary; a job with `summarize` asks for one too."""
        row = self.store.open_batch(
            Batch(
                id=batch_id or str(uuid.uuid4()),
                source=source,
                owner=owner,
                label=label,
                language=language,
                digest_requested=digest,
            )
        )
        return self.get_batch(row.id)  # type: ignore[return-value]

    def close_batch(self, batch_id: str) -> BatchInfo:
        """No more jobs join; once all have ended the batch finishes (and its digest is made)."""
        if self.store.close_batch(batch_id) is None:
            raise JobNotFound(f"no batch {batch_id}")
        self.backend.job_ended(batch_id)
        return self.get_batch(batch_id)  # type: ignore[return-value]

    def submit_many(
        self,
        files: Sequence[tuple[bytes, str]],
        request: TaskRequest,
        *,
        source: Source,
        owner: str | None = None,
        priority: Priority | None = None,
        idempotency_key: str | None = None,
        batch_id: str | None = None,
        label: str | None = None,
        digest: bool = False,
        grouped: bool = True,
    ) -> Submission:
        """Queue `files` ((data, filename) pairs) with one request; several make one batch.

        - `batch_id`: join that batch (opened with `label` and `digest` if new) and leave it
          open: whoever named it closes it once every file is in (`close_batch`).
        - Without one, more than one file makes a batch of its own, closed at once so its
          digest follows the last job. Its id derives from `idempotency_key` when given, so a
          retried request names the same batch. `grouped=False`: no batch (independent jobs).
        - `idempotency_key`: each file gets `"{key}:{index}"`, so a retried request returns
          the first request's jobs instead of queueing them again.
        - The files are not checked here: callers at the door use `appliance.intake.precheck`.
        """
        own_batch = batch_id is None and grouped and len(files) > 1
        if own_batch:
            key = idempotency_key
            batch_id = str(uuid.uuid5(uuid.NAMESPACE_URL, key) if key else uuid.uuid4())
        if batch_id is not None:
            self.open_batch(
                source=source,
                owner=owner,
                label=label,
                language=request.language,
                digest=digest,
                batch_id=batch_id,
            )
        jobs = [
            self.submit(
                data,
                filename,
                request,
                source=source,
                priority=priority,
                batch_id=batch_id,
                idempotency_key=f"{idempotency_key}:{index}" if idempotency_key else None,
                owner=owner,
            )
            for index, (data, filename) in enumerate(files)
        ]
        if own_batch:
            self.close_batch(batch_id)  # type: ignore[arg-type]
        return Submission(jobs, batch_id)

    def submit_chat(
        self,
        images: Sequence[bytes],
        request: TaskRequest,
        *,
        source: Source,
        owner: str | None = None,
        priority: Priority | None = None,
        batch_id: str | None = None,
        idempotency_key: str | None = None,
    ) -> Submission:
        """Queue a conversation (task `chat`): one job per image of its image turn, each image
        its job's input file, or, with no image, one job whose input file is the conversation
        as JSON, so that a text-only job is stored, retried and purged like any other.
        The jobs are independent (one answer, no batch digest) unless `batch_id` names a batch
        they join (an OpenAI batch's lines: see `submit_many` for it and `idempotency_key`)."""
        if request.task != "chat" or request.has_image != bool(images):
            raise InvalidRequest("a chat's images and its request's image turn do not match")
        files = [(data, f"chat-image-{index + 1}") for index, data in enumerate(images)]
        if not images:
            turns = [turn.model_dump(mode="json") for turn in request.messages]
            transcript = json.dumps({"messages": turns}, ensure_ascii=False, indent=1)
            files = [(transcript.encode(), CHAT_TRANSCRIPT)]
        return self.submit_many(
            files,
            request,
            source=source,
            owner=owner,
            priority=priority,
            grouped=False,
            batch_id=batch_id,
            idempotency_key=idempotency_key,
        )
