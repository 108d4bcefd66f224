"""OpenAI Files + Batches bookkeeping on SQLite and PostgreSQL, with a private Redis and no
worker: lines become bulk jobs, the worker side's hook and the reconciler's sweep write the
output and error files, cancel, expiry, a resumed expansion, and who sees what."""

from __future__ import annotations

import base64
import json
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import redis
from sqlalchemy import update

from appliance.errors import InvalidRequest, JobStateConflict, OpenAINotFound
from appliance.jobs import JobBackend, JobService
from appliance.openai import OpenAIBatches, OpenAIFiles
from appliance.openai.finish import BatchFinisher
from appliance.settings import load_settings
from appliance.store.base import utcnow
from appliance.store.openai_tables import OpenAIBatch
from appliance.store.tables import Batch
from tests.api_fixtures import jpeg_bytes

ENDPOINT = "/v1/chat/completions"


class Box:
    """The web side (no hook: it never writes batch files) and the worker side (the hook and
    the reconciler's sweep), on one store."""

    def __init__(self, settings: Any) -> None:
        self.web = JobService.from_settings(settings)
        self.files = OpenAIFiles(self.web.store, settings)
        self.batches = OpenAIBatches(self.web, self.files)
        worker = JobBackend.from_settings(settings, migrate=False)
        self.finisher = BatchFinisher(worker)
        worker.on_batch_finished.append(self.finisher.on_batch_finished)
        self.worker = worker
        self.store = worker.store

    def upload(self, lines: list[Any], owner: str = "ana") -> str:
        raw = "\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines) + "\n"
        return self.files.upload(raw.encode(), "in.jsonl", "batch", owner).id

    def create(self, file_id: str, owner: str = "ana") -> dict[str, Any]:
        return self.batches.create(owner=owner, input_file_id=file_id, endpoint=ENDPOINT)

    def run(self, job_id: str, text: str | None = "an answer", *, ended: bool = True) -> None:
        """What a worker does with one job: claim it, then a result (or a failure)."""
        token = str(uuid.uuid4())
        job = self.store.claim(job_id, worker="gpu0@test", device="cpu", claim=token)
        assert job is not None
        if not ended:
            return
        if text is None:
            assert self.store.fail(job_id, "the model broke", "model", claim=token)
        else:
            page = {"page": 1, "text": text, "tokens": 2, "finish_reason": "stop"}
            result = {
                "task": "chat",
                "model": "tiny-vision",
                "pages": [page | {"prompt_tokens": 7}],
            }
            assert self.store.succeed(
                job_id, token, result=result, text=text, timings={}, pages=1, summary_state=None
            )
        self.worker.job_ended(job.batch_id)

    def finish(self, job_id: str, token_text: str = "an answer") -> None:
        token = self.store.get(job_id).claim  # type: ignore[union-attr]
        page = {"page": 1, "text": token_text, "tokens": 2, "finish_reason": "stop"}
        result = {"task": "chat", "model": "tiny-vision", "pages": [page]}
        assert self.store.succeed(
            job_id, token, result=result, text=token_text, timings={}, pages=1, summary_state=None
        )
        self.worker.job_ended(self.store.get(job_id).batch_id)  # type: ignore[union-attr]

    def job_ids(self, batch_id: str) -> list[str]:
        return [job.id for line, job in self.store.batch_lines(batch_id) if job is not None]

    def content(self, file_id: str) -> list[dict[str, Any]]:
        text = self.files.content(file_id, None).decode()
        return [json.loads(line) for line in text.splitlines()]


@pytest.fixture
def box(tmp_path: Path, redis_server: str, store_url: str) -> Box:
    url = redis_server.rsplit("/", 1)[0] + "/4"  # db 4: this module's, flushed per test
    redis.Redis.from_url(url).flushdb()
    settings = load_settings(
        config_file=tmp_path / "none.toml",
        data_dir=tmp_path / "data",
        models_dir=tmp_path / "models",
        redis_url=url,
        database_url=store_url,
        device="cpu",
    )
    return Box(settings)


def request(custom_id: str, text: str = "Hello?", **body: Any) -> dict[str, Any]:
    messages = [{"role": "user", "content": text}]
    return {
        "custom_id": custom_id,
        "method": "POST",
        "url": ENDPOINT,
        "body": {"messages": messages, **body},
    }


def image_request(custom_id: str) -> dict[str, Any]:
    url = "data:image/jpeg;base64," + base64.b64encode(jpeg_bytes()).decode()
    content = [
        {"type": "text", "text": "What is it?"},
        {"type": "image_url", "image_url": {"url": url}},
    ]
    body = {"model": "x", "messages": [{"role": "user", "content": content}], "max_tokens": 4}
    return {"custom_id": custom_id, "method": "POST", "url": ENDPOINT, "body": body}


