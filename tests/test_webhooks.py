"""Webhooks in-process against a real HTTP receiver: signatures, retries, disabling, the
allow-list, the outbox written with the job's end. The real-worker test is at the end."""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from appliance.errors import TargetRefused
from appliance.settings import Settings, load_settings
from appliance.store import init_db
from appliance.store.repo import JobStore
from appliance.store.tables import Batch
from appliance.vocab import (
    BATCH_FINISHED_EVENT,
    DELIVERED,
    FAILED,
    JOB_EVENT_PREFIX,
    PENDING,
    SUCCEEDED,
)
from appliance.webhooks import AllowList, Deliverer, WebhookService
from tests.test_store import claim, new_job
from tests.webhook_helpers import Receiver

JOB_SUCCEEDED = JOB_EVENT_PREFIX + SUCCEEDED
JOB_FAILED = JOB_EVENT_PREFIX + FAILED
RESULT = {"result": {"x": 1}, "text": "hi", "timings": {}, "pages": 1, "summary_state": None}


def hook_settings(tmp_path: Path, store_url: str, **webhooks: Any) -> Settings:
    # Retries shrunk from hours to tens of milliseconds; the receiver's 127.0.0.1 allowed.
    cfg = {"allow": ["127.0.0.1/32"], "retry_schedule_s": [0.05] * 5, "jitter": 0.5, **webhooks}
    return load_settings(
        config_file=tmp_path / "none.toml",
        data_dir=tmp_path / "data",
        database_url=store_url,
        webhooks=cfg,
    )


