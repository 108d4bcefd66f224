"""Drop folders end to end: `appliance watch` and `appliance worker` as real processes on a
private Redis, tiny models, 500-file bursts with SIGKILLs in the middle.

Exactly once is checked three ways: every file has one result and one place in done/ (no
`x (2).jpg`), the job store holds one folder job per file name, and `.processing/` ends empty.
"""

from __future__ import annotations

import itertools
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from appliance.settings import load_settings
from tests.watch_helpers import (
    claimed,
    files_in,
    jpeg,
    kill,
    spawn,
    wait_for,
    write_config,
)

pytestmark = pytest.mark.slow

BURST = 500
_db = itertools.count(9)


class Stack:
    """One appliance on tmp dirs: config, a worker, a watcher; every process is ours to kill."""

    def __init__(self, tmp: Path, redis_url: str, models: Path, **folder: Any) -> None:
        self.tmp = tmp
        self.root = tmp / "in"
        self.root.mkdir()
        # A Redis database of its own per test: no flushing of a server someone else may use.
        base = redis_url.rsplit("/", 1)[0]
        self.config = write_config(
            tmp / "appliance.toml",
            {
                "data_dir": str(tmp / "data"),
                "models_dir": str(models),
                "redis_url": f"{base}/{next(_db) % 16}",
                "device": "cpu",
                "generation": {"max_new_tokens": 3},
                # Fast recovery for the test: a dead worker is noticed within seconds.
                "queue": {
                    "heartbeat_s": 0.5,
                    "stale_after_s": 3,
                    "reconcile_s": 1,
                    "lost_after_s": 3,
                    "batch_size": 16,
                    "batch_wait_ms": 20,
                },
            },
            [
                {
                    "path": str(self.root),
                    "settle_seconds": 0.2,
                    "batch_gap_seconds": 1.0,
                    "poll_seconds": 0.2,
                }
                | folder
            ],
        )
        self.procs: list[subprocess.Popen[bytes]] = []
        self.worker: subprocess.Popen[bytes] | None = None
        self.watcher: subprocess.Popen[bytes] | None = None

    def start_worker(self) -> None:
        self.worker = spawn(
            ["worker", "--exec", "--devices", "cpu"], self.config, self.tmp / "worker.log"
        )
        self.procs.append(self.worker)

    def start_watcher(self) -> None:
        self.watcher = spawn(["watch"], self.config, self.tmp / "watch.log")
        self.procs.append(self.watcher)

    def results(self) -> list[str]:
        return files_in(self.root / "done", "*.jpg.json")

    def stop(self) -> None:
        for proc in self.procs:
            kill(proc)

    def service(self) -> Any:
        from appliance.jobs import JobService

        return JobService.from_settings(load_settings(self.config))

    def logs(self) -> str:
        return "".join(
            f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}" for p in self.tmp.glob("*.log")
        )


@pytest.fixture
def stack(tmp_path: Path, redis_server: str, tiny_models_dir: Path) -> Iterator[Any]:
    made: list[Stack] = []

    def make(**folder: Any) -> Stack:
        s = Stack(tmp_path, redis_server, tiny_models_dir, **folder)
        made.append(s)
        return s

    yield make
    for s in made:
        s.stop()


