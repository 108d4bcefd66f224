"""JobService, JobRunner, the reconciler and GPU planning, in-process against a real Redis.

The real-worker tests (Celery subprocesses, SIGKILLs, Redis restarts) are in
`test_queue_workers.py`.
"""

from __future__ import annotations

import json
import threading
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import redis
from sqlalchemy import update

from appliance.errors import JobNotFound, JobStateConflict
from appliance.jobs import JobService
from appliance.queue import QueueMisconfigured, check_settings
from appliance.runtime.recovery import Reconciler
from appliance.runtime.runner import JobRunner
from appliance.runtime.watchdog import Watchdog
from appliance.schema import TaskRequest
from appliance.settings import Settings, load_settings
from appliance.store.base import utcnow
from appliance.store.tables import Job, WorkerRow
from tests.queue_helpers import RedisServer, png_bytes, wait_for
from workers.gpus import Gpu, parse_devices, parse_nvidia_smi, plan_workers

CAPTION = TaskRequest(task="caption", max_new_tokens=4)


def make_settings(tmp_path: Path, store_url: str, redis_url: str, **queue: Any) -> Settings:
    return load_settings(
        config_file=tmp_path / "none.toml",
        data_dir=tmp_path / "data",
        models_dir=tmp_path / "models",
        redis_url=redis_url,
        database_url=store_url,
        device="cpu",
        queue={"stale_after_s": 5, "heartbeat_s": 1, "lost_after_s": 0, **queue},
    )


@pytest.fixture
def redis_url(redis_server: str) -> str:
    url = redis_server.rsplit("/", 1)[0] + "/2"  # db 2: this module's, flushed per test
    redis.Redis.from_url(url).flushdb()
    return url


@pytest.fixture
def service(tmp_path: Path, store_url: str, redis_url: str) -> JobService:
    return JobService.from_settings(make_settings(tmp_path, store_url, redis_url))


@pytest.fixture(scope="module")
def pipeline(tiny_models_dir: Path, tmp_path_factory: pytest.TempPathFactory):  # -> Pipeline
    from appliance.pipeline import Pipeline

    tmp = tmp_path_factory.mktemp("pipeline")
    settings = load_settings(
        config_file=tmp / "none.toml", models_dir=tiny_models_dir, data_dir=tmp, device="cpu"
    )
    return Pipeline(settings)


def runner_for(service: JobService, pipeline: Any, **kwargs: Any) -> JobRunner:
    return JobRunner(
        service.backend, hostname="gpu0@test", device="cpu", pipeline=pipeline, **kwargs
    )


def messages(service: JobService, queue: str) -> list[dict[str, Any]]:
    return [json.loads(m) for m in service.broker.redis.lrange(queue, 0, -1)]


# -- submit ---------------------------------------------------------------------------------


def test_submit_stores_the_file_by_content_and_sends_to_its_lane(service: JobService) -> None:
    data = png_bytes(1)
    job = service.submit(data, "../../etc/x.png", CAPTION, source="api", owner="ana")
    folder = service.submit(data, "x.png", CAPTION, source="folder")
    assert job.state == "queued" and job.priority == "interactive" and job.owner == "ana"
    assert folder.priority == "bulk"
    assert job.filename == "x.png"  # never a path from the client
    path = Path(job.input_path)
    assert path == Path(folder.input_path)  # content-addressed: stored once
    assert path.read_bytes() == data and path.name == job.input_sha256
    assert path.is_relative_to(service.settings.uploads_dir)
    assert [m["headers"]["id"] for m in messages(service, "interactive")] == [job.id]
    assert [m["headers"]["id"] for m in messages(service, "bulk")] == [folder.id]
    assert service.queue_depth() == {"interactive": 1, "bulk": 1, "text": 0, "running": 0}


def test_idempotency_key_is_scoped_by_owner(service: JobService) -> None:
    a = service.submit(b"x", "a.png", CAPTION, source="api", owner="ana", idempotency_key="k")
    again = service.submit(b"x", "a.png", CAPTION, source="api", owner="ana", idempotency_key="k")
    other = service.submit(b"x", "a.png", CAPTION, source="api", owner="bo", idempotency_key="k")
    assert again.id == a.id and other.id != a.id
    assert len(messages(service, "interactive")) == 2


