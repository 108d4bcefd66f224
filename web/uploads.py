"""Upload handling: where Werkzeug spools multipart files, what a client filename may be, and
reading a part through the intake pre-check.

A client filename is only ever a *label* (shown in listings, used in result downloads); files
are stored by the job store under names it makes itself. Still, the label is cleaned here so
that nothing downstream can be tricked by `../`, absolute paths, NULs or 4 KB names.
"""

from __future__ import annotations

import tempfile
import unicodedata
from typing import IO

from flask import Request, current_app
from werkzeug.datastructures import FileStorage

from appliance import intake
from appliance.errors import IntakeError
from appliance.intake import Checked
from appliance.settings import Limits
from web.problems import Problem, status_for

MAX_NAME = 200
# Werkzeug's own spool threshold: small parts stay in memory.
_SPOOL_BYTES = 500 * 1024


class UploadRequest(Request):
    """Spools large multipart parts into `<data_dir>/tmp`, not the system temp dir.

    Keeps every byte a client sends inside the data dir (one disk, one quota, one place to
    clean), and the temporary file is anonymous: it vanishes when the request ends.
    """

    def _get_file_stream(
        self,
        total_content_length: int | None,
        content_type: str | None,
        filename: str | None = None,
        content_length: int | None = None,
    ) -> IO[bytes]:
        tmp = current_app.extensions["appliance"].settings.data_dir / "tmp"
        tmp.mkdir(parents=True, exist_ok=True)
        return tempfile.SpooledTemporaryFile(max_size=_SPOOL_BYTES, mode="rb+", dir=tmp)


def safe_filename(name: str | None, default: str = "upload") -> str:
    """A display name with no directory part, control characters or absurd length."""
    if not name:
        return default
    name = unicodedata.normalize("NFC", name)
    # Both separators: a Windows client sends C:\\Users\\x\\scan.pdf.
    name = name.replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(ch for ch in name if ch.isprintable() and ch not in "\x00/")
    name = name.strip().lstrip(".").strip()
    if len(name) > MAX_NAME:
        stem, dot, ext = name.rpartition(".")
        ext = ext[:16] if dot and stem else ""
        name = name[: MAX_NAME - len(ext) - 1] + "." + ext if ext else name[:MAX_NAME]
    return name or default


def read_upload(storage: FileStorage, max_bytes: int) -> bytes:
    """The part's bytes, refusing (413) beyond `max_bytes` without reading further."""
    data = storage.stream.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise Problem(
            413,
            f"file {safe_filename(storage.filename)!r} is larger than "
            f"{max_bytes // (1024 * 1024)} MB",
        )
    return data


def checked_upload(
    storage: FileStorage, limits: Limits, *, status: int | None = None
) -> tuple[bytes, str, Checked]:
    """The part's bytes, its cleaned name and what `intake.precheck` found.

    A refused file is a `Problem` naming it, with the status `status_for` gives its error
    (413, 415, 422, 400), or `status` where the caller answers one for all (the panel's 422).
    """
    data = read_upload(storage, limits.max_bytes)
    name = safe_filename(storage.filename)
    try:
        return data, name, intake.precheck(data, limits)
    except IntakeError as exc:
        raise Problem(status or status_for(exc), f"{name}: {exc}") from None
