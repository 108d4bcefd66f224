"""A bounded local cache of downloaded blobs (least recently used out), shared by a box's
processes: a retried job or a page preview does not download its file again."""

from __future__ import annotations

import os
from pathlib import Path

from appliance.files import atomic_write


class BlobCache:
    def __init__(self, root: Path, max_bytes: int) -> None:
        self.root = root
        self.max_bytes = max_bytes

    def _path(self, sha: str) -> Path:
        return self.root / sha

    def get(self, sha: str) -> bytes | None:
        path = self._path(sha)
        try:
            data = path.read_bytes()
            os.utime(path)  # the mtime is the last use: what eviction orders by
        except FileNotFoundError:
            return None
        return data

    def drop(self, sha: str) -> None:
        self._path(sha).unlink(missing_ok=True)

    def put(self, sha: str, data: bytes) -> None:
        if not 0 < len(data) <= self.max_bytes:
            return
        try:
            atomic_write(self._path(sha), data)
            self._evict()
        except OSError:  # a cache that cannot be written is only slower
            pass

    def _evict(self) -> None:
        entries = []
        with os.scandir(self.root) as it:
            for entry in it:
                if entry.is_file() and not entry.name.startswith("."):
                    st = entry.stat()
                    entries.append((st.st_mtime, st.st_size, entry.path))
        total = sum(size for _, size, _ in entries)
        for _, size, path in sorted(entries):
            if total <= self.max_bytes:
                break
            Path(path).unlink(missing_ok=True)
            total -= size

    def size(self) -> int:
        if not self.root.exists():
            return 0
        return sum(p.stat().st_size for p in self.root.iterdir() if p.is_file())
