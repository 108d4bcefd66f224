"""The drop-folder watcher, by concern: filtering, stability, claiming, consuming, batches,
one-shot, watching (real inotify and polling observers). Jobs run in an in-memory fake here;
tests/test_watch_e2e.py runs the same paths through Redis and real Celery workers."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path, PurePosixPath

import pytest

from appliance.files import atomic_write
from appliance.settings import DropFolder
from appliance.watch import FolderBusy, FolderWatcher, Watcher
from appliance.watch.claims import claim, load_claims, parse_claim_name
from appliance.watch.filters import PathFilter
from appliance.watch.memory import MemoryJobs
from appliance.watch.stability import StabilityTracker
from tests.watch_helpers import claimed, files_in, folder, jpeg, wait_for

_open: list[FolderWatcher] = []


def make_watcher(f: DropFolder, jobs: MemoryJobs) -> FolderWatcher:
    fw = FolderWatcher(f, jobs)
    _open.append(fw)
    return fw


@pytest.fixture(autouse=True)
def _close_watchers():
    yield
    while _open:
        _open.pop().close()  # drop the folder locks


def drive(fw: FolderWatcher, until, timeout: float = 10.0):
    """Tick the watcher (no observer thread) until `until()` holds."""

    def step():
        fw.tick()
        return until()

    return wait_for(step, timeout)


# -- filtering -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        ".hidden.jpg",
        "x.jpg.part",
        "x.jpg.filepart",
        "X.JPG.PART",
        "scan.tmp",
        "~$report.jpg",
        "Thumbs.db",
        ".DS_Store",
        "x.jpg.json",
        "x.jpg.txt",
        "batch-1.md",
        "x.jpg.done",
    ],
)
def test_filter_ignores_temp_names_and_own_outputs(tmp_path: Path, name: str) -> None:
    assert not PathFilter(folder(tmp_path)).accepts(PurePosixPath(name))


def test_filter_include_exclude_and_reserved_dirs(tmp_path: Path) -> None:
    f = PathFilter(folder(tmp_path, include=["*.jpg", "*.pdf"], exclude=["skip*"]))
    assert f.accepts(PurePosixPath("a.jpg"))
    assert not f.accepts(PurePosixPath("a.png"))
    assert not f.accepts(PurePosixPath("skip-me.jpg"))
    rec = PathFilter(folder(tmp_path, recursive=True), ("done", "failed"))
    assert rec.accepts(PurePosixPath("sub/a.jpg"))
    for rel in ("done/a.jpg", "failed/a.jpg", ".processing/a.jpg", "@eaDir/a.jpg", "s/.x/a.jpg"):
        assert not rec.accepts(PurePosixPath(rel)), rel
    assert not PathFilter(folder(tmp_path)).accepts(PurePosixPath("sub/a.jpg"))


# -- stability tracking ------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_stability_waits_for_size_and_mtime_to_hold_still(tmp_path: Path) -> None:
    clock = Clock()
    tracker = StabilityTracker(1.0, clock)
    path = tmp_path / "a.jpg"
    path.write_bytes(b"abc")
    tracker.observe(path)
    clock.now += 0.9
    assert tracker.ready() == []
    with open(path, "ab") as fh:  # a scanner reopening and appending resets the clock
        fh.write(b"def")
    clock.now += 0.5
    assert tracker.ready() == []
    os.utime(path, ns=(1, 1))  # same size, new mtime: still a change
    clock.now += 0.5
    assert tracker.ready() == []
    clock.now += 1.01
    assert tracker.ready() == [path]
    assert tracker.ready() == []  # handed out once


def test_stability_force_and_vanished(tmp_path: Path) -> None:
    tracker = StabilityTracker(60.0, Clock())
    path = tmp_path / "a.jpg"
    path.write_bytes(b"abc")
    tracker.force(path)
    assert tracker.ready() == [path]
    tracker.observe(path)
    path.unlink()
    assert tracker.ready() == [] and len(tracker) == 0


def test_stability_busy_file_is_retried(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import appliance.watch.stability as stability

    clock = Clock()
    tracker = StabilityTracker(0.1, clock)
    path = tmp_path / "a.jpg"
    path.write_bytes(b"abc")
    tracker.observe(path)
    clock.now += 1
    monkeypatch.setattr(stability, "openable", lambda p: False)  # EBUSY on an SMB share
    assert tracker.ready() == [] and path in tracker
    monkeypatch.undo()
    assert tracker.ready() == [path]


# -- claiming ----------------------------------------------------------------------------------


def test_claim_is_atomic_and_survives_restart(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    src = tmp_path / "sub" / "a b~c.jpg"
    src.write_bytes(b"x")
    c = claim(tmp_path, src)
    assert c is not None and c.path.exists() and not src.exists()
    assert claim(tmp_path, src) is None  # the loser of a race sees ENOENT
    assert parse_claim_name(c.name)[1] == PurePosixPath("sub/a b~c.jpg")
    c.hash()
    c.job_id = "j1"
    c.save()
    again = load_claims(tmp_path)
    assert [(x.name, x.rel, x.sha256, x.job_id) for x in again] == [(c.name, c.rel, c.sha256, "j1")]
    c.path.unlink()  # moved away, manifest left behind by a crash: cleaned up
    assert load_claims(tmp_path) == [] and not c.manifest_path.exists()


def test_second_watcher_on_a_folder_is_refused(tmp_path: Path) -> None:
    first = make_watcher(folder(tmp_path), MemoryJobs())
    first.start()
    with pytest.raises(FolderBusy):
        make_watcher(folder(tmp_path), MemoryJobs()).start()
    first.close()
    make_watcher(folder(tmp_path), MemoryJobs()).start()


def test_atomic_write_leaves_no_temp(tmp_path: Path) -> None:
    atomic_write(tmp_path / "o" / "x.json", "{}")
    assert os.listdir(tmp_path / "o") == ["x.json"]


# -- consuming ---------------------------------------------------------------------------------


def test_success_writes_sidecars_and_moves_to_done(tmp_path: Path) -> None:
    jobs = MemoryJobs()
    fw = make_watcher(folder(tmp_path, digest=False), jobs)
    fw.start()
    (tmp_path / "a.jpg").write_bytes(jpeg(1))
    fw.rescan()
    drive(fw, lambda: fw.idle())
    done = tmp_path / "done"
    assert files_in(done) == ["a.jpg", "a.jpg.json", "a.jpg.txt"]
    payload = json.loads((done / "a.jpg.json").read_text())
    assert payload["model"] == "memory" and payload["result"]["pages"][0]["text"]
    assert payload["source"]["sha256"] and payload["job_id"]
    assert (done / "a.jpg.txt").read_text().startswith("a picture of")
    assert claimed(tmp_path) == []
    assert len(jobs.submits) == 1


def test_unknown_file_goes_to_failed_with_reason(tmp_path: Path) -> None:
    fw = make_watcher(folder(tmp_path, digest=False), MemoryJobs())
    fw.start()
    (tmp_path / "junk.jpg").write_bytes(b"\xff\xd8\xff"[:0] + b"not an image at all")
    fw.rescan()
    drive(fw, lambda: fw.idle())
    failed = tmp_path / "failed"
    assert (failed / "junk.jpg").read_bytes() == b"not an image at all"  # kept
    reason = (failed / "junk.jpg.error.txt").read_text()
    assert reason.startswith("junk.jpg: unsupported or corrupt file")


def test_duplicate_content_links_to_earlier_result(tmp_path: Path) -> None:
    jobs = MemoryJobs()
    fw = make_watcher(folder(tmp_path, digest=False), jobs)
    fw.start()
    (tmp_path / "a.jpg").write_bytes(jpeg(5))
    (tmp_path / "b.jpg").write_bytes(jpeg(5))  # same burst: waits on the in-flight one
    fw.rescan()
    drive(fw, lambda: fw.idle())
    (tmp_path / "c.jpg").write_bytes(jpeg(5))  # later: found in the index
    fw.rescan()
    drive(fw, lambda: fw.idle())
    assert len(jobs.submits) == 1
    first = jobs.submits[0][1]
    for name in {"a.jpg", "b.jpg", "c.jpg"} - {first}:
        payload = json.loads((tmp_path / "done" / f"{name}.json").read_text())
        assert payload["duplicate_of"]["job_id"] == jobs.submits[0][0]
        assert payload["result"]["pages"]


def test_dedupe_off_runs_again(tmp_path: Path) -> None:
    jobs = MemoryJobs()
    fw = make_watcher(folder(tmp_path, digest=False, dedupe=False), jobs)
    fw.start()
    for name in ("a.jpg", "b.jpg"):
        (tmp_path / name).write_bytes(jpeg(5))
    fw.rescan()
    drive(fw, lambda: fw.idle())
    assert len(jobs.submits) == 2


def test_same_name_dropped_again_gets_a_free_name(tmp_path: Path) -> None:
    fw = make_watcher(folder(tmp_path, digest=False), MemoryJobs())
    fw.start()
    for seed in (1, 2):
        (tmp_path / "scan.jpg").write_bytes(jpeg(seed))
        fw.rescan()
        drive(fw, lambda: fw.idle())
    assert {"scan.jpg", "scan (2).jpg", "scan (2).jpg.json"} <= set(files_in(tmp_path / "done"))


def test_leave_in_place_with_output_folder_is_not_taken_again(tmp_path: Path) -> None:
    jobs = MemoryJobs()
    out = tmp_path / "results"
    fw = make_watcher(folder(tmp_path / "in", move_done=False, output_dir=out, digest=False), jobs)
    fw.start()
    (tmp_path / "in" / "a.jpg").write_bytes(jpeg(1))
    fw.rescan()
    drive(fw, lambda: fw.idle())
    assert (tmp_path / "in" / "a.jpg").exists() and (out / "a.jpg.json").exists()
    fw.rescan()
    for _ in range(20):
        fw.tick()
        time.sleep(0.03)
    assert len(jobs.submits) == 1 and fw.idle()


def test_marker_takes_file_at_once(tmp_path: Path) -> None:
    jobs = MemoryJobs()
    fw = make_watcher(folder(tmp_path, settle_seconds=60, digest=False), jobs)
    fw.start()
    (tmp_path / "a.jpg").write_bytes(jpeg(1))
    fw.rescan()
    fw.tick()
    assert jobs.submits == []  # 60 s settle
    (tmp_path / "a.jpg.done").write_bytes(b"")
    fw.rescan()
    drive(fw, lambda: fw.idle(), timeout=3)
    assert not (tmp_path / "a.jpg.done").exists()
    assert len(jobs.submits) == 1


def test_submit_failure_keeps_claim_and_retries(tmp_path: Path) -> None:
    jobs = MemoryJobs()
    real = jobs.submit
    calls = {"n": 0}

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 1:
            raise ConnectionError("redis down")
        return real(*args, **kwargs)

    jobs.submit = flaky  # type: ignore[method-assign]
    fw = make_watcher(folder(tmp_path, digest=False), jobs)
    fw.start()
    (tmp_path / "a.jpg").write_bytes(jpeg(1))
    fw.rescan()
    drive(fw, lambda: fw.idle())
    assert calls["n"] == 2 and files_in(tmp_path / "done", "*.jpg") == ["a.jpg"]


# -- reconciliation after a crash --------------------------------------------------------------


def test_restart_resubmits_claims_without_a_job_and_never_twice(tmp_path: Path) -> None:
    jobs = MemoryJobs(auto=False)
    fw = make_watcher(folder(tmp_path, digest=False), jobs)
    fw.start()
    for i in range(3):
        (tmp_path / f"{i}.jpg").write_bytes(jpeg(i))
    fw.rescan()
    drive(fw, lambda: len(jobs.submits) == 3)
    # Crash windows: claimed but not submitted (no manifest), and submitted but manifest lost.
    (tmp_path / "3.jpg").write_bytes(jpeg(3))
    assert claim(tmp_path, tmp_path / "3.jpg") is not None
    lost = next(c for c in load_claims(tmp_path) if c.job_id)
    lost.drop_manifest()

    jobs.auto = True
    fw.close()  # the crash: the kernel drops its folder lock
    fw2 = make_watcher(folder(tmp_path, digest=False), jobs)  # the restarted watcher
    fw2.start()
    drive(fw2, lambda: fw2.idle())
    assert len(jobs.submits) == 4  # the manifest-less re-submit got its old job back
    assert files_in(tmp_path / "done", "*.jpg") == ["0.jpg", "1.jpg", "2.jpg", "3.jpg"]
    assert claimed(tmp_path) == []


def test_restart_resubmits_when_the_store_lost_the_job(tmp_path: Path) -> None:
    jobs = MemoryJobs(auto=False)
    fw = make_watcher(folder(tmp_path, digest=False), jobs)
    fw.start()
    (tmp_path / "a.jpg").write_bytes(jpeg(1))
    fw.rescan()
    drive(fw, lambda: jobs.submits)
    jobs.jobs.clear()
    jobs.keys.clear()
    jobs.auto = True
    fw.close()
    fw2 = make_watcher(folder(tmp_path, digest=False), jobs)
    fw2.start()
    drive(fw2, lambda: fw2.idle())
    assert len(jobs.submits) == 2 and files_in(tmp_path / "done", "*.jpg") == ["a.jpg"]


def test_crash_between_sidecars_and_move_reuses_the_name(tmp_path: Path) -> None:
    jobs = MemoryJobs()
    fw = make_watcher(folder(tmp_path, digest=False), jobs)
    fw.start()
    (tmp_path / "a.jpg").write_bytes(jpeg(1))
    fw.rescan()
    real_rename = os.rename

    def crash(src, dst):
        if ".processing" in str(src):
            raise KeyboardInterrupt  # the process dies right before the final move
        return real_rename(src, dst)

    os.rename = crash  # type: ignore[assignment]
    try:
        with pytest.raises(KeyboardInterrupt):
            drive(fw, lambda: False, timeout=5)
    finally:
        os.rename = real_rename  # type: ignore[assignment]
    assert (tmp_path / "done" / "a.jpg.json").exists()
    fw.close()
    fw2 = make_watcher(folder(tmp_path, digest=False), jobs)
    fw2.start()
    drive(fw2, lambda: fw2.idle())
    assert files_in(tmp_path / "done") == ["a.jpg", "a.jpg.json", "a.jpg.txt"]


# -- batches -----------------------------------------------------------------------------------


def test_batches_split_by_gap_and_write_a_digest_each(tmp_path: Path) -> None:
    fw = make_watcher(folder(tmp_path, batch_gap_seconds=0.4), MemoryJobs())
    fw.start()
    for i in range(3):
        (tmp_path / f"a{i}.jpg").write_bytes(jpeg(i))
    fw.rescan()
    drive(fw, lambda: len(jobs_done(tmp_path)) == 3)
    time.sleep(1.0)  # a pause longer than the gap: the next files are a new batch
    for i in range(2):
        (tmp_path / f"b{i}.jpg").write_bytes(jpeg(10 + i))
    fw.rescan()
    drive(fw, lambda: fw.idle())
    digests = sorted((tmp_path / "done").glob("batch-*.md"))
    assert len(digests) == 2
    texts = [d.read_text() for d in digests]
    assert sum("a0.jpg" in t for t in texts) == 1 and "3 files, all fine" in "".join(texts)
    assert any("b1.jpg" in t and "a0.jpg" not in t for t in texts)
    assert files_in(tmp_path / ".processing" / ".batches") == []


def jobs_done(root: Path) -> list[str]:
    return files_in(root / "done", "*.jpg")


# -- one-shot ----------------------------------------------------------------------------------


def test_once_takes_what_is_there_and_returns(tmp_path: Path) -> None:
    for i in range(5):
        (tmp_path / f"{i}.jpg").write_bytes(jpeg(i))
    (tmp_path / "x.jpg.part").write_bytes(b"half")
    Watcher([folder(tmp_path)], MemoryJobs()).run(once=True)
    assert len(files_in(tmp_path / "done", "*.jpg")) == 5
    assert len(files_in(tmp_path / "done", "batch-*.md")) == 1
    assert (tmp_path / "x.jpg.part").exists()


# -- watching with real observers --------------------------------------------------------------


@pytest.fixture(params=["inotify", "polling"])
def running(request: pytest.FixtureRequest, tmp_path: Path):
    """A Watcher thread on tmp_path/in; yields (root, jobs, folder settings)."""
    polling = request.param == "polling"
    root = tmp_path / "in"
    root.mkdir()
    jobs = MemoryJobs()
    settings: dict[str, DropFolder] = {}

    def start(**overrides) -> None:
        f = folder(root, polling=polling, digest=False, **overrides)
        settings["f"] = f
        watcher = Watcher([f], jobs)
        stop = threading.Event()
        thread = threading.Thread(target=watcher.run, args=(stop,), daemon=True)
        thread.start()
        stops.append((stop, thread))

    stops: list = []
    yield root, jobs, start
    for stop, thread in stops:
        stop.set()
        thread.join(10)


def test_slow_writer_is_taken_once_after_complete(running) -> None:
    root, jobs, start = running
    start(settle_seconds=0.5)
    data = jpeg(3, size=(64, 64))
    chunks = [data[i * len(data) // 20 : (i + 1) * len(data) // 20] for i in range(20)]
    path = root / "scan.jpg"
    for chunk in chunks:  # a scanner: open, write, close, pause, reopen
        with open(path, "ab") as fh:
            fh.write(chunk)
        time.sleep(0.15)
        assert not jobs.submits, "taken before the writer finished"
    # The original moves last, after its sidecars: waiting for it waits for everything.
    wait_for(lambda: (root / "done" / "scan.jpg").exists(), timeout=10)
    assert len(jobs.submits) == 1
    assert jobs.data[jobs.submits[0][0]] == data
    assert (root / "done" / "scan.jpg").read_bytes() == data


def test_ftp_part_renamed_is_taken_once_under_final_name(running) -> None:
    root, jobs, start = running
    start(settle_seconds=0.3, rename_completes=True)
    part = root / "x.jpg.part"
    with open(part, "wb") as fh:
        fh.write(jpeg(4))
    time.sleep(0.6)  # longer than the settle time: a .part is never taken however still
    assert not jobs.submits
    os.rename(part, root / "x.jpg")
    wait_for(lambda: (root / "done" / "x.jpg.json").exists(), timeout=10)
    assert [name for _id, name in jobs.submits] == ["x.jpg"]


def test_burst_is_taken_each_exactly_once(running) -> None:
    root, jobs, start = running
    start(settle_seconds=0.2)
    for i in range(200):
        (root / f"{i:03}.jpg").write_bytes(jpeg(i))
    wait_for(lambda: len(files_in(root / "done", "*.jpg.json")) == 200, timeout=30)
    assert sorted(name for _id, name in jobs.submits) == [f"{i:03}.jpg" for i in range(200)]
    wait_for(lambda: claimed(root) == [], timeout=5)


def test_dedupe_index_forgets_entries_older_than_dedupe_days(tmp_path: Path) -> None:
    jobs = MemoryJobs()
    settings = folder(tmp_path, digest=False, dedupe_days=30)

    def drop(old: str, recent: str) -> None:  # a watcher's run over two files
        fw = make_watcher(settings, jobs)
        fw.start()
        (tmp_path / old).write_bytes(jpeg(7))
        (tmp_path / recent).write_bytes(jpeg(8))
        fw.rescan()
        drive(fw, lambda: fw.idle())
        fw.close()

    drop("old.jpg", "recent.jpg")
    assert len(jobs.submits) == 2
    index = tmp_path / ".processing" / ".index.jsonl"
    items = [json.loads(line) for line in index.read_text().splitlines()]
    names = {s[1]: s[0] for s in jobs.submits}  # file name -> job id
    old_sha = next(i["sha256"] for i in items if i["job_id"] == names["old.jpg"])
    for item in items:  # the first one was seen 31 days ago
        if item["sha256"] == old_sha:
            item["at"] -= 31 * 86400
    index.write_text("".join(json.dumps(i) + "\n" for i in items))

    drop("old again.jpg", "recent again.jpg")
    assert len(jobs.submits) == 3  # the forgotten content ran again, the recent one did not
    assert jobs.submits[2][1] == "old again.jpg"
    recent = json.loads((tmp_path / "done" / "recent again.jpg.json").read_text())
    assert recent["duplicate_of"]["job_id"] == names["recent.jpg"]
    shas = [json.loads(line)["sha256"] for line in index.read_text().splitlines()]
    assert shas.count(old_sha) == 1  # the stale line is gone from the file, the new one added