def test_cancel_retry_and_errors(service: JobService) -> None:
    job = service.submit(b"x", "a.png", CAPTION, source="cli")
    assert service.cancel(job.id).state == "cancelled"
    with pytest.raises(JobStateConflict):
        service.cancel(job.id)
    assert service.retry(job.id).state == "queued"
    with pytest.raises(JobStateConflict):
        service.retry(job.id)
    with pytest.raises(JobNotFound):
        service.cancel("nope")
    assert [e["event"] for e in service.history(job.id)] == ["queued", "cancelled", "queued"]


def test_submit_with_redis_down_is_sent_by_the_reconciler(tmp_path: Path, store_url: str) -> None:
    server = RedisServer(tmp_path / "redis")  # not started yet
    service = JobService.from_settings(make_settings(tmp_path, store_url, server.url))
    job = service.submit(png_bytes(2), "a.png", CAPTION, source="api")  # must not raise
    assert service.get(job.id).state == "queued"  # type: ignore[union-attr]
    server.start()
    try:
        assert messages(service, "interactive") == []
        assert Reconciler(service.backend).run_once()["resent"] == 1
        assert [m["headers"]["id"] for m in messages(service, "interactive")] == [job.id]
        assert Reconciler(service.backend).run_once()["resent"] == 0  # present: not sent twice
        service.broker.redis.flushall()  # Redis lost everything
        assert Reconciler(service.backend).run_once()["resent"] == 1
    finally:
        server.stop()


def test_events_stream_from_the_store(service: JobService) -> None:
    got: list[dict[str, Any]] = []
    ready = threading.Event()

    def listen() -> None:
        for event in service.events(poll_s=0.1, max_s=10):
            ready.set()
            if event is not None:
                got.append(event)
                if event["event"] == "cancelled":
                    return

    thread = threading.Thread(target=listen, daemon=True)
    thread.start()
    wait_for(ready.is_set, 5, "the event stream to start")
    job = service.submit(b"x", "a.png", CAPTION, source="api")
    service.cancel(job.id)
    thread.join(10)
    assert [(e["job_id"], e["event"]) for e in got] == [(job.id, "queued"), (job.id, "cancelled")]
    replay = list(service.events(after=got[0]["id"] - 1, max_s=0.2, poll_s=0.1))
    assert [e["event"] for e in replay if e] == ["queued", "cancelled"]
    assert service.last_event_id() == got[-1]["id"]


# -- reading --------------------------------------------------------------------------------


def test_get_many_reads_in_bulk_and_leaves_out_unknown_ids(service: JobService) -> None:
    a = service.submit(b"a", "a.png", CAPTION, source="api")
    b = service.submit(b"b", "b.png", CAPTION, source="folder")
    service.cancel(b.id)
    # More ids than one IN (...) chunk holds, the known ones at both ends.
    ids = [a.id, *(str(uuid.uuid4()) for _ in range(600)), b.id]
    jobs = service.get_many(ids)
    assert set(jobs) == {a.id, b.id}
    assert jobs[a.id] == service.get(a.id) and jobs[b.id].state == "cancelled"
    assert service.get_many([]) == {}


def test_wait_reads_in_bulk_in_the_order_given(service: JobService) -> None:
    a = service.submit(b"a", "a.png", CAPTION, source="api")
    b = service.submit(b"b", "b.png", CAPTION, source="api")
    service.cancel(a.id)
    service.cancel(b.id)
    assert [j.id for j in service.wait([b.id, a.id, b.id], timeout=5)] == [b.id, a.id, b.id]
    queued = service.submit(b"c", "c.png", CAPTION, source="api")
    (still,) = service.wait([queued.id], timeout=0.05, poll_s=0.01)  # gives up, no raise
    assert still.state == "queued"
    with pytest.raises(JobNotFound, match="no job nope"):
        service.wait([a.id, "nope"], timeout=5)
    assert service.wait([]) == []
    # finished_since takes a naive datetime as UTC, like the other reads.
    naive = (utcnow() - timedelta(minutes=5)).replace(tzinfo=None)
    assert [state for _, _, state in service.finished_since(naive)] == ["cancelled"] * 2


