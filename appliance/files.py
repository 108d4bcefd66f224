"""Writing files so that a reader never sees half of one: the whole content goes to a temporary
name in the same folder, is flushed to disk, then renamed into place (atomic on one filesystem).
Used for every file the box writes that another process or a crash could catch half-written:
stored inputs, sidecars, claim manifests, the dedupe index, batch digests."""

from __future__ import annotations

import os
import secrets
from pathlib import Path


def atomic_write(path: Path, data: str | bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    raw = data.encode() if isinstance(data, str) else data
    try:
        with open(tmp, "wb") as fh:
            fh.write(raw)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
