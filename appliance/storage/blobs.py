"""`Blobs`: write to the configured backend, read any location (a path or `s3://...`), and
check every byte read against the sha256 the row recorded."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import TYPE_CHECKING

from appliance.storage.cache import BlobCache
from appliance.storage.errors import ChecksumMismatch
from appliance.storage.local import LocalBlobs

if TYPE_CHECKING:
    from appliance.settings import Settings
    from appliance.storage.s3 import S3Blobs


class Blobs:
    def __init__(self, local: LocalBlobs, s3: S3Blobs | None, cache: BlobCache | None) -> None:
        self.local = local
        self.s3 = s3
        self.cache = cache

    @property
    def shared(self) -> bool:
        """Whether other boxes can read what this one writes."""
        return self.s3 is not None

    def put(self, data: bytes, sha: str | None = None) -> str:
        """Store `data` (once per content) and return its location."""
        sha = sha or hashlib.sha256(data).hexdigest()
        if self.s3 is not None:
            return self.s3.put(data, sha)
        return self.local.put(data, sha)

    def adopt(self, path: Path, data: bytes, sha: str) -> str:
        """A file that already lies on this box and stays put while its job is queued (a
        claimed drop-folder file): used in place on one box, uploaded when boxes share."""
        if self.s3 is not None:
            return self.s3.put(data, sha)
        return str(path)

    def get(self, location: str, sha: str) -> bytes:
        """The bytes at `location`, which must hash to `sha` (ChecksumMismatch otherwise);
        BlobMissing when gone, StorageUnavailable while the store does not answer."""
        remote = location.startswith("s3://")
        if remote and self.cache is not None:
            data = self.cache.get(sha)
            if data is not None:
                if hashlib.sha256(data).hexdigest() == sha:
                    return data
                self.cache.drop(sha)  # a damaged cache entry: fetch again
        data = self._backend(location).read(location)
        if hashlib.sha256(data).hexdigest() != sha:
            raise ChecksumMismatch(
                f"checksum mismatch: the stored input is not the file that was submitted"
                f" (sha256 {sha[:12]}...)"
            )
        if remote and self.cache is not None:
            self.cache.put(sha, data)
        return data

    def delete(self, location: str) -> bool:
        return self._backend(location).delete(location)

    def check(self) -> None:
        """Raises StorageUnavailable unless the shared store answers (no-op for local)."""
        if self.s3 is not None:
            self.s3.check()

    def _backend(self, location: str) -> LocalBlobs | S3Blobs:
        if location.startswith("s3://"):
            if self.s3 is None:
                from appliance.storage.errors import StorageUnavailable

                raise StorageUnavailable(f"no object store configured for {location}")
            return self.s3
        return self.local


def open_blobs(settings: Settings) -> Blobs:
    cfg = settings.storage
    s3 = None
    if cfg.url:
        from appliance.storage.s3 import S3Blobs

        s3 = S3Blobs(cfg)
    cache = None
    if s3 is not None and cfg.cache_bytes > 0:
        cache = BlobCache(cfg.cache_dir or settings.data_dir / "cache", cfg.cache_bytes)
    return Blobs(LocalBlobs(settings.uploads_dir), s3, cache)
