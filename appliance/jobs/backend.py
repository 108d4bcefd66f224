"""`JobBackend`: the job store and the queue's doorbell, together, as every side uses them.

The intake side (`JobService`) and the worker side (`appliance.runtime`: runner, reconciler,
worker runtime) each get one injected; neither reaches through the other. What both must do
the same way after a job ends (finish its batch, ring for the digest) lives here, once.
"""

from __future__ import annotations

from dataclasses import dataclass

from appliance.queue import Broker
from appliance.settings import Settings
from appliance.store import init_db
from appliance.store.repo import JobStore


@dataclass(frozen=True)
class JobBackend:
    settings: Settings
    store: JobStore
    broker: Broker

    @classmethod
    def from_settings(cls, settings: Settings, *, migrate: bool = True) -> JobBackend:
        """Connect to the store (migrating it to the newest schema) and to Redis (lazily)."""
        from appliance.store.db import get_engine

        engine = init_db(settings) if migrate else get_engine(settings.db_url)
        broker = Broker(settings)
        store = JobStore(engine, notify=broker.publish, on_outbox=broker.send_webhooks)
        return cls(settings, store, broker)

    def job_ended(self, batch_id: str | None) -> None:
        """After a job reached an end state: finish its batch if it was the last, and send the
        batch's digest job when one is wanted."""
        if batch_id is None:
            return
        finished, digest = self.store.finish_batch_if_done(batch_id)
        if finished and digest:
            self.broker.send_digest(batch_id)
