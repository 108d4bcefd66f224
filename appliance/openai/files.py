"""OpenAI Files (`/v1/files`): JSONL uploads for batches and the files batches write.

Each file's bytes lie under `settings.openai_files_dir` by file id, written atomically, or,
when boxes share an object store, in it by sha256 (so a batch's output written by a worker on
one box is read by the API on another); its row (owner, name, purpose, size, location) is in
the store. A caller sees its own files; `owner=None` is an
admin, who sees every file.
"""

from __future__ import annotations

import hashlib
import secrets
from pathlib import Path
from typing import Any

from appliance.errors import EmptyFile, InvalidRequest, OpenAINotFound, TooLarge
from appliance.files import atomic_write
from appliance.settings import Settings
from appliance.storage import Blobs, open_blobs
from appliance.store.base import utcnow
from appliance.store.openai_tables import OpenAIFile
from appliance.store.repo import JobStore
from appliance.vocab import FILE_PROCESSED, FILE_PURPOSE_BATCH


def new_file_id(seed: str | None = None) -> str:
    """`file-` and 24 hex digits; derived from `seed` when given, so that two processes
    writing the same batch output name the same file."""
    if seed is None:
        return "file-" + secrets.token_hex(12)
    return "file-" + hashlib.sha256(seed.encode()).hexdigest()[:24]


def epoch(value: Any) -> int | None:
    """A datetime as OpenAI's Unix seconds."""
    return int(value.timestamp()) if value is not None else None


def file_object(row: OpenAIFile) -> dict[str, Any]:
    """OpenAI's `file` object."""
    return {
        "id": row.id,
        "object": "file",
        "bytes": row.bytes,
        "created_at": epoch(row.created_at),
        "filename": row.filename,
        "purpose": row.purpose,
        "status": row.status,
        "status_details": None,
        "expires_at": None,
    }


class OpenAIFiles:
    def __init__(self, store: JobStore, settings: Settings, blobs: Blobs | None = None) -> None:
        self.store = store
        self.settings = settings
        self.blobs = blobs or open_blobs(settings)

    def upload(self, data: bytes, filename: str, purpose: str, owner: str | None) -> OpenAIFile:
        """Store an upload for a batch: JSONL text. Its lines are read when a batch uses it,
        so that one bad line refuses that line, not the whole file."""
        if purpose != FILE_PURPOSE_BATCH:
            raise InvalidRequest(f"purpose {purpose!r} is not supported here; use 'batch'")
        limit = self.settings.api.max_batch_file_bytes
        if len(data) > limit:
            raise TooLarge(f"a batch file may be at most {limit // (1024 * 1024)} MB")
        if not data.strip():
            raise EmptyFile("the file is empty")
        try:
            data.decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidRequest("a batch file must be UTF-8 JSONL text") from None
        return self.write(new_file_id(), data, filename, purpose, owner)

    def write(
        self, file_id: str, data: bytes, filename: str, purpose: str, owner: str | None
    ) -> OpenAIFile:
        """Write the bytes, then the row: a row never names a file that is not all there."""
        location = self.put(file_id, data)
        return self.store.add_file(self.row(file_id, data, filename, purpose, owner, location))

    def put(self, file_id: str, data: bytes) -> str:
        """Store the bytes (atomically); returns their location for the row."""
        if self.blobs.shared:
            return self.blobs.put(data)
        path = self.path_of(file_id)
        atomic_write(path, data)
        return str(path)

    def row(
        self,
        file_id: str,
        data: bytes,
        filename: str,
        purpose: str,
        owner: str | None,
        location: str,
    ) -> OpenAIFile:
        return OpenAIFile(
            id=file_id,
            owner=owner,
            filename=(Path(filename).name or "upload.jsonl")[:512],
            purpose=purpose,
            bytes=len(data),
            status=FILE_PROCESSED,
            path=location,
            created_at=utcnow(),
        )

    def path_of(self, file_id: str) -> Path:
        return self.settings.openai_files_dir / file_id

    def get(self, file_id: str, owner: str | None) -> OpenAIFile:
        row = self.store.get_file(file_id)
        if row is None or (owner is not None and row.owner != owner):
            raise OpenAINotFound(f"no file with id {file_id!r}")
        return row

    def content(self, file_id: str, owner: str | None) -> bytes:
        """The bytes; from the object store they are checked against their sha256 (the last
        part of their key)."""
        location = self.get(file_id, owner).path
        try:
            if location.startswith("s3://"):
                return self.blobs.get(location, location.rsplit("/", 1)[-1])
            return Path(location).read_bytes()
        except FileNotFoundError:
            raise OpenAINotFound(f"the content of file {file_id!r} is gone") from None

    def page(
        self,
        owner: str | None,
        *,
        purpose: str | None = None,
        after: str | None = None,
        limit: int = 10_000,
        ascending: bool = False,
    ) -> tuple[list[OpenAIFile], bool]:
        limit = max(1, min(int(limit), 10_000))
        return self.store.list_files(
            owner=owner, purpose=purpose, after=after, limit=limit, ascending=ascending
        )

    def delete(self, file_id: str, owner: str | None) -> None:
        """Forget the file and delete its bytes. A batch that names it keeps its id (as
        OpenAI's do); its content is then gone."""
        self.get(file_id, owner)
        row = self.store.delete_file(file_id)
        if row is None:
            return
        if not row.path.startswith("s3://"):
            Path(row.path).unlink(missing_ok=True)
        elif not self.store.file_location_used(row.path):  # the same bytes, another file
            self.blobs.delete(row.path)
