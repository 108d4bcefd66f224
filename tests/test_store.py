"""The job store on SQLite and PostgreSQL: schema, transitions, exactly-once writes, queries."""

from __future__ import annotations

import threading
import uuid
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import inspect, text, update

from appliance.errors import InvalidRequest
from appliance.schema import TaskRequest
from appliance.store import all_metadata, init_db
from appliance.store.base import utcnow
from appliance.store.repo import JobFilter, JobStore
from appliance.store.search_index import include_name
from appliance.store.tables import Batch, Job, WorkerRow


@pytest.fixture
def store(store_url: str) -> JobStore:
    events: list[dict] = []
    repo = JobStore(init_db(store_url), notify=events.extend)
    repo.published = events  # type: ignore[attr-defined]
    return repo


def new_job(**overrides: object) -> Job:
    request = TaskRequest(**overrides.pop("request", {}))  # type: ignore[arg-type]
    fields: dict[str, object] = {
        "id": str(uuid.uuid4()),
        "source": "api",
        "priority": "interactive",
        "filename": "a.png",
        "input_path": "/nowhere/a.png",
        "input_sha256": "0" * 64,
        "size_bytes": 3,
        "task": request.task,
        "params": request.model_dump(mode="json"),
        "compat_key": repr(request.batch_key()),
    }
    fields.update(overrides)
    return Job(**fields)


def claim(store: JobStore, job_id: str, token: str = "t1", worker: str = "gpu0@h") -> Job | None:
    return store.claim(job_id, worker=worker, device="cpu", claim=token)


def test_schema_is_at_head_and_matches_the_models(store_url: str) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    engine = init_db(store_url)
    init_db(store_url)  # a second call is a no-op
    tables = set(inspect(engine).get_table_names())
    assert {"jobs", "batches", "job_events", "workers", "alembic_version"} <= tables
    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"include_name": include_name})
        diff = compare_metadata(context, all_metadata())
    assert diff == [], f"models and migrations differ: {diff}"


def test_sqlite_runs_in_wal_mode(tmp_path: Path) -> None:
    engine = init_db(f"sqlite:///{tmp_path / 'wal.db'}")
    with engine.connect() as conn:
        assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert conn.execute(text("PRAGMA busy_timeout")).scalar() == 30000


def test_claim_succeed_writes_one_result(store: JobStore) -> None:
    job, created = store.create_job(new_job())
    assert created and job.state == "queued"
    running = claim(store, job.id)
    assert running is not None and running.state == "running" and running.attempts == 1
    assert claim(store, job.id, token="t2") is None  # a duplicate message cannot claim it
    kwargs = {"result": {"x": 1}, "text": "hi", "timings": {}, "pages": 1, "summary_state": None}
    assert not store.succeed(job.id, "someone-else", **kwargs)
    assert store.succeed(job.id, "t1", **kwargs)
    assert not store.succeed(job.id, "t1", **kwargs)  # never twice
    done = store.get(job.id)
    assert done is not None and done.state == "succeeded" and done.result_text == "hi"
    events = [e["event"] for e in store.job_events(job.id)]
    assert events == ["queued", "running", "succeeded"]
    assert [e["event"] for e in store.published] == events  # type: ignore[attr-defined]