def _succeed(service: JobService, job_id: str, text: str) -> None:
    with service.store.write() as session:
        session.execute(
            update(Job).where(Job.id == job_id).values(state="succeeded", result_text=text)
        )


def test_list_searches_words_literally_and_by_owner(service: JobService) -> None:
    ana = service.submit(b"a", "yard.png", CAPTION, source="api", owner="ana")
    bo = service.submit(b"b", "desk.png", CAPTION, source="api", owner="bo")
    _succeed(service, ana.id, "A yellow FORKLIFT, 100% paid")
    _succeed(service, bo.id, "a forklift by the desk, 100 paid")

    def found(**filters: Any) -> list[str]:
        return [j.id for j in service.list(**filters).items]

    assert found(terms=["Forklift"]) == [bo.id, ana.id]  # any case, newest first
    assert found(terms=["forklift"], owner="ana") == [ana.id]
    assert found(terms=["forklift", "desk"]) == [bo.id]  # every word must occur
    assert found(terms=["DESK.PNG"]) == [bo.id]  # the filename counts too
    assert found(terms=["100%"]) == [ana.id]  # % and _ are literal, not wildcards
    assert found(terms=["1_0"]) == []
    assert found(terms=["forklift"], task="ocr") == []


def test_lane_positions_recent_jobs_and_batch_jobs(service: JobService) -> None:
    first = service.submit(b"1", "1.png", CAPTION, source="api", owner="ana")
    bulk = service.submit(b"2", "2.png", CAPTION, source="folder")
    second = service.submit(b"3", "3.png", CAPTION, source="api", owner="bo", batch_id="b1")
    third = service.submit(b"4", "4.png", CAPTION, source="api", owner="ana", batch_id="b1")
    assert service.lane_positions() == {first.id: 1, second.id: 2, third.id: 3, bulk.id: 1}
    assert service.lane_positions(scan=2) == {first.id: 1, bulk.id: 1}  # the oldest only
    service.cancel(first.id)
    assert service.lane_positions() == {second.id: 1, third.id: 2, bulk.id: 1}

    def recent(**kwargs: Any) -> list[str]:
        return [j.id for j in service.recent(**kwargs)]

    # An ended job shows while it was created since `since`; an active one always does.
    later = utcnow() + timedelta(hours=1)
    assert recent(since=later) == [third.id, second.id, bulk.id]
    assert recent(since=later - timedelta(hours=2), owner="ana") == [third.id, first.id]
    assert recent(since=later, limit=1) == [third.id]

    assert [j.id for j in service.batch_jobs("b1")] == [second.id, third.id]  # oldest first
    assert [j.id for j in service.batch_jobs("b1", owner="bo")] == [second.id]
    assert service.batch_jobs("nope") == []


# -- settings and Redis checks --------------------------------------------------------------


def test_refuses_a_visibility_timeout_below_the_longest_run(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, "sqlite://", "redis://x", visibility_timeout_s=600)
    with pytest.raises(QueueMisconfigured, match="visibility_timeout"):
        check_settings(settings)


def test_refuses_a_redis_that_evicts(tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "redis").start()
    try:
        server_client = redis.Redis(port=server.port)
        server_client.config_set("maxmemory-policy", "allkeys-lru")
        service = JobService.from_settings(
            make_settings(tmp_path, f"sqlite:///{tmp_path / 's.db'}", server.url)
        )
        with pytest.raises(QueueMisconfigured, match="noeviction"):
            service.broker.check_noeviction()
        server_client.config_set("maxmemory-policy", "noeviction")
        service.broker.check_noeviction()
    finally:
        server.stop()


# -- the runner, in-process with the tiny models --------------------------------------------


