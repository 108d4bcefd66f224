"""The one submit entry (`JobService.submit_many`), the one wait loop and the one form ->
TaskRequest builder, against a private Redis and a SQLite store."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import redis
from sqlalchemy import update

from appliance.errors import InvalidRequest, JobNotFound
from appliance.jobs import JobService
from appliance.schema import TaskRequest, request_from_fields
from appliance.settings import load_settings
from appliance.store.tables import Batch, Job
from appliance.vocab import INTERACTIVE, QUEUED, SUCCEEDED

CAPTION = TaskRequest(task="caption", max_new_tokens=4)


@pytest.fixture
def service(tmp_path: Path, redis_server: str) -> JobService:
    url = redis_server.rsplit("/", 1)[0] + "/3"  # db 3: this module's, flushed per test
    redis.Redis.from_url(url).flushdb()
    settings = load_settings(
        config_file=tmp_path / "none.toml",
        data_dir=tmp_path / "data",
        models_dir=tmp_path / "models",
        redis_url=url,
        database_url=f"sqlite:///{tmp_path / 'store.db'}",
        device="cpu",
    )
    return JobService.from_settings(settings)


def files(n: int) -> list[tuple[bytes, str]]:
    return [(f"file {i}".encode(), f"{i}.png") for i in range(n)]


def test_one_file_makes_no_batch_and_a_retry_returns_the_same_job(service: JobService) -> None:
    first = service.submit_many(files(1), CAPTION, source="api", owner="ana", idempotency_key="k")
    again = service.submit_many(files(1), CAPTION, source="api", owner="ana", idempotency_key="k")
    assert first.batch_id is None and first.jobs[0].batch_id is None
    assert [j.id for j in again.jobs] == [j.id for j in first.jobs]
    assert first.jobs[0].state == QUEUED and first.jobs[0].priority == INTERACTIVE


def test_several_files_make_one_closed_batch_named_by_the_key(service: JobService) -> None:
    first = service.submit_many(files(3), CAPTION, source="api", owner="ana", idempotency_key="k")
    assert first.batch_id is not None and {j.batch_id for j in first.jobs} == {first.batch_id}
    batch = service.get_batch(first.batch_id)
    assert batch is not None and batch.total == 3 and batch.closed_at is not None
    again = service.submit_many(files(3), CAPTION, source="api", owner="ana", idempotency_key="k")
    assert again.batch_id == first.batch_id
    assert [j.id for j in again.jobs] == [j.id for j in first.jobs]
    unkeyed = service.submit_many(files(2), CAPTION, source="cli")
    assert unkeyed.batch_id not in (None, first.batch_id)


def test_a_named_batch_is_opened_with_its_label_and_left_open(service: JobService) -> None:
    for i in range(2):
        service.submit_many(
            [(b"drop %d" % i, f"{i}.png")],
            CAPTION,
            source="panel",
            owner="ana",
            batch_id="drop-1",
            label="panel upload by ana",
            digest=True,
        )
    batch = service.get_batch("drop-1")
    assert batch is not None and batch.total == 2 and batch.closed_at is None
    assert batch.label == "panel upload by ana"
    with service.store.read() as session:
        assert session.get(Batch, "drop-1").digest_requested  # type: ignore[union-attr]


def test_ungrouped_files_are_independent_jobs(service: JobService) -> None:
    done = service.submit_many(files(2), CAPTION, source="api", grouped=False)
    assert done.batch_id is None and [j.batch_id for j in done.jobs] == [None, None]


def test_wait_returns_at_the_end_or_the_timeout(service: JobService) -> None:
    job = service.submit_many(files(1), CAPTION, source="cli").jobs[0]
    started = time.monotonic()
    (waited,) = service.wait([job.id], timeout=0.3, poll_s=0.05)
    assert not waited.done and 0.3 <= time.monotonic() - started < 2
    with service.store.write() as session:
        session.execute(update(Job).where(Job.id == job.id).values(state=SUCCEEDED))
    started = time.monotonic()
    assert service.wait([job.id], timeout=10)[0].state == SUCCEEDED
    assert time.monotonic() - started < 1
    with pytest.raises(JobNotFound):
        service.wait([job.id, "nope"], timeout=1)


def test_request_from_form_fields() -> None:
    request = request_from_fields(
        {"task": "classify", "labels": "cat, dog,", "summarize": "on", "prompt": "  hint  "}
    )
    assert request.labels == ["cat", "dog"] and request.summarize and request.prompt == "hint"
    cli = request_from_fields({"task": "extract", "fields": ("a,b", "c"), "summarize": True})
    assert cli.fields == ["a", "b", "c"]
    assert request_from_fields({"prompt": "   ", "summarize": "off"}).prompt is None
    assert request_from_fields({"prompt": "x" * 5000}).prompt == "x" * 4000
    for bad, reason in [
        ({"task": "question"}, "needs a prompt"),
        ({"task": "nope"}, "Input should be"),
        ({"max_new_tokens": "many"}, "valid integer"),
    ]:
        with pytest.raises(InvalidRequest, match=reason):
            request_from_fields(bad)
