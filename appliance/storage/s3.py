"""The S3 backend (SeaweedFS, MinIO, Ceph RGW, AWS) through boto3: objects `PREFIX/ab/abcd...`.

Every failure to reach the store becomes `StorageUnavailable` (a wait), a missing key
`BlobMissing`; nothing here decides that a job failed.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

import boto3
from botocore import UNSIGNED
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from appliance.storage.errors import BlobMissing, StorageUnavailable

if TYPE_CHECKING:
    from appliance.settings import Storage

_MISSING = {"404", "NoSuchKey", "NotFound"}


def _secret(value: str, path: Path | None) -> str | None:
    """A key from its file (readable by the service user only) or its setting."""
    if path is None:
        return value or None
    return path.read_text().strip()


def split_url(url: str) -> tuple[str, str]:
    """`s3://BUCKET/PREFIX` -> (BUCKET, PREFIX without slashes at its ends)."""
    rest = url.removeprefix("s3://")
    bucket, _, prefix = rest.partition("/")
    return bucket, prefix.strip("/")


class S3Blobs:
    def __init__(self, cfg: Storage) -> None:
        self.bucket, self.prefix = split_url(cfg.url)
        self._cfg = cfg
        self._local = threading.local()  # boto3 clients are thread-safe, sessions are not
        self._bucket_checked = False

    @property
    def client(self) -> Any:
        client = getattr(self._local, "client", None)
        if client is None:
            cfg = self._cfg
            key = _secret(cfg.access_key, cfg.access_key_file)
            config = Config(
                connect_timeout=cfg.connect_timeout_s,
                read_timeout=cfg.read_timeout_s,
                retries={"max_attempts": 2, "mode": "standard"},
                s3={"addressing_style": "path"},
                # No key configured: unsigned requests, for a store open to anonymous access
                # (a test store); never boto3's own search of ~/.aws or the environment.
                signature_version=None if key else UNSIGNED,
            )
            client = boto3.session.Session().client(
                "s3",
                endpoint_url=cfg.endpoint_url or None,
                region_name=cfg.region,
                aws_access_key_id=key,
                aws_secret_access_key=_secret(cfg.secret_key, cfg.secret_key_file),
                verify=str(cfg.ca_file) if cfg.ca_file else None,
                config=config,
            )
            self._local.client = client
        return client

    def key(self, sha: str) -> str:
        return f"{self.prefix}/{sha[:2]}/{sha}" if self.prefix else f"{sha[:2]}/{sha}"

    def location(self, sha: str) -> str:
        return f"s3://{self.bucket}/{self.key(sha)}"

    def put(self, data: bytes, sha: str) -> str:
        """Once per content: an object already there with this size is these bytes (as on
        the local disk; a read checks the sha256 either way)."""
        key = self.key(sha)
        try:
            self._ensure_bucket()
            if self._size(key) != len(data):
                self.client.put_object(Bucket=self.bucket, Key=key, Body=data)
        except (BotoCoreError, ClientError) as exc:
            raise _unavailable(exc) from exc
        return self.location(sha)

    def _size(self, key: str) -> int | None:
        try:
            return int(self.client.head_object(Bucket=self.bucket, Key=key)["ContentLength"])
        except ClientError as exc:
            if _code(exc) in _MISSING:
                return None
            raise

    def read(self, location: str) -> bytes:
        bucket, key = split_url(location)
        try:
            return self.client.get_object(Bucket=bucket, Key=key)["Body"].read()
        except ClientError as exc:
            if _code(exc) in _MISSING:
                raise BlobMissing(f"input file is missing from the store: {location}") from exc
            raise _unavailable(exc) from exc
        except BotoCoreError as exc:
            raise _unavailable(exc) from exc

    def delete(self, location: str) -> bool:
        bucket, key = split_url(location)
        try:
            self.client.delete_object(Bucket=bucket, Key=key)
        except (BotoCoreError, ClientError) as exc:
            raise _unavailable(exc) from exc
        return True

    def check(self) -> None:
        """Raises StorageUnavailable unless the bucket answers."""
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except (BotoCoreError, ClientError) as exc:
            raise _unavailable(exc) from exc

    def _ensure_bucket(self) -> None:
        """A fresh store has no bucket yet: make it once (the head role usually has)."""
        if self._bucket_checked:
            return
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except ClientError as exc:
            if _code(exc) not in _MISSING | {"NoSuchBucket"}:
                raise
            self.client.create_bucket(Bucket=self.bucket)
        self._bucket_checked = True


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _unavailable(exc: Exception) -> StorageUnavailable:
    return StorageUnavailable(f"object store unavailable: {exc}".splitlines()[0][:300])