def test_lines_become_bulk_jobs_and_the_last_job_writes_the_files(box: Box) -> None:
    file_id = box.upload(
        [
            request("a"),
            "{not json",
            image_request("b"),
            {"custom_id": "c", "method": "POST", "url": ENDPOINT, "body": {"model": "m"}},
            request("d"),
            request("d"),  # a repeated custom_id cannot be told apart in the output
        ]
    )
    batch = box.create(file_id)
    assert batch["status"] == "in_progress" and batch["object"] == "batch"
    assert batch["request_counts"] == {"total": 6, "completed": 0, "failed": 3}
    assert batch["in_progress_at"] and batch["expires_at"] - batch["created_at"] == 24 * 3600
    jobs = [box.web.get(job_id) for job_id in box.job_ids(batch["id"])]
    assert [j.priority for j in jobs] == ["bulk"] * 3  # type: ignore[union-attr]
    assert {(j.owner, j.source, j.batch_id, j.task) for j in jobs} == {  # type: ignore[union-attr]
        ("ana", "api", batch["id"], "chat")
    }
    assert jobs[1].filename == "chat-image-1" and jobs[0].filename == "chat.json"  # type: ignore[union-attr]
    # Expanding again (a reconciler resuming it) queues nothing twice.
    box.store.move_openai_batch(batch["id"], ["in_progress"], status="validating")
    box.batches.expand(batch["id"])
    assert box.job_ids(batch["id"]) == [j.id for j in jobs]  # type: ignore[union-attr]
    assert box.web.get_batch(batch["id"]).total == 3  # type: ignore[union-attr]

    box.run(jobs[0].id, "first")  # type: ignore[union-attr]
    box.run(jobs[1].id, None)  # type: ignore[union-attr]
    mid = box.batches.get(batch["id"], "ana")
    assert mid["status"] == "in_progress" and mid["output_file_id"] is None
    assert mid["request_counts"] == {"total": 6, "completed": 1, "failed": 4}
    box.run(jobs[2].id, "last")  # type: ignore[union-attr]

    done = box.batches.get(batch["id"], "ana")
    assert done["status"] == "completed" and done["completed_at"] and done["finalizing_at"]
    assert done["request_counts"] == {"total": 6, "completed": 2, "failed": 4}
    output = box.content(done["output_file_id"])
    assert [line["custom_id"] for line in output] == ["a", "d"]
    first = output[0]
    assert first["error"] is None and first["response"]["status_code"] == 200
    assert first["response"]["request_id"] == jobs[0].id  # type: ignore[union-attr]
    body = first["response"]["body"]
    assert body["object"] == "chat.completion" and body["model"] == "tiny-vision"
    assert body["choices"][0]["message"] == {"role": "assistant", "content": "first"}
    assert body["usage"] == {"prompt_tokens": 7, "completion_tokens": 2, "total_tokens": 9}
    errors = {
        line["custom_id"]: line["error"]["code"] for line in box.content(done["error_file_id"])
    }
    assert errors == {
        None: "invalid_json_line",
        "b": "model",
        "c": "invalid_request",
        "d": "duplicate_custom_id",
    }
    out_file = box.files.get(done["output_file_id"], "ana")
    assert out_file.purpose == "batch_output" and out_file.filename.endswith("_output.jsonl")
    # Finishing again (a second worker, the sweep) changes nothing.
    assert box.finisher.sweep() == 0
    assert not box.finisher.finish(box.store.get_openai_batch(batch["id"]))  # type: ignore[arg-type]


def test_cancel_lets_running_lines_finish_and_reports_the_rest(box: Box) -> None:
    batch = box.create(box.upload([request(f"r{i}") for i in range(4)]))
    ids = box.job_ids(batch["id"])
    box.run(ids[0], "done before")
    box.run(ids[1], ended=False)  # running when the cancel comes
    cancelling = box.batches.cancel(batch["id"], "ana")
    assert cancelling["status"] == "cancelling" and cancelling["cancelling_at"]
    assert [box.web.get(i).state for i in ids] == ["succeeded", "running", "cancelled", "cancelled"]  # type: ignore[union-attr]
    assert box.batches.cancel(batch["id"], "ana")["status"] == "cancelling"  # idempotent
    box.finish(ids[1], "done during")
    ended = box.batches.get(batch["id"], "ana")
    assert ended["status"] == "cancelled" and ended["cancelled_at"]
    assert ended["request_counts"] == {"total": 4, "completed": 2, "failed": 2}
    assert [x["custom_id"] for x in box.content(ended["output_file_id"])] == ["r0", "r1"]
    errors = box.content(ended["error_file_id"])
    assert [(x["custom_id"], x["error"]["code"]) for x in errors] == [
        ("r2", "batch_cancelled"),
        ("r3", "batch_cancelled"),
    ]
    with pytest.raises(JobStateConflict):
        box.batches.cancel(batch["id"], "ana")


