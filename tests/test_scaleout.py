"""Acceptance of issue 13 (scale out): two boxes share one queue, one database and one object
store. Real SeaweedFS (S3), a private password-protected Redis, an own PostgreSQL database and
real processes, shared by the whole module: box A runs the API and the watcher only, box B a
worker only, in a mount namespace where box A's directory is an empty tmpfs.

The tests run in file order on the same fleet (each checks only its own jobs): 50 jobs through
both doors, an altered object, a 20 s store outage, SIGKILLs of box B's worker.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import signal
import socket
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from appliance.jobs import JobInfo, JobService
from appliance.schema import TaskRequest
from appliance.settings import Settings, load_settings
from tests.queue_helpers import (
    RedisServer,
    create_pg_database,
    drop_pg_database,
    free_port,
    png_bytes,
    postgres_reachable,
    wait_for,
)
from tests.scaleout_helpers import BoxProcess, SeaweedFS, can_hide_dirs

pytestmark = pytest.mark.slow

WORKER = f"gpu0@{socket.gethostname()}"
PASSWORD = "fleet-admin-pw-1"


def settings_from(env: dict[str, str]) -> Settings:
    """The settings a process started with `env` reads (the test's own view of a box)."""
    saved = dict(os.environ)
    os.environ.update({k: v for k, v in env.items() if k.startswith("APPLIANCE_")})
    try:
        return load_settings()
    finally:
        os.environ.clear()
        os.environ.update(saved)


class Fleet:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.procs: list[BoxProcess] = []
        self.weed: SeaweedFS | None = None
        self.redis: RedisServer | None = None
        self.db: str | None = None

    def start(self, models: Path) -> None:
        root = self.root
        self.weed = SeaweedFS(root / "head" / "weed").start()
        redis_password = secrets.token_hex(16)
        self.redis = RedisServer(root / "head" / "redis", password=redis_password).start()
        secret = root / "secrets" / "redis.password"
        secret.parent.mkdir()
        secret.write_text(redis_password + "\n")
        secret.chmod(0o600)
        self.db = create_pg_database()
        self.box_a = root / "boxA"
        self.drop = self.box_a / "drop"
        self.drop.mkdir(parents=True)
        common = {
            **os.environ,
            "APPLIANCE_CONFIG_FILE": str(root / "none.toml"),
            "APPLIANCE_MODELS_DIR": str(models),
            # The URL carries no password: it comes from the 0600 file.
            "APPLIANCE_REDIS_URL": self.redis.url,
            "APPLIANCE_REDIS_PASSWORD_FILE": str(secret),
            "APPLIANCE_DATABASE_URL": f"postgresql+psycopg://postgres@127.0.0.1:5432/{self.db}",
            "APPLIANCE_STORAGE__URL": "s3://appliance/fleet",
            "APPLIANCE_STORAGE__ENDPOINT_URL": self.weed.endpoint,
            "APPLIANCE_STORAGE__CONNECT_TIMEOUT_S": "1",
            "APPLIANCE_STORAGE__READ_TIMEOUT_S": "5",
            "APPLIANCE_STORAGE__RETRY_AFTER_S": "7",
            "APPLIANCE_DEVICE": "cpu",
            "APPLIANCE_GENERATION__MAX_NEW_TOKENS": "3",
            "APPLIANCE_QUEUE__HEARTBEAT_S": "1",
            "APPLIANCE_QUEUE__STALE_AFTER_S": "5",
            "APPLIANCE_QUEUE__RECONCILE_S": "1",
            "APPLIANCE_QUEUE__LOST_AFTER_S": "2",
            "APPLIANCE_QUEUE__BATCH_WAIT_MS": "20",
            "APPLIANCE_QUEUE__RETRY_BACKOFF_S": "0.5",
            "APPLIANCE_QUEUE__RETRY_BACKOFF_MAX_S": "2",
            # Kills below must not turn a job into poison: every job is to end exactly once.
            "APPLIANCE_QUEUE__MAX_ATTEMPTS": "10",
            "APPLIANCE_TEST_SLOW_S": "0.5",
            "OMP_NUM_THREADS": "1",
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
        }
        folder = {"path": str(self.drop), "task": "caption", "settle_seconds": 0.3}
        folder |= {"digest": False, "poll_seconds": 0.3, "rescan_seconds": 2}
        self.env_a = common | {
            "APPLIANCE_DATA_DIR": str(self.box_a / "data"),
            "APPLIANCE_FOLDERS": json.dumps([folder]),
        }
        self.env_b = common | {"APPLIANCE_DATA_DIR": str(root / "boxB" / "data")}
        self.settings = settings_from(self.env_a)
        self.service = JobService.from_settings(self.settings)  # migrates the database
        from appliance.tokens import TokenStore
        from appliance.users import UserStore

        self.token = TokenStore.from_settings(self.settings).create("fleet", "admin")[1]
        UserStore.from_settings(self.settings).create("root", PASSWORD, admin=True)
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        logs = root / "logs"
        logs.mkdir()
        web_args = ["web", "--bind", f"127.0.0.1:{port}", "--workers", "1", "--threads", "8"]
        self.web = BoxProcess(self.env_a, web_args, logs / "web.log")
        self.watcher = BoxProcess(self.env_a, ["watch"], logs / "watch.log")
        # Image lanes only: no summarizer to load, so each restart after a kill is quicker.
        worker_args = [
            "worker",
            "--devices",
            "0",
            "--simulate-gpus",
            "--queues",
            "interactive,bulk",
        ]
        worker_args += ["--include"]
        worker_args += ["tests.queue_hooks", "--loglevel", "WARNING", "--stop-timeout", "10"]
        self.worker = BoxProcess(self.env_b, worker_args, logs / "worker.log", hide=self.box_a)
        self.procs = [self.web, self.watcher, self.worker]
        for proc in self.procs:
            proc.start()
        self.http = requests.Session()
        self.http.headers["Authorization"] = f"Bearer {self.token}"
        wait_for(self._web_up, 60, "box A's web server")
        wait_for(lambda: self.worker_row(alive=True), 120, "box B's worker")

    def _web_up(self) -> bool:
        try:
            return requests.get(self.url + "/healthz", timeout=2).status_code == 200
        except requests.RequestException:
            return False

    def worker_row(self, *, alive: bool = False) -> Any:
        row = next((w for w in self.service.workers() if w.hostname == WORKER), None)
        return row if row is not None and (row.alive or not alive) else None

    def post(self, name: str, data: bytes) -> requests.Response:
        files = {"file": (name, data, "image/png")}
        return self.http.post(self.url + "/api/v1/jobs", files=files, data={"task": "caption"})

    def submit(self, name: str, data: bytes) -> str:
        resp = self.post(name, data)
        assert resp.status_code == 201, resp.text
        return str(resp.json()["jobs"][0]["id"])

    def jobs(self, ids: list[str]) -> list[JobInfo]:
        return [j for j in (self.service.get(i) for i in ids) if j is not None]

    def wait_done(self, ids: list[str], timeout: float) -> list[JobInfo]:
        def all_done() -> list[JobInfo] | None:
            jobs = self.jobs(ids)
            return jobs if len(jobs) == len(ids) and all(j.done for j in jobs) else None

        try:
            return wait_for(all_done, timeout, f"{len(ids)} jobs to end", poll=0.3)
        except AssertionError:
            states = Counter(j.state for j in self.jobs(ids))
            logs = "\n".join(p.tail() for p in (self.worker, self.web, self.watcher))
            raise AssertionError(f"jobs not done: {dict(states)}\n{logs}") from None

    def succeeded_once(self, ids: list[str]) -> bool:
        counts = Counter(
            i for i in ids for e in self.service.history(i) if e["event"] == "succeeded"
        )
        return all(counts[i] == 1 for i in ids)

    def stop(self) -> None:
        for proc in reversed(self.procs):  # nothing is left to finish: a power cut is quicker
            proc.stop(kill=True)
        if self.weed is not None:
            self.weed.stop(kill=True)
        if self.redis is not None:
            self.redis.stop()
        if self.db is not None:
            from appliance.store.db import dispose_all

            dispose_all()
            drop_pg_database(self.db)


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory, tiny_models_dir: Path) -> Iterator[Fleet]:
    why = can_hide_dirs() or postgres_reachable()
    if why is not None:
        pytest.skip(why)
    fleet = Fleet(tmp_path_factory.mktemp("fleet"))
    try:
        fleet.start(tiny_models_dir)
        yield fleet
    finally:
        fleet.stop()


