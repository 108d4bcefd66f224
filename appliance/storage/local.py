"""The local backend: files under `data_dir`, content-addressed (`files/ab/abcd...`)."""

from __future__ import annotations

import os
from pathlib import Path

from appliance.files import atomic_write
from appliance.storage.errors import BlobMissing, StorageUnavailable


class LocalBlobs:
    """Today's layout, kept: a location is an absolute path."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def put(self, data: bytes, sha: str) -> str:
        path = self.root / sha[:2] / sha
        try:
            if not (path.exists() and path.stat().st_size == len(data)):
                atomic_write(path, data)
        except OSError as exc:  # a full or read-only disk heals; the caller waits
            raise StorageUnavailable(f"cannot write {path}: {exc.strerror or exc}") from exc
        return str(path)

    def read(self, location: str) -> bytes:
        try:
            return Path(location).read_bytes()
        except FileNotFoundError as exc:
            raise BlobMissing(f"input file is missing: {location}") from exc

    def delete(self, location: str) -> bool:
        """Only under the root: a drop-folder file the watcher owns is never removed here."""
        path = Path(location).resolve()
        if not path.is_relative_to(self.root.resolve()):
            return False
        try:
            os.unlink(path)
            return True
        except FileNotFoundError:
            return False