def test_concurrent_claims_have_one_winner(store: JobStore) -> None:
    job, _ = store.create_job(new_job())
    winners: list[str] = []
    barrier = threading.Barrier(4)

    def race(token: str) -> None:
        barrier.wait()
        if claim(store, job.id, token=token, worker=f"w{token}@h") is not None:
            winners.append(token)

    threads = [threading.Thread(target=race, args=(str(i),)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(winners) == 1


def test_companions_share_generation_parameters_and_first_attempts(store: JobStore) -> None:
    primary, _ = store.create_job(new_job())
    same = [store.create_job(new_job())[0] for _ in range(3)]
    other, _ = store.create_job(new_job(request={"max_new_tokens": 5}))
    retried, _ = store.create_job(new_job())
    claim(store, retried.id, token="old")
    store.requeue(retried.id, "interrupted", run_alone=True)
    first = claim(store, primary.id)
    assert first is not None
    mates = store.claim_companions(first, 10, worker="gpu0@h", device="cpu", claim="t1")
    assert {m.id for m in mates} == {j.id for j in same}
    assert all(m.state == "running" and m.claim == "t1" for m in mates)
    assert store.get(other.id).state == "queued"  # type: ignore[union-attr]
    assert store.get(retried.id).state == "queued"  # type: ignore[union-attr]


def test_cancel_and_retry(store: JobStore) -> None:
    job, _ = store.create_job(new_job())
    claim(store, job.id)
    row, changed = store.cancel(job.id)
    assert changed and row is not None and row.state == "cancelled"
    kwargs = {"result": {}, "text": "late", "timings": {}, "pages": 1, "summary_state": None}
    assert not store.succeed(job.id, "t1", **kwargs)  # the running worker's result is dropped
    assert store.cancel(job.id)[1] is False
    row, changed = store.retry(job.id)
    assert changed and row is not None and row.state == "queued" and row.attempts == 0
    assert store.retry(job.id)[1] is False  # queued: nothing to retry


def test_failed_job_and_poison_requeue_rules(store: JobStore) -> None:
    job, _ = store.create_job(new_job())
    claim(store, job.id)
    assert store.requeue(job.id, "interrupted", claim="t1", delay_s=30, run_alone=True)
    row = store.get(job.id)
    assert row is not None and row.state == "queued" and row.run_alone and row.attempts == 1
    assert row.not_before is not None and row.not_before > utcnow()
    assert store.queued_before(utcnow() + timedelta(seconds=5)) == []  # not due yet
    claim(store, job.id, token="t2")
    assert store.fail(job.id, "bad", "bad_input", claim="t2")
    assert not store.fail(job.id, "again", "bad_input")
    assert store.get(job.id).error == "bad"  # type: ignore[union-attr]


def test_idempotency_key_returns_the_first_job(store: JobStore) -> None:
    first, created = store.create_job(new_job(idempotency_key="ana\x1fk1"))
    again, created_again = store.create_job(new_job(idempotency_key="ana\x1fk1"))
    assert created and not created_again and again.id == first.id


def test_list_pages_with_a_cursor(store: JobStore) -> None:
    ids = [store.create_job(new_job(owner="ana" if i % 2 else "bo"))[0].id for i in range(7)]
    seen: list[str] = []
    cursor = None
    while True:
        rows, cursor = store.list_jobs(JobFilter(), limit=3, cursor=cursor)
        seen += [r.id for r in rows]
        if cursor is None:
            break
    assert seen == list(reversed(ids))
    rows, _ = store.list_jobs(JobFilter(owner="ana"), limit=100)
    assert len(rows) == 3
    with pytest.raises(InvalidRequest):
        store.list_jobs(JobFilter(), cursor="not-a-cursor")


def test_batch_finishes_once_with_a_digest(store: JobStore) -> None:
    batch = Batch(id=str(uuid.uuid4()), source="folder", language="en")
    jobs = [
        store.create_job(new_job(batch_id=batch.id, request={"summarize": True}), batch=batch)[0]
        for _ in range(2)
    ]
    assert store.finish_batch_if_done(batch.id) == (False, False)  # not closed yet
    store.close_batch(batch.id)
    assert store.finish_batch_if_done(batch.id) == (False, False)  # jobs still queued
    with pytest.raises(InvalidRequest):
        store.create_job(new_job(batch_id=batch.id), batch=batch)
    for job in jobs:
        claim(store, job.id)
        store.fail(job.id, "x", "bad_input")
    assert store.finish_batch_if_done(batch.id) == (True, True)
    assert store.finish_batch_if_done(batch.id) == (False, False)
    row, counts = store.get_batch(batch.id)
    assert row is not None and row.total == 2 and counts == {"failed": 2}
    assert store.digest_done(batch.id, "digest")
    assert not store.digest_done(batch.id, "again")


def test_worker_rows_and_staleness(store: JobStore) -> None:
    store.register_worker(
        WorkerRow(hostname="gpu0@h", pid=1, boot="b1", device="cpu", queues=[], state="idle")
    )
    assert store.heartbeat("gpu0@h", "b1", state="busy", current_jobs=["j"], jobs_done=3)
    assert not store.heartbeat("gpu0@h", "other-boot")
    assert store.stale_workers(utcnow() - timedelta(seconds=30)) == []
    assert store.stale_workers(utcnow() + timedelta(seconds=1)) == ["gpu0@h"]
    (row,) = store.list_workers()
    assert row.state == "busy" and row.jobs_done == 3


def test_purge_candidates_spare_files_still_needed(store: JobStore) -> None:
    old, _ = store.create_job(new_job(input_path="/u/shared"))
    claim(store, old.id)
    store.fail(old.id, "x", "bad_input")
    alone, _ = store.create_job(new_job(input_path="/u/alone"))
    claim(store, alone.id)
    store.fail(alone.id, "x", "bad_input")
    store.create_job(new_job(input_path="/u/shared"))  # same content, still queued
    ids, paths = store.purgeable(utcnow() + timedelta(seconds=1))
    assert set(ids) == {old.id, alone.id}
    assert paths == {"/u/alone"}


def _ended(store: JobStore, job_id: str, created: datetime, finished: datetime) -> None:
    """Give an ended job known timestamps (the store stamps them with the clock)."""
    with store.write() as session:
        session.execute(
            update(Job).where(Job.id == job_id).values(created_at=created, finished_at=finished)
        )


def test_metrics_count_jobs_and_bucket_succeeded_latency(store: JobStore) -> None:
    empty = store.metrics((1.0, 10.0), recent_jobs=2)
    assert empty.counts == {} and empty.latency_buckets == ((1.0, 0), (10.0, 0))
    assert empty.latency_count == 0 and empty.latency_sum == 0.0 and empty.tokens_per_s == {}

    t = utcnow().replace(microsecond=0) - timedelta(hours=1)
    # (source, worker, tokens/s, seconds to finish, finished at t - ...): gpu0's oldest job
    # falls out of its 2-job window; gpu1 reports no speed; 200 s is past every bound.
    done = [
        ("api", "gpu0@h", 10.0, 0.5, 30),
        ("api", "gpu0@h", 20.0, 3.0, 20),
        ("folder", "gpu0@h", 30.0, 30.0, 10),
        ("folder", "gpu1@h", None, 200.0, 5),
    ]
    for source, worker, speed, seconds, ago in done:
        job, _ = store.create_job(new_job(source=source))
        claim(store, job.id, worker=worker)
        timings = {"run_ms": 1} if speed is None else {"tokens_per_s": speed}
        kwargs = {"result": {}, "text": "x", "pages": 1, "summary_state": None}
        assert store.succeed(job.id, "t1", timings=timings, **kwargs)
        finished = t - timedelta(seconds=ago)
        _ended(store, job.id, finished - timedelta(seconds=seconds), finished)
    failed, _ = store.create_job(new_job())  # counted, but no latency: it did not succeed
    claim(store, failed.id, worker="gpu1@h")
    store.fail(failed.id, "bad", "bad_input")
    _ended(store, failed.id, t - timedelta(seconds=2), t)
    claim(store, store.create_job(new_job())[0].id)
    store.create_job(new_job(source="panel"))

    m = store.metrics((1.0, 10.0, 100.0), recent_jobs=2)
    assert m.counts == {
        ("succeeded", "api"): 2,
        ("succeeded", "folder"): 2,
        ("failed", "api"): 1,
        ("running", "api"): 1,
        ("queued", "panel"): 1,
    }
    assert m.latency_buckets == ((1.0, 1), (10.0, 2), (100.0, 3))
    assert m.latency_count == 4
    assert m.latency_sum == pytest.approx(233.5, abs=1e-3)  # SQLite: julianday arithmetic
    assert m.tokens_per_s == {"gpu0@h": 25.0}


def test_finished_since_returns_ended_jobs_only(store: JobStore) -> None:
    t = utcnow().replace(microsecond=0) - timedelta(hours=1)
    recent, _ = store.create_job(new_job())
    claim(store, recent.id)
    store.fail(recent.id, "bad", "bad_input")
    _ended(store, recent.id, t - timedelta(seconds=7), t)
    cancelled, _ = store.create_job(new_job())
    store.cancel(cancelled.id)
    _ended(store, cancelled.id, t - timedelta(minutes=50), t - timedelta(minutes=30))
    old, _ = store.create_job(new_job())
    store.cancel(old.id)
    _ended(store, old.id, t - timedelta(hours=3), t - timedelta(hours=2))
    claim(store, store.create_job(new_job())[0].id)  # running: not ended
    rows = store.finished_since(t - timedelta(hours=1))
    assert sorted(rows) == [
        (t - timedelta(minutes=50), t - timedelta(minutes=30), "cancelled"),
        (t - timedelta(seconds=7), t, "failed"),
    ]