def test_box_b_cannot_read_box_a_disk(fleet: Fleet) -> None:
    """The premise of the proof: inside box B's namespace, box A's directory is empty."""
    assert any(fleet.box_a.iterdir())
    script = 'mount -t tmpfs none "$1" && ls -A "$1"'
    out = subprocess.run(
        ["unshare", "-m", "sh", "-c", script, "sh", str(fleet.box_a)],
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip() == ""


def test_fifty_jobs_from_box_a_run_on_box_b(fleet: Fleet) -> None:
    """25 through box A's API, 25 through its drop folder: all succeed exactly once on box
    B's worker, and box A's API and panel show every result and page preview."""
    api_ids = [fleet.submit(f"api-{i}.png", png_bytes(1000 + i)) for i in range(25)]
    for i in range(25):
        (fleet.drop / f"drop-{i}.png").write_bytes(png_bytes(2000 + i))

    def folder_jobs() -> list[str] | None:
        rows = fleet.service.list(source="folder", limit=100).items
        ids = [j.id for j in rows if j.filename.startswith("drop-")]
        return ids if len(ids) == 25 else None

    folder_ids = wait_for(folder_jobs, 60, "the watcher to queue 25 files")
    ids = api_ids + folder_ids
    jobs = fleet.wait_done(ids, timeout=180)
    assert Counter(j.state for j in jobs) == {"succeeded": 50}
    assert {j.worker for j in jobs} == {WORKER}
    assert fleet.succeeded_once(ids)
    assert all(j.input_path.startswith("s3://appliance/fleet/") for j in jobs)

    for job in jobs:  # box A's API: the result and a page preview, for every job
        result = fleet.http.get(f"{fleet.url}/api/v1/jobs/{job.id}/result?format=json")
        assert result.status_code == 200, result.text
        thumb = fleet.http.get(f"{fleet.url}/api/v1/jobs/{job.id}/image?variant=thumbnail")
        assert thumb.status_code == 200 and thumb.content[:2] == b"\xff\xd8", thumb.text
    panel = requests.Session()  # box A's panel, logged in as a person would
    html = panel.get(fleet.url + "/panel/login").text
    csrf = re.search(r'name="csrf-token" content="([^"]+)"', html)
    assert csrf, html[:300]
    form = {"username": "root", "password": PASSWORD, "csrf_token": csrf.group(1)}
    assert panel.post(fleet.url + "/panel/login", data=form).ok
    for job in jobs:
        page = panel.get(f"{fleet.url}/panel/jobs/{job.id}")
        assert page.status_code == 200 and job.filename in page.text
        preview = panel.get(f"{fleet.url}/panel/jobs/{job.id}/pages/1.jpg")
        assert preview.status_code == 200 and preview.content[:2] == b"\xff\xd8"
    # The watcher on box A wrote each drop file's result beside it.
    done = fleet.drop / "done"
    wait_for(lambda: len(list(done.glob("drop-*.png.json"))) == 25, 30, "25 sidecars")


def test_openai_batch_files_written_on_box_b_are_read_on_box_a(fleet: Fleet) -> None:
    """A JSONL uploaded to box A's /v1/files, run as a batch on box B's worker, whose output
    file (written there, into the object store) box A's API serves."""
    lines = [
        {
            "custom_id": f"r{i}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {"messages": [{"role": "user", "content": f"Say {i}"}], "max_tokens": 3},
        }
        for i in range(2)
    ]
    body = "\n".join(json.dumps(line) for line in lines).encode()
    upload = fleet.http.post(
        fleet.url + "/v1/files",
        files={"file": ("lines.jsonl", body, "application/jsonl")},
        data={"purpose": "batch"},
    )
    assert upload.status_code == 200, upload.text
    row = fleet.service.store.get_file(upload.json()["id"])
    assert row is not None and row.path.startswith("s3://appliance/fleet/")
    spec = {"input_file_id": row.id, "endpoint": "/v1/chat/completions"}
    created = fleet.http.post(fleet.url + "/v1/batches", json=spec | {"completion_window": "24h"})
    assert created.status_code == 200, created.text

    def completed() -> dict[str, Any] | None:
        batch = fleet.http.get(f"{fleet.url}/v1/batches/{created.json()['id']}").json()
        return batch if batch["status"] == "completed" else None

    batch = wait_for(completed, 60, "the batch to complete")
    content = fleet.http.get(f"{fleet.url}/v1/files/{batch['output_file_id']}/content")
    assert content.status_code == 200, content.text
    answers = [json.loads(line) for line in content.text.splitlines()]
    assert sorted(a["custom_id"] for a in answers) == ["r0", "r1"]
    assert all(a["response"]["status_code"] == 200 for a in answers)


def test_altered_object_fails_its_job_with_a_checksum_reason(fleet: Fleet) -> None:
    """An object damaged in the store: that job fails saying so; the others succeed."""
    import boto3
    from botocore import UNSIGNED
    from botocore.config import Config

    data = png_bytes(3000)
    sha = hashlib.sha256(data).hexdigest()
    s3 = boto3.client(
        "s3", endpoint_url=fleet.weed.endpoint, config=Config(signature_version=UNSIGNED)
    )
    damaged = bytearray(data)
    damaged[len(damaged) // 2] ^= 0xFF  # same size, other bytes: bit rot on the store
    try:  # the boxes create the bucket on their first write: this may come first
        s3.head_bucket(Bucket="appliance")
    except s3.exceptions.ClientError:
        s3.create_bucket(Bucket="appliance")
    s3.put_object(Bucket="appliance", Key=f"fleet/{sha[:2]}/{sha}", Body=bytes(damaged))
    bad = fleet.submit("rotten.png", data)
    good = [fleet.submit(f"fine-{i}.png", png_bytes(3100 + i)) for i in range(3)]
    jobs = {j.id: j for j in fleet.wait_done([bad, *good], timeout=60)}
    assert jobs[bad].state == "failed" and jobs[bad].error_code == "checksum"
    assert "checksum" in (jobs[bad].error or "")
    assert all(jobs[i].state == "succeeded" for i in good)


def test_object_store_down_for_20s_loses_and_fails_nothing(fleet: Fleet) -> None:
    """SeaweedFS stopped mid-run for 20 s: the API answers 503 + Retry-After, the watcher
    keeps its file, the worker waits; once it is back every job succeeds."""
    ids = [fleet.submit(f"slow-out-{i}.png", png_bytes(4000 + i)) for i in range(16)]
    wait_for(lambda: any(j.state == "succeeded" for j in fleet.jobs(ids)), 60, "the first result")
    fleet.weed.stop(kill=True)  # a crash of the head's store, mid-run
    down_at = time.monotonic()
    refused = fleet.post("during-outage.png", png_bytes(4100))
    assert refused.status_code == 503, refused.text
    assert refused.headers["Retry-After"] == "7"
    assert "object store" in refused.json()["detail"]
    (fleet.drop / "outage-drop.png").write_bytes(png_bytes(4200))
    while time.monotonic() - down_at < 20:  # the outage itself: nothing may fail meanwhile
        assert not [j.id for j in fleet.jobs(ids) if j.state == "failed"]
        time.sleep(0.5)
    fleet.weed.start()
    jobs = fleet.wait_done(ids, timeout=120)
    assert Counter(j.state for j in jobs) == {"succeeded": 16}
    assert fleet.succeeded_once(ids)
    waited = [e for i in ids for e in fleet.service.history(i) if e["event"] == "requeued"]
    assert waited and all("waiting for storage" in (e["detail"] or "") for e in waited)

    def dropped() -> JobInfo | None:
        rows = fleet.service.list(source="folder", limit=200).items
        job = next((j for j in rows if j.filename == "outage-drop.png"), None)
        return job if job is not None and job.done else None

    job = wait_for(dropped, 60, "the file dropped during the outage to be done")
    assert job.state == "succeeded"
    assert not (fleet.drop / "failed").exists() or not any((fleet.drop / "failed").iterdir())


def test_box_b_worker_sigkilled_five_times_each_job_ends_once(fleet: Fleet) -> None:
    ids = [fleet.submit(f"slow-kill-{i}.png", png_bytes(5000 + i)) for i in range(8)]

    def running() -> Any:
        row = fleet.worker_row(alive=True)
        busy = [j for j in fleet.service.list(state="running").items if j.worker == WORKER]
        if row is None or not busy or not any(j.id in ids for j in busy):
            return None
        return row if all(j.started_at and j.started_at > row.started_at for j in busy) else None

    for n in range(5):
        row = wait_for(running, 90, f"a running job before kill {n + 1}", poll=0.05)
        os.kill(row.pid, signal.SIGKILL)  # the Celery worker process; its supervisor restarts it
        wait_for(
            lambda pid=row.pid: (w := fleet.worker_row(alive=True)) and w.pid != pid,
            90,
            "box B's worker to come back",
        )
    jobs = fleet.wait_done(ids, timeout=120)
    assert Counter(j.state for j in jobs) == {"succeeded": 8}
    assert fleet.succeeded_once(ids)
    assert sum(j.attempts for j in jobs) >= 8 + 5  # each kill cost the job it hit an attempt


def test_retention_purges_objects_from_the_store(fleet: Fleet) -> None:
    from appliance.runtime.recovery import Reconciler
    from appliance.storage import BlobMissing

    service = JobService.from_settings(fleet.settings.model_copy(deep=True), migrate=False)
    service.settings.queue.retention_days = 1e-9
    job = service.submit(png_bytes(6000), "old.png", TaskRequest(task="caption"), source="cli")
    service.cancel(job.id)
    assert Reconciler(service.backend).purge() >= 1
    with pytest.raises(BlobMissing):
        service.backend.blobs.s3.read(job.input_path)  # type: ignore[union-attr]


def test_worker_cache_is_bounded_and_least_recently_used_goes(fleet: Fleet) -> None:
    from appliance.storage import open_blobs

    settings = fleet.settings.model_copy(deep=True)
    settings.storage.cache_dir = fleet.root / "cache-test"
    settings.storage.cache_bytes = 2500
    blobs = open_blobs(settings)
    payloads = [bytes([n]) * 1000 for n in range(3)]
    where = [blobs.put(p) for p in payloads]
    shas = [hashlib.sha256(p).hexdigest() for p in payloads]
    assert blobs.get(where[0], shas[0]) == payloads[0]
    blobs.s3.delete(where[0])  # type: ignore[union-attr]
    # Gone from the store, still served: a retry does not download again.
    assert blobs.get(where[0], shas[0]) == payloads[0]
    blobs.get(where[1], shas[1])
    blobs.get(where[0], shas[0])  # 0 is now more recent than 1
    blobs.get(where[2], shas[2])  # over 2500 bytes: the least recently used (1) goes
    assert blobs.cache is not None
    assert sorted(p.name for p in blobs.cache.root.iterdir()) == sorted([shas[0], shas[2]])
    assert blobs.cache.size() <= 2500