def test_a_cancel_that_ends_every_line_is_finished_by_the_sweep(box: Box) -> None:
    batch = box.create(box.upload([request("x"), request("y")]))
    assert box.batches.cancel(batch["id"], "ana")["status"] == "cancelling"
    # The request side finished the job batch but writes no files: the reconciler does.
    assert box.batches.get(batch["id"], "ana")["status"] == "cancelling"
    assert box.finisher.sweep() == 1
    ended = box.batches.get(batch["id"], "ana")
    assert ended["status"] == "cancelled" and ended["output_file_id"] is None
    assert len(box.content(ended["error_file_id"])) == 2


def test_a_file_without_one_usable_line_fails_the_batch(box: Box) -> None:
    batch = box.create(box.upload(["nope", {"custom_id": "z", "body": {"messages": []}}]))
    assert batch["status"] == "failed" and batch["failed_at"]
    assert [(e["code"], e["line"]) for e in batch["errors"]["data"]] == [
        ("invalid_json_line", 1),
        ("invalid_request", 2),
    ]
    assert batch["request_counts"] == {"total": 2, "completed": 0, "failed": 2}
    assert box.finisher.sweep() == 0


def test_a_batch_left_validating_by_a_dead_request_is_queued_by_the_sweep(box: Box) -> None:
    file_id = box.upload([request("p"), request("q")])
    row = OpenAIBatch(
        id="batch_" + uuid.uuid4().hex[:24],
        owner="ana",
        status="validating",
        endpoint=ENDPOINT,
        completion_window="24h",
        input_file_id=file_id,
        total=0,
        completed=0,
        failed=0,
        created_at=utcnow() - timedelta(hours=1),
    )
    box.store.create_openai_batch(row, label="crashed")  # ... and the web server died here
    assert box.finisher.sweep(expand_stale=timedelta(hours=2)) == 0  # not stale yet
    assert box.finisher.sweep() == 1
    resumed = box.batches.get(row.id, "ana")
    assert resumed["status"] == "in_progress" and len(box.job_ids(row.id)) == 2
    # Died after `in_progress` but before its job batch was closed: closed by the sweep.
    with box.store.write() as session:
        session.execute(update(Batch).where(Batch.id == row.id).values(closed_at=None))
    assert box.finisher.sweep() == 1
    assert box.web.get_batch(row.id).closed_at is not None  # type: ignore[union-attr]
    assert len(box.job_ids(row.id)) == 2


def test_an_expired_batch_ends_expired_after_its_running_lines(box: Box) -> None:
    batch = box.create(box.upload([request("e1"), request("e2")]))
    ids = box.job_ids(batch["id"])
    box.run(ids[0], ended=False)
    box.store.move_openai_batch(batch["id"], ["in_progress"], expires_at=utcnow())
    assert box.finisher.sweep() == 1
    assert box.web.get(ids[1]).state == "cancelled"  # type: ignore[union-attr]
    box.finish(ids[0])
    ended = box.batches.get(batch["id"], "ana")
    assert ended["status"] == "expired" and ended["expired_at"]
    assert [x["error"]["code"] for x in box.content(ended["error_file_id"])] == ["batch_expired"]


def test_owners_see_their_own_files_and_batches_and_admins_all(box: Box) -> None:
    mine = box.create(box.upload([request("m")]))
    theirs = box.create(box.upload([request("t")], owner="bob"), owner="bob")
    with pytest.raises(OpenAINotFound):
        box.batches.get(theirs["id"], "ana")
    with pytest.raises(OpenAINotFound):
        box.batches.create(owner="ana", input_file_id=theirs["input_file_id"], endpoint=ENDPOINT)
    with pytest.raises(OpenAINotFound):
        box.files.content(theirs["input_file_id"], "ana")
    assert box.batches.get(theirs["id"], None)["id"] == theirs["id"]
    assert [b["id"] for b in box.batches.page("ana")[0]] == [mine["id"]]
    every, more = box.batches.page(None, limit=1)
    assert more and [b["id"] for b in every] == [theirs["id"]]
    rest, more = box.batches.page(None, after=theirs["id"], limit=1)
    assert not more and [b["id"] for b in rest] == [mine["id"]]
    files, _ = box.files.page("ana")
    assert [f.id for f in files] == [mine["input_file_id"]]
    box.files.delete(mine["input_file_id"], "ana")
    with pytest.raises(OpenAINotFound):
        box.files.get(mine["input_file_id"], "ana")
    with pytest.raises(InvalidRequest):
        box.files.upload(b"{}", "x.jsonl", "fine-tune", "ana")
    with pytest.raises(InvalidRequest):
        box.batches.create(
            owner="bob", input_file_id=theirs["input_file_id"], endpoint="/v1/embeddings"
        )