def drop_burst(root: Path) -> list[str]:
    names = [f"img{i:03}.jpg" for i in range(BURST)]
    for i, name in enumerate(names):
        (root / name).write_bytes(jpeg(i))
    good = jpeg(9999, size=(64, 64))
    (root / "truncated.jpg").write_bytes(good[: len(good) // 3])
    (root / "unknown.bin").write_bytes(b"\x00\x13 not any image format \x7f" * 40)
    return names


def assert_exactly_once(s: Stack, names: list[str]) -> None:
    done = s.root / "done"
    assert files_in(done, "*.jpg") == sorted(names)  # no `img001 (2).jpg`: never taken twice
    job_ids = set()
    for name in names:
        payload = json.loads((done / f"{name}.json").read_text())
        assert payload["source"]["path"] == name
        assert payload["result"]["pages"] and payload["model"]
        assert (done / f"{name}.txt").exists()
        job_ids.add(payload["job_id"])
    assert len(job_ids) == len(names)
    assert claimed(s.root) == []
    # The store: one folder job per file, however often the watcher or the worker died.
    service = s.service()
    seen: dict[str, int] = {}
    cursor = None
    while True:
        page = service.list(source="folder", cursor=cursor, limit=1000)
        for job in page.items:
            seen[job.filename] = seen.get(job.filename, 0) + 1
        cursor = page.next_cursor
        if cursor is None:
            break
    assert {n: c for n, c in seen.items() if c != 1} == {}
    assert set(names) <= set(seen)
    # Bad files: kept in failed/ with a readable reason.
    failed = s.root / "failed"
    for bad in ("truncated.jpg", "unknown.bin"):
        assert (failed / bad).exists(), s.logs()
        reason = (failed / f"{bad}.error.txt").read_text()
        assert reason.startswith(f"{bad}: ") and len(reason.splitlines()[0]) > len(bad) + 5


def test_burst_with_the_watcher_killed_twice(stack) -> None:
    s: Stack = stack()
    s.start_worker()
    s.start_watcher()
    names = drop_burst(s.root)
    # First kill while it is still claiming the burst (files left in the folder, claims made).
    wait_for(lambda: len(claimed(s.root)) >= 100, timeout=60)
    assert s.watcher is not None
    kill(s.watcher)
    s.start_watcher()
    # Second kill with results being written and hundreds of claims outstanding.
    wait_for(lambda: len(s.results()) >= 100, timeout=120)
    kill(s.watcher)
    s.start_watcher()
    wait_for(lambda: len(s.results()) == BURST and not claimed(s.root), timeout=180)
    assert_exactly_once(s, names)
    # The burst is one batch (or a few, if a kill outlasted the gap): each gets a digest.
    wait_for(lambda: files_in(s.root / "done", "batch-*.md"), timeout=60)


def test_burst_with_the_worker_killed_polling(stack) -> None:
    s: Stack = stack(polling=True)
    s.start_worker()
    s.start_watcher()
    names = drop_burst(s.root)
    wait_for(lambda: len(s.results()) >= 100, timeout=120)
    assert s.worker is not None
    kill(s.worker)  # mid-batch: its running jobs must be re-queued, not lost or doubled
    s.start_worker()
    wait_for(lambda: len(s.results()) == BURST and not claimed(s.root), timeout=180)
    assert_exactly_once(s, names)
    # Not asserted (the kill may land between two runs), but shown: what the kill interrupted.
    retried = [
        j.filename for j in s.service().list(source="folder", limit=1000).items if j.attempts > 1
    ]
    print(f"jobs interrupted by the worker kill and re-run: {len(retried)}")


def test_once_with_a_multipage_tiff_and_a_marker(stack) -> None:
    """`appliance watch --once` takes what is there (a marker skips the settle), then exits."""
    import io

    from PIL import Image

    s: Stack = stack(settle_seconds=30)  # only the marker can make these files complete now
    s.start_worker()
    pages = [Image.new("RGB", (32, 32), c) for c in ((200, 0, 0), (0, 200, 0))]
    out = io.BytesIO()
    pages[0].save(out, "TIFF", save_all=True, append_images=pages[1:])
    (s.root / "scan.tif").write_bytes(out.getvalue())
    (s.root / "scan.tif.done").write_bytes(b"")
    (s.root / "photo.jpg").write_bytes(jpeg(1))
    (s.root / "photo.jpg.done").write_bytes(b"")
    proc = spawn(["watch", "--once"], s.config, s.tmp / "once.log")
    s.procs.append(proc)
    assert proc.wait(120) == 0, s.logs()
    done = s.root / "done"
    payload = json.loads((done / "scan.tif.json").read_text())
    assert [p["page"] for p in payload["result"]["pages"]] == [1, 2]  # one job, two pages
    assert "[page 2]" in (done / "scan.tif.txt").read_text()
    assert (done / "photo.jpg.json").exists()
    assert files_in(done, "batch-*.md")  # --once closes the batch and waits for its digest
    assert not (s.root / "scan.tif.done").exists() and claimed(s.root) == []
