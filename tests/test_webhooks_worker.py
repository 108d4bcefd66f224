"""End to end through the queue with a real `appliance worker` process: a job succeeds, the
receiver gets `job.succeeded`, signed, after three 500s exactly once more; a delivery whose
doorbell message was never sent still goes out (the reconciler rings for due rows)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from appliance.vocab import DELIVERED, JOB_EVENT_PREFIX, SUCCEEDED
from appliance.webhooks import WebhookService
from tests.queue_helpers import wait_for
from tests.test_queue_workers import Cluster
from tests.webhook_helpers import Receiver

pytestmark = pytest.mark.slow

HOOKS_ENV = {
    "APPLIANCE_WEBHOOKS__ALLOW": '["127.0.0.1/32"]',
    # Hours shrunk to a fraction of a second; retries are rung by the reconciler (every 1 s).
    "APPLIANCE_WEBHOOKS__RETRY_SCHEDULE_S": "[0.2, 0.2, 0.2, 0.2, 0.2]",
}


@pytest.fixture
def cluster(
    tmp_path: Path, store_url: str, redis_server: str, tiny_models_dir: Path
) -> Iterator[Cluster]:
    redis_url = redis_server.rsplit("/", 1)[0] + "/3"  # db 3: this module's, flushed
    redis.Redis.from_url(redis_url).flushdb()
    cluster = Cluster(tmp_path, store_url, redis_url, tiny_models_dir)
    cluster.env.update(HOOKS_ENV)
    try:
        yield cluster
    finally:
        cluster.stop()


def test_job_succeeds_and_the_receiver_gets_it_signed_after_retries(cluster: Cluster) -> None:
    settings = cluster.settings.model_copy(deep=True)
    settings.webhooks.allow = ["127.0.0.1/32"]
    service = WebhookService(cluster.service.backend.store, settings)
    with Receiver(script=[500, 500, 500]) as receiver:
        info, receiver.secret = service.create(receiver.url, [JOB_EVENT_PREFIX + SUCCEEDED])
        cluster.start("--devices", "0", "--simulate-gpus")
        job = cluster.submit("photo.png")
        (done,) = cluster.wait_done([job.id], timeout=180)
        assert done.state == SUCCEEDED

        def answered() -> bool:
            return any(r.status == 200 for r in receiver.requests())

        wait_for(answered, 60, "the receiver to answer 200", poll=0.2)
        time.sleep(2.5)  # two reconcile passes: nothing more may come
        got = receiver.requests()
        assert [r.status for r in got] == [500, 500, 500, 200], cluster.workers[0].tail()
        assert all(r.signature_ok and r.library_ok for r in got)
        assert {r.event for r in got} == {JOB_EVENT_PREFIX + SUCCEEDED}
        assert got[0].json["data"]["job_id"] == job.id
        (delivery,) = service.deliveries(info.id)
        assert delivery.state == DELIVERED
        assert [a.status for a in service.delivery(delivery.id).log] == [500, 500, 500, 200]

        # Due again with no message in Redis (as if the ring was lost): still delivered.
        assert cluster.service.backend.store.redeliver(delivery.id) is not None
        wait_for(lambda: len(receiver.requests()) == 5, 30, "the re-rung delivery", poll=0.2)
        assert receiver.requests()[-1].signature_ok