def test_batched_run_gives_the_one_by_one_results(service: JobService, pipeline: Any) -> None:
    service.settings.queue.batch_size = 4
    datas = [png_bytes(i, (60 + 10 * i, 50)) for i in range(4)]
    jobs = [service.submit(d, f"{i}.png", CAPTION, source="api") for i, d in enumerate(datas)]
    assert runner_for(service, pipeline).run_job(jobs[0].id) == "succeeded"
    done = [service.get(j.id) for j in jobs]
    assert all(j is not None and j.state == "succeeded" for j in done)
    assert {j.timings["batch_size"] for j in done if j and j.timings} == {4}
    alone = [pipeline.analyze_bytes(d, CAPTION).text for d in datas]
    assert [j.result_text for j in done if j] == alone
    # Their own messages arrive later and change nothing.
    assert runner_for(service, pipeline).run_job(jobs[1].id) == "skipped"


def test_bad_input_fails_once_with_the_reason_and_keeps_the_file(
    service: JobService, pipeline: Any
) -> None:
    job = service.submit(b"not an image at all", "bad.png", CAPTION, source="folder")
    assert runner_for(service, pipeline).run_job(job.id) == "failed"
    failed = service.get(job.id)
    assert failed is not None and failed.state == "failed" and failed.attempts == 1
    assert failed.error_code == "bad_input" and "not an image" in (failed.error or "")
    assert Path(failed.input_path).read_bytes() == b"not an image at all"
    assert messages(service, "bulk") == [messages(service, "bulk")[0]]  # no retry sent