class Box:
    """A store, the webhook service and a deliverer on one settings object (no Redis)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.store = JobStore(init_db(settings))
        self.service = WebhookService(self.store, settings)
        self.deliverer = Deliverer(self.store, settings)

    def subscribe(self, receiver: Receiver, events: list[str] | None = None) -> str:
        info, secret = self.service.create(receiver.url, events, created_by="test")
        assert secret.startswith("whsec_")
        receiver.secret = secret
        return info.id

    def succeed_job(self, **fields: Any) -> str:
        job, _ = self.store.create_job(new_job(**fields))
        claim(self.store, job.id)
        assert self.store.succeed(job.id, "t1", **RESULT)
        return job.id

    def drain_until(self, check: Any, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while not check():
            assert time.monotonic() < deadline, "timed out draining webhooks"
            self.deliverer.drain(max_s=1.0)
            time.sleep(0.02)


@pytest.fixture
def box(tmp_path: Path) -> Box:
    return Box(hook_settings(tmp_path, f"sqlite:///{tmp_path / 'store.db'}"))


def test_500_three_times_then_200_gets_the_event_exactly_once_more(
    tmp_path: Path, store_url: str
) -> None:
    box = Box(hook_settings(tmp_path, store_url))
    with Receiver(script=[500, 500, 500]) as receiver:
        sub_id = box.subscribe(receiver)
        job_id = box.succeed_job()
        box.drain_until(lambda: any(r.status == 200 for r in receiver.requests()))
        # The schedule has room for more, but a success ends the delivery: nothing follows.
        time.sleep(0.3)
        box.deliverer.drain(max_s=0.5)
        got = receiver.requests()
    assert [r.status for r in got] == [500, 500, 500, 200]
    assert all(r.signature_ok and r.library_ok for r in got), "every request verifies"
    assert len({r.headers["webhook-id"] for r in got}) == 1, "one message id on every retry"
    assert {r.body for r in got} == {got[0].body}, "the same body every time"
    assert got[0].event == JOB_SUCCEEDED and got[0].json["data"]["job_id"] == job_id
    # Retries waited (backoff), and the log has every attempt.
    assert all(b.at > a.at for a, b in zip(got, got[1:], strict=False))
    (delivery,) = box.service.deliveries(sub_id)
    assert delivery.state == DELIVERED and delivery.attempts == 4
    log = box.service.delivery(delivery.id).log
    assert [(a.attempt, a.ok, a.status) for a in log] == [
        (1, False, 500),
        (2, False, 500),
        (3, False, 500),
        (4, True, 200),
    ]
    assert all(a.latency_ms is not None and a.address == "127.0.0.1" for a in log)
    assert log[0].error == "HTTP 500 Internal Server Error"
    assert log[0].response_excerpt is not None and len(log[0].response_excerpt) == 512
    assert box.service.get(sub_id).failures == 0  # the success reset the run of failures


def test_retries_run_out_and_a_failing_subscription_is_disabled(tmp_path: Path) -> None:
    settings = hook_settings(
        tmp_path,
        f"sqlite:///{tmp_path / 'store.db'}",
        retry_schedule_s=[0.02, 0.02],
        disable_after_failures=4,
        disable_after_hours=0,
    )
    box = Box(settings)
    with Receiver(default=503) as receiver:
        sub_id = box.subscribe(receiver)
        first = box.succeed_job()
        box.drain_until(lambda: box.service.deliveries(sub_id)[0].state == FAILED)
        assert len(receiver.requests()) == 3  # 1 + the 2 retries of the schedule
        assert box.service.get(sub_id).enabled  # 3 failures < 4
        box.succeed_job()
        box.drain_until(lambda: not box.service.get(sub_id).enabled)
        info = box.service.get(sub_id)
        assert "4 failed attempts in a row" in (info.disabled_reason or "")
        assert "HTTP 503" in (info.disabled_reason or "")
        before = len(receiver.requests())
        box.succeed_job()  # a disabled subscription gets no new delivery ...
        time.sleep(0.1)
        box.deliverer.drain(max_s=0.5)  # ... and its pending retries are not sent
        assert len(receiver.requests()) == before
        # A manual redeliver of the first delivery, once it is enabled again, is sent.
        receiver.default = 200
        (failed,) = [d for d in box.service.deliveries(sub_id) if d.subject == first]
        box.service.enable(sub_id)
        box.service.redeliver(failed.id)
        box.drain_until(lambda: box.service.delivery(failed.id).state == DELIVERED)
        assert receiver.requests()[-1].headers["webhook-id"] == failed.id


def test_a_disabled_subscription_stops_receiving(box: Box) -> None:
    with Receiver() as receiver:
        kept = box.subscribe(receiver, [JOB_SUCCEEDED])
        with Receiver() as other:
            stopped = box.subscribe(other)
            box.succeed_job()
            box.drain_until(lambda: len(receiver.requests()) == 1 == len(other.requests()))
            box.service.disable(stopped, "receiver retired")
            assert box.service.get(stopped).disabled_reason == "receiver retired"
            box.succeed_job()
            box.drain_until(lambda: len(receiver.requests()) == 2)
            time.sleep(0.1)
            box.deliverer.drain(max_s=0.5)
            assert len(other.requests()) == 1
    assert box.service.deliveries(stopped, state=PENDING) == []
    assert len(box.service.deliveries(kept)) == 2


@pytest.mark.parametrize(
    "url",
    [
        "http://10.0.0.5/hook",  # an address outside the list
        "http://localhost:9/hook",  # a name that resolves outside it (with this list)
        "http://[::1]:9/hook",
        "ftp://127.0.0.1/hook",
        "http://user:pw@127.0.0.1/hook",
        "http://no-such-host.invalid/hook",
    ],
)
def test_a_target_outside_the_allow_list_is_refused_at_creation(tmp_path: Path, url: str) -> None:
    settings = hook_settings(
        tmp_path, f"sqlite:///{tmp_path / 'store.db'}", allow=["127.0.0.2/32", "192.168.7.0/24"]
    )
    box = Box(settings)
    with pytest.raises(TargetRefused):
        box.service.create(url)
    assert box.service.list() == []


def test_allow_list_resolves_again_at_delivery() -> None:
    answers = {"lims.ward": ["192.168.7.10"]}
    allow = AllowList(["192.168.7.0/24", "dms.ward"], resolver=lambda host, port: answers[host])
    assert allow.check("https://lims.ward/cb?x=1").addresses == ("192.168.7.10",)
    assert allow.check("https://lims.ward/cb?x=1").path == "/cb?x=1"
    answers["lims.ward"] = ["192.168.7.10", "10.1.2.3"]  # DNS changed: one answer outside
    with pytest.raises(TargetRefused, match="outside"):
        allow.check("https://lims.ward/cb")
    answers["dms.ward"] = ["10.9.9.9"]  # allowed by name, wherever it points
    assert allow.check("http://dms.ward:8080/").host_header == "dms.ward:8080"
    assert allow.check("http://[::ffff:192.168.7.3]/").addresses == ("192.168.7.3",)
    with pytest.raises(TargetRefused, match="no webhook targets are allowed"):
        AllowList([]).check("http://127.0.0.1/")


def test_a_target_that_moved_outside_is_not_contacted(box: Box) -> None:
    with Receiver() as receiver:
        sub_id = box.subscribe(receiver)
        box.deliverer.allow = AllowList(["10.0.0.0/8"])  # as if the list or DNS had changed
        box.succeed_job()
        box.deliverer.drain(max_s=0.5)
        assert receiver.requests() == []
    (delivery,) = box.service.deliveries(sub_id)
    assert "refused" in (box.service.delivery(delivery.id).log[0].error or "")


def test_redirects_are_not_followed(tmp_path: Path) -> None:
    box = Box(hook_settings(tmp_path, f"sqlite:///{tmp_path / 's.db'}", retry_schedule_s=[60]))
    with Receiver(script=[302]) as receiver:
        sub_id = box.subscribe(receiver)
        box.succeed_job()
        box.deliverer.drain(max_s=0.5)
        assert len(receiver.requests()) == 1
    (delivery,) = box.service.deliveries(sub_id)
    (attempt,) = box.service.delivery(delivery.id).log
    assert attempt.status == 302 and "not followed" in (attempt.error or "")


def test_outbox_rows_commit_with_the_end_state_and_match_events(box: Box) -> None:
    with Receiver() as receiver:
        sub_id = box.subscribe(receiver, [JOB_FAILED, BATCH_FINISHED_EVENT])
        box.succeed_job()  # not asked for: no row at all
        assert box.service.deliveries(sub_id) == []
        batch = Batch(id=str(uuid.uuid4()), source="folder", label="/srv/drop: batch b1")
        job, _ = box.store.create_job(new_job(batch_id=batch.id), batch=batch)
        box.store.close_batch(batch.id)
        claim(box.store, job.id)
        box.store.fail(job.id, "bad file", "bad_input")
        # The row exists the moment the end state does, before any drain or message.
        assert [d.event for d in box.service.deliveries(sub_id)] == [JOB_FAILED]
        box.store.finish_batch_if_done(batch.id)
        box.drain_until(lambda: len(receiver.requests()) == 2)
        events = {r.event: r.json["data"] for r in receiver.requests()}
    assert events[JOB_FAILED]["error_code"] == "bad_input"
    assert events[BATCH_FINISHED_EVENT]["counts"] == {FAILED: 1}


def test_folder_subscriptions_come_from_the_settings(tmp_path: Path) -> None:
    drop = tmp_path / "drop"
    secret = "whsec_" + "A" * 32
    hook = {"url": "http://127.0.0.1:9/hook", "secret": secret, "events": [JOB_SUCCEEDED]}
    settings = load_settings(
        config_file=tmp_path / "none.toml",
        data_dir=tmp_path / "data",
        database_url=f"sqlite:///{tmp_path / 'store.db'}",
        webhooks={"allow": ["127.0.0.1"]},
        folders=[{"path": str(drop), "webhooks": [hook]}],
    )
    box = Box(settings)
    assert box.service.sync_settings() == 1
    assert box.service.sync_settings() == 1  # a restart updates, never duplicates
    (sub,) = box.service.list()
    assert sub.folder == str(drop.resolve()) and sub.origin == "settings"
    box.succeed_job()  # an API job: not this folder's
    batch = Batch(id=str(uuid.uuid4()), source="folder", label=f"{drop.resolve()}: batch b1")
    job, _ = box.store.create_job(new_job(batch_id=batch.id, source="folder"), batch=batch)
    claim(box.store, job.id)
    box.store.succeed(job.id, "t1", **RESULT)
    assert [d.subject for d in box.service.deliveries(sub.id)] == [job.id]
    box.service.settings = load_settings(config_file=tmp_path / "none.toml")
    box.service.sync_settings()  # removed from the file: disabled, with the reason
    assert box.service.get(sub.id).disabled_reason == "removed from the settings file"
    box.service.settings = settings
    box.service.sync_settings()  # back in the file: enabled again
    assert box.service.get(sub.id).enabled
