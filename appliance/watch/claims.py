"""Exactly-once ownership: a file is ours once `rename()` moved it into `.processing/`.

`rename` within one filesystem is atomic: two watchers (or one restarted twice) racing for the
same file see exactly one winner, the loser gets ENOENT. The claimed name carries a claim id and
the original relative path, so a claim survives a crash without any other state. A manifest in
`.processing/.claims/` adds the sha256, job id and batch id once known; it is only a cache: the
job's idempotency key (sha256 + claim name) lets a restarted watcher re-submit a claim and get
the same job back instead of a second one.

One watcher owns a folder at a time (`FolderLock`): a second one would race the first for the
claims it is finishing.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import secrets
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath
from typing import IO
from urllib.parse import quote, unquote

from appliance.errors import ApplianceError
from appliance.files import atomic_write
from appliance.watch.filters import PROCESSING_DIR

MANIFESTS = ".claims"
SEPARATOR = "~"
LOCK = ".lock"


class FolderBusy(ApplianceError):
    """Another watcher process already watches this folder."""


class FolderLock:
    """One watcher per folder: a second one would finish the first one's claims too.

    flock is dropped by the kernel when the holder dies, SIGKILL included, so a crash never
    leaves the folder locked.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self._fh: IO[str] | None = None

    def acquire(self) -> None:
        processing = self.root / PROCESSING_DIR
        processing.mkdir(parents=True, exist_ok=True)
        self._fh = open(processing / LOCK, "a+")  # noqa: SIM115  (held until release)
        try:
            fcntl.flock(self._fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self._fh.close()
            self._fh = None
            raise FolderBusy(f"another watcher is running on {self.root}") from None

    def release(self) -> None:
        if self._fh is not None:
            self._fh.close()  # releases the flock
            self._fh = None


@dataclass
class Claim:
    root: Path  # the watched folder
    name: str  # file name inside .processing/
    rel: PurePosixPath  # where it was found, relative to root
    claimed_at: float = field(default_factory=time.time)  # wall clock, for humans and batches
    sha256: str | None = None
    size: int | None = None
    mtime_ns: int | None = None
    job_id: str | None = None
    batch_id: str | None = None
    # Where the original will go, fixed before the outputs are written (see watcher).
    final: str | None = None

    @property
    def path(self) -> Path:
        return self.root / PROCESSING_DIR / self.name

    @property
    def manifest_path(self) -> Path:
        return self.root / PROCESSING_DIR / MANIFESTS / f"{self.name}.json"

    @property
    def idempotency_key(self) -> str:
        # The claim name is unique per drop, so dropping the same file again later is a new job
        # (dedupe decides about a second GPU run), while a restart re-submitting this claim is not.
        # The store caps keys at 600 chars and a claim name carries a whole relative path.
        where = hashlib.sha256(f"{self.root}/{self.name}".encode()).hexdigest()[:32]
        return f"folder:{self.sha256}:{where}"

    def hash(self) -> str:
        with open(self.path, "rb") as fh:
            self.sha256 = hashlib.file_digest(fh, "sha256").hexdigest()
        st = self.path.stat()
        self.size, self.mtime_ns = st.st_size, st.st_mtime_ns
        return self.sha256

    def save(self) -> None:
        data = asdict(self)
        data["root"] = str(self.root)
        data["rel"] = self.rel.as_posix()
        atomic_write(self.manifest_path, json.dumps(data, indent=1))

    def drop_manifest(self) -> None:
        self.manifest_path.unlink(missing_ok=True)


def new_claim_id() -> str:
    # Sortable by time (so reconciliation resumes oldest first) and unique across restarts.
    return f"{time.time_ns():x}{secrets.token_hex(3)}"


def claim_name(claim_id: str, rel: PurePosixPath) -> str:
    return f"{claim_id}{SEPARATOR}{quote(rel.as_posix(), safe='')}"


def parse_claim_name(name: str) -> tuple[str, PurePosixPath] | None:
    claim_id, sep, encoded = name.partition(SEPARATOR)
    if not sep or not claim_id or not encoded:
        return None
    return claim_id, PurePosixPath(unquote(encoded))


def claim(root: Path, src: Path) -> Claim | None:
    """Move `src` into `.processing/`; None if someone else got it first (or it vanished)."""
    rel = PurePosixPath(src.relative_to(root).as_posix())
    processing = root / PROCESSING_DIR
    processing.mkdir(exist_ok=True)
    c = Claim(root=root, name=claim_name(new_claim_id(), rel), rel=rel)
    try:
        os.rename(src, c.path)
    except FileNotFoundError:
        return None
    return c


def load_claims(root: Path) -> list[Claim]:
    """Every claim left in `.processing/`, oldest first, with its manifest when there is one.

    Manifests whose file is gone (the final move happened, the crash came before the cleanup)
    are removed here.
    """
    processing = root / PROCESSING_DIR
    if not processing.is_dir():
        return []
    claims: list[Claim] = []
    for entry in sorted(os.scandir(processing), key=lambda e: e.name):
        if not entry.is_file(follow_symlinks=False) or entry.name.startswith("."):
            continue
        parsed = parse_claim_name(entry.name)
        if parsed is None:
            continue  # not ours; left alone
        c = Claim(root=root, name=entry.name, rel=parsed[1], claimed_at=_claim_time(parsed[0]))
        manifest = c.manifest_path
        if manifest.is_file():
            try:
                data = json.loads(manifest.read_text())
                for key in ("sha256", "size", "mtime_ns", "job_id", "batch_id", "final"):
                    setattr(c, key, data.get(key))
                c.claimed_at = data.get("claimed_at") or c.claimed_at
            except (OSError, ValueError):
                pass  # a torn manifest only costs a re-hash and an idempotent re-submit
        claims.append(c)
    manifests = processing / MANIFESTS
    if manifests.is_dir():
        live = {c.name for c in claims}
        for entry in os.scandir(manifests):
            if entry.name.endswith(".json") and entry.name[: -len(".json")] not in live:
                Path(entry.path).unlink(missing_ok=True)
    return claims


def _claim_time(claim_id: str) -> float:
    try:
        return int(claim_id[:-6], 16) / 1e9
    except ValueError:
        return time.time()