def test_in_flight_batch_takes_interactive_first_and_jobs_that_arrive_while_it_runs(
    service: JobService, pipeline: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Free rows go to interactive jobs before bulk ones, and a job queued while the batch
    decodes joins it (any generation parameters) instead of waiting for the batch to end."""
    service.settings.queue.batch_size = 2
    long = TaskRequest(task="caption", max_new_tokens=40)
    bulk = [service.submit(png_bytes(20 + i), f"b{i}.png", long, source="folder") for i in range(3)]
    panel = [
        service.submit(png_bytes(30 + i), f"p{i}.png", CAPTION, source="api") for i in range(2)
    ]
    real, steps, late = JobRunner._step, [0], []

    def arrive_midway(self: JobRunner, batch: Any) -> Any:
        steps[0] += 1
        if steps[0] == 3:  # the batch is decoding: a new job with other parameters arrives
            other = TaskRequest(task="caption", max_new_tokens=5, temperature=0.8, seed=3)
            late.append(service.submit(png_bytes(40), "late.png", other, source="api"))
        return real(self, batch)

    monkeypatch.setattr(JobRunner, "_step", arrive_midway)
    assert runner_for(service, pipeline).run_job(bulk[0].id) == "succeeded"
    done = {j.id: service.get(j.id) for j in [*bulk, *panel, *late]}
    assert all(j is not None and j.state == "succeeded" for j in done.values())
    started = {i: j.started_at for i, j in done.items()}  # type: ignore[union-attr]
    assert max(started[p.id] for p in panel) <= min(started[b.id] for b in bulk[1:])
    assert done[late[0].id].timings["batch_size"] == 2  # type: ignore[union-attr,index]


def test_a_row_that_leaves_is_refilled_at_the_next_step_not_the_next_poll(
    service: JobService, pipeline: Any
) -> None:
    """A freed row takes the next queued job at once. With the periodic poll alone (here once
    a minute) the short jobs would wait for the long row to end."""
    service.settings.queue.batch_size = 2
    service.settings.queue.batch_wait_ms = 60_000
    long = TaskRequest(task="caption", max_new_tokens=48)
    first = service.submit(png_bytes(50), "long.png", long, source="folder")
    short = [service.submit(png_bytes(51 + i), f"s{i}.png", CAPTION, source="folder")
             for i in range(3)]  # fmt: skip
    assert runner_for(service, pipeline).run_job(first.id) == "succeeded"
    done = service.get_many([first.id, *(j.id for j in short)])
    assert all(j.state == "succeeded" for j in done.values())
    ended = done[first.id].finished_at
    assert ended is not None
    # Each short job started (and ended) while the long row was still decoding.
    assert all(done[j.id].started_at < ended for j in short)  # type: ignore[operator]
    assert all(done[j.id].timings["batch_size"] == 2 for j in short)  # type: ignore[index]


def test_transient_error_requeues_with_backoff_then_gives_up(
    service: JobService, pipeline: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    service.settings.queue.max_attempts = 2

    def flaky(self: JobRunner, batch: Any) -> Any:
        raise ConnectionError("broker hiccup")

    monkeypatch.setattr(JobRunner, "_step", flaky)
    job = service.submit(png_bytes(3), "a.png", CAPTION, source="api")
    runner = runner_for(service, pipeline)
    assert runner.run_job(job.id) == "retrying"
    queued = service.get(job.id)
    assert queued is not None and queued.state == "queued" and queued.attempts == 1
    assert "broker hiccup" in (queued.error or "")
    retry = messages(service, "interactive")[0]  # LPUSH: newest first
    assert retry["headers"]["eta"] is not None  # sent with a countdown
    assert runner.run_job(job.id) == "retrying"
    final = service.get(job.id)
    assert final is not None and final.state == "failed" and final.error_code == "gave_up"


def test_out_of_memory_retries_each_job_alone(
    service: JobService, pipeline: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    class OutOfMemoryError(RuntimeError):  # the name torch.cuda's has
        pass

    def oom(self: JobRunner, batch: Any) -> Any:
        if len(self.current) > 1:
            raise OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return JobRunner.__dict__["_real_step"](self, batch)

    monkeypatch.setattr(JobRunner, "_real_step", JobRunner._step, raising=False)
    monkeypatch.setattr(JobRunner, "_step", oom)
    service.settings.queue.batch_size = 2
    jobs = [service.submit(png_bytes(i), f"{i}.png", CAPTION, source="api") for i in (6, 7)]
    runner = runner_for(service, pipeline)
    assert runner.run_job(jobs[0].id) == "retrying"
    requeued = [service.get(j.id) for j in jobs]
    assert all(j is not None and j.state == "queued" and "out of memory" in (j.error or "")
               for j in requeued)  # fmt: skip
    for job in jobs:  # alone now: each fits
        assert runner.run_job(job.id) == "succeeded"
        assert service.get(job.id).timings["batch_size"] == 1  # type: ignore[union-attr,index]


def test_a_second_worker_under_one_hostname_is_refused(service: JobService, tmp_path: Path) -> None:
    import subprocess
    import sys

    from appliance.runtime.worker import WorkerRuntime

    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "gpu9@dup"])
    try:
        service.store.register_worker(
            WorkerRow(hostname="gpu9@dup", pid=other.pid, boot="b", device="cpu", state="idle")
        )
        with pytest.raises(QueueMisconfigured, match="already running"):
            WorkerRuntime(service.settings, "gpu9@dup").start(warm=False)
    finally:
        other.kill()
        other.wait()
    runtime = WorkerRuntime(service.settings, "gpu9@dup")
    runtime.start(warm=False)  # the old one is gone: take over its name
    runtime.stop()
    (row,) = [w for w in service.workers() if w.hostname == "gpu9@dup"]
    assert row.state == "stopped"


def test_cancel_while_running_drops_the_result(
    service: JobService, pipeline: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    job = service.submit(png_bytes(4), "a.png", CAPTION, source="api")
    real = JobRunner._step

    def cancel_midway(self: JobRunner, batch: Any) -> Any:
        if service.get(job.id).state == "running":  # type: ignore[union-attr]
            service.cancel(job.id)
        return real(self, batch)

    monkeypatch.setattr(JobRunner, "_step", cancel_midway)
    assert runner_for(service, pipeline).run_job(job.id) == "dropped"
    final = service.get(job.id)
    assert final is not None and final.state == "cancelled" and final.result is None


def test_batch_size_one_takes_the_queued_jobs_one_after_another(
    service: JobService, pipeline: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No batching, and no trip back through Celery between jobs either: the loop takes the
    next queued job as soon as its one row ends (bench/pipeline.py: that trip left the model
    idle ~10 % of a short job's time); the jobs' own messages then find them done."""
    jobs = [service.submit(png_bytes(i), f"{i}.png", CAPTION, source="api") for i in (1, 2, 3)]
    rows: list[int] = []
    real = JobRunner._step

    def count_rows(self: JobRunner, batch: Any) -> Any:
        rows.append(len(self.current))
        return real(self, batch)

    monkeypatch.setattr(JobRunner, "_step", count_rows)
    service.settings.queue.batch_size = 1
    runner = runner_for(service, pipeline)
    assert runner.run_job(jobs[0].id) == "succeeded"
    assert rows and max(rows) == 1  # one row at a time
    assert [service.get(j.id).state for j in jobs] == ["succeeded"] * 3  # type: ignore[union-attr]
    assert [runner.run_job(j.id) for j in jobs[1:]] == ["skipped", "skipped"]


def test_cancel_while_running_stops_the_generation(
    service: JobService, pipeline: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What the worker's heartbeat thread does: it sees the cancel in the store and stops."""
    jobs = [service.submit(png_bytes(i), f"{i}.png", CAPTION, source="api") for i in (6, 7)]
    real = JobRunner._step
    checks: list[bool] = []
    seen: set[tuple[str, ...]] = set()

    def cancel_midway(self: JobRunner, batch: Any) -> Any:
        run = tuple(self.current)
        if run and run not in seen:  # each run's first step
            seen.add(run)
            checks.append(self.check_cancelled())  # nothing cancelled yet: keeps going
            if run == (jobs[0].id,):
                service.cancel(jobs[0].id)
                checks.append(self.check_cancelled())
        return real(self, batch)

    monkeypatch.setattr(JobRunner, "_step", cancel_midway)
    service.settings.queue.batch_size = 1
    runner = runner_for(service, pipeline)
    # With batch_size 1 the loop takes the next queued job the moment the cancelled row ends,
    # and the stop is the cancelled job's alone: the next one runs to its end.
    assert runner.run_job(jobs[0].id) == "succeeded"
    assert runner.check_cancelled() is False  # between runs there is nothing to stop
    assert runner.run_job(jobs[1].id) == "skipped"  # its own message finds it done
    assert checks == [False, True, False]
    first, second = service.get(jobs[0].id), service.get(jobs[1].id)
    assert first is not None and first.state == "cancelled" and first.result is None
    assert second is not None and second.state == "succeeded" and second.result_text


def test_worker_heartbeat_stops_a_cancelled_generation(
    service: JobService, pipeline: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from appliance.runtime.worker import WorkerRuntime

    runtime = WorkerRuntime(service.settings, "gpu8@cancel")
    runtime.start(warm=False)
    try:
        runner = runtime.runner
        assert runner is not None
        runner._pipeline = pipeline
        job = service.submit(png_bytes(8), "a.png", CAPTION, source="api")
        real = JobRunner._step
        noticed: list[bool] = []

        def cancel_and_wait(self: JobRunner, batch: Any) -> Any:
            if not noticed:
                service.cancel(job.id)
                noticed.append(self._stop.wait(10))  # set by the heartbeat thread, not by us
            return real(self, batch)

        monkeypatch.setattr(JobRunner, "_step", cancel_and_wait)
        # The notice through Redis is lost: the heartbeat's store check must catch the cancel.
        monkeypatch.setattr(type(service.broker), "send_cancel", lambda *a: None)
        assert runner.run_job(job.id) == "cancelled"
        assert noticed == [True]
    finally:
        runtime.stop()


def test_a_cancel_notice_stops_the_generation_without_waiting_for_a_heartbeat(
    service: JobService, pipeline: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from appliance.runtime.worker import CancelListener

    runner = runner_for(service, pipeline)
    listener = CancelListener(service.broker, runner.hostname, runner.check_cancelled)
    listener.start()  # no heartbeat thread here: only the notice can stop the run
    assert listener.subscribed.is_set()
    job = service.submit(png_bytes(9), "a.png", CAPTION, source="api")
    real = JobRunner._step
    noticed: list[bool] = []

    def cancel_and_wait(self: JobRunner, batch: Any) -> Any:
        if not noticed:
            service.cancel(job.id)  # publishes the notice to the job's worker
            noticed.append(self._stop.wait(10))
        return real(self, batch)

    monkeypatch.setattr(JobRunner, "_step", cancel_and_wait)
    try:
        assert runner.run_job(job.id) == "cancelled"
    finally:
        listener.stop()
    assert noticed == [True]


def test_hard_time_limit_fails_the_job_and_ends_the_worker(
    service: JobService, pipeline: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    service.settings.queue.time_limit_s = 1  # type: ignore[assignment]
    exited = threading.Event()
    stuck = threading.Event()

    def hang(self: JobRunner, batch: Any) -> Any:
        stuck.wait(10)
        raise RuntimeError("unstuck")

    monkeypatch.setattr(JobRunner, "_step", hang)
    job = service.submit(png_bytes(5), "a.png", CAPTION, source="api")
    runner = runner_for(service, pipeline, exit_on_timeout=lambda code: (exited.set(), stuck.set()))
    runner.run_job(job.id)
    assert exited.is_set()
    final = service.get(job.id)
    assert final is not None and final.state == "failed" and final.error_code == "timeout"


def test_summary_and_batch_digest_are_chained(service: JobService, pipeline: Any) -> None:
    service.settings.queue.batch_size = 1
    batch = service.open_batch(source="folder", label="scans")
    request = TaskRequest(task="caption", max_new_tokens=4, summarize=True)
    jobs = [
        service.submit(png_bytes(i), f"{i}.png", request, source="folder", batch_id=batch.id)
        for i in range(2)
    ]
    service.close_batch(batch.id)
    runner = runner_for(service, pipeline)
    for job in jobs:
        runner.run_job(job.id)
    text = [m["headers"]["id"] for m in messages(service, "text")]
    assert sorted(text) == sorted([f"summary-{j.id}" for j in jobs] + [f"digest-{batch.id}"])
    for job in jobs:
        assert runner.summarize_job(job.id) == "done"
        assert runner.summarize_job(job.id) == "skipped"  # once
    assert runner.digest_batch(batch.id) == "done"
    info = service.get_batch(batch.id)
    assert info is not None and info.done and info.digest_state == "done" and info.digest
    assert info.counts == {"succeeded": 2}
    assert all((service.get(j.id).summary or "") for j in jobs)  # type: ignore[union-attr]


# -- the reconciler -------------------------------------------------------------------------


def test_reconciler_requeues_a_dead_workers_jobs_then_fails_poison(service: JobService) -> None:
    service.settings.queue.max_attempts = 2
    job = service.submit(b"x", "a.png", CAPTION, source="api")
    store = service.store
    store.register_worker(
        WorkerRow(hostname="gpu1@dead", pid=1, boot="b", device="cpu", queues=[], state="busy")
    )
    store.claim(job.id, worker="gpu1@dead", device="cpu", claim="c1")
    reconciler = Reconciler(service.backend, "gpu0@alive")
    assert reconciler.run_once()["recovered"] == 0  # its heartbeat is fresh
    assert reconciler.recover_worker("gpu1@dead", "restarted") == 1  # what its restart does
    requeued = service.get(job.id)
    assert requeued is not None and requeued.state == "queued" and requeued.attempts == 1
    store.claim(job.id, worker="gpu1@dead", device="cpu", claim="c2")
    with store.write() as session:  # it went silent
        row = session.get(WorkerRow, "gpu1@dead")
        assert row is not None
        row.heartbeat_at = utcnow().replace(year=2000)
    assert reconciler.run_once()["recovered"] == 1
    poisoned = service.get(job.id)
    assert poisoned is not None and poisoned.state == "failed"
    assert poisoned.error_code == "poison" and "2 times" in (poisoned.error or "")


def test_retention_purges_only_old_finished_uploads(service: JobService, tmp_path: Path) -> None:
    service.settings.queue.retention_days = 1e-9
    done = service.submit(b"old", "a.png", CAPTION, source="api")
    service.cancel(done.id)
    waiting = service.submit(b"new", "b.png", CAPTION, source="api")
    outside = tmp_path / "drop" / "c.png"
    outside.parent.mkdir()
    outside.write_bytes(b"mine")
    theirs = service.submit(b"mine", "c.png", CAPTION, source="folder", input_path=outside)
    service.cancel(theirs.id)
    assert Reconciler(service.backend).purge() == 1
    assert not Path(done.input_path).exists()
    assert Path(waiting.input_path).exists() and outside.exists()
    assert service.get(done.id).input_purged  # type: ignore[union-attr]
    with pytest.raises(JobNotFound):
        service.input_file(done.id)


# -- GPU planning ---------------------------------------------------------------------------


def test_gpu_plan() -> None:
    smi = (
        "GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-1234)\n"
        "GPU 1: NVIDIA H100 80GB HBM3 (UUID: GPU-5678)\n"
    )
    gpus = parse_nvidia_smi(smi)
    assert gpus == [
        Gpu(0, "NVIDIA H100 80GB HBM3", "GPU-1234"),
        Gpu(1, "NVIDIA H100 80GB HBM3", "GPU-5678"),
    ]
    specs = plan_workers(gpus=gpus, host="box")
    assert [s.hostname for s in specs] == ["gpu0@box", "gpu1@box"]
    assert specs[1].env["CUDA_VISIBLE_DEVICES"] == "1"
    assert specs[1].env["APPLIANCE_DEVICE"] == "cuda"
    assert [s.hostname for s in plan_workers(["1"], gpus=gpus, host="box")] == ["gpu1@box"]
    with pytest.raises(ValueError, match="no GPU 2"):
        plan_workers(["2"], gpus=gpus, host="box")
    (cpu,) = plan_workers(gpus=[], host="box")
    assert cpu.hostname == "cpu@box" and cpu.env["CUDA_VISIBLE_DEVICES"] == ""
    simulated = plan_workers(["0", "1"], simulate=True, host="box")
    assert [s.hostname for s in simulated] == ["gpu0@box", "gpu1@box"]
    assert all(s.env["APPLIANCE_DEVICE"] == "cpu" for s in simulated)
    (text,) = plan_workers(["cpu"], host="box", queues=("text",))
    assert text.hostname == "text@box"  # beside a cpu@box job worker
    assert plan_workers(["0"], gpus=gpus, host="box", name="big")[0].hostname == "big@box"
    assert parse_devices("0, 1") == ["0", "1"]


def test_workers_split_the_cores() -> None:
    """Each worker gets an equal share of the cores, one share kept for the web and Redis."""
    gpus = [Gpu(i, "NVIDIA H100") for i in range(4)]
    specs = plan_workers(gpus=gpus, host="box", cores=16)
    assert {s.env["APPLIANCE_CPU_THREADS"] for s in specs} == {"3"}
    assert {s.env["OMP_NUM_THREADS"] for s in specs} == {"3"}
    (cpu,) = plan_workers(gpus=[], host="box", cores=2)
    assert cpu.env["APPLIANCE_CPU_THREADS"] == "1"
    (cpu,) = plan_workers(gpus=[], host="box", cores=16)
    assert cpu.env["APPLIANCE_CPU_THREADS"] == "8"
    many = plan_workers([str(i) for i in range(8)], simulate=True, host="box", cores=4)
    assert {s.env["APPLIANCE_CPU_THREADS"] for s in many} == {"1"}  # never 0
    chosen = plan_workers(gpus=gpus, host="box", cores=16, cpu_threads=6)
    assert {s.env["APPLIANCE_CPU_THREADS"] for s in chosen} == {"6"}
    with pytest.raises(ValueError):
        parse_devices("0,0")


def test_watchdog_fires_only_for_the_run_still_armed() -> None:
    calls: list[tuple[Any, ...]] = []
    fired = threading.Event()
    dog = Watchdog(lambda *args: (calls.append(args), fired.set()))
    dog.arm(1.0, "disarmed in time")
    dog.disarm()
    assert not dog.armed
    dog.arm(1.5, "late")  # the thread is waiting for the first deadline: it must re-read
    assert fired.wait(10)
    assert calls == [(1.5, "late")] and not dog.armed
    fired.clear()
    dog.arm(600, "long")
    dog.disarm()
    dog.arm(0.05, "sooner than the thread's wake-up")  # must wake the thread early
    assert fired.wait(10)
    assert calls[-1] == (0.05, "sooner than the thread's wake-up")
