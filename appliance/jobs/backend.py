"""`JobBackend`: the job store and the queue's doorbell, together, as every side uses them.

The intake side (`JobService`) and the worker side (`appliance.runtime`: runner, reconciler,
worker runtime) each get one injected; neither reaches through the other. What both must do
the same way after a job ends (finish its batch, ring for the digest) lives here, once.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from appliance.queue import Broker
from appliance.settings import Settings
from appliance.storage import Blobs, open_blobs
from appliance.store import init_db
from appliance.store.repo import JobStore

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class JobBackend:
    settings: Settings
    store: JobStore
    broker: Broker
    # Inputs and artifacts by sha256: local files, or the object store the boxes share.
    blobs: Blobs
    # Called with a batch's id when `job_ended` finished it. Only the worker side registers
    # one (OpenAI batches write their output files there, never in a request); elsewhere the
    # reconciler's sweep does that work.
    on_batch_finished: list[Callable[[str], object]] = field(default_factory=list, compare=False)

    @classmethod
    def from_settings(cls, settings: Settings, *, migrate: bool = True) -> JobBackend:
        """Connect to the store (migrating it to the newest schema) and to Redis (lazily)."""
        from appliance.store.db import get_engine

        engine = init_db(settings) if migrate else get_engine(settings.db_url)
        broker = Broker(settings)
        store = JobStore(engine, notify=broker.publish, on_outbox=broker.send_webhooks)
        return cls(settings, store, broker, open_blobs(settings))

    def job_ended(self, batch_id: str | None) -> None:
        """After a job reached an end state: finish its batch if it was the last, and send the
        batch's digest job when one is wanted."""
        if batch_id is None:
            return
        finished, digest = self.store.finish_batch_if_done(batch_id)
        if finished and digest:
            self.broker.send_digest(batch_id)
        if finished:
            for hook in self.on_batch_finished:
                try:
                    hook(batch_id)
                except Exception as exc:  # the job's own end stands; the reconciler retries
                    log.warning("after batch %s finished: %s", batch_id, exc)
