"""What a blob read or write can end in, besides the bytes."""

from __future__ import annotations

from appliance.errors import ApplianceError, TransientError


class StorageUnavailable(TransientError):
    """The object store (or the disk) did not answer: wait and try again, never fail a job."""


class BlobMissing(ApplianceError, FileNotFoundError):
    """No object at that location (purged, or never written)."""


class ChecksumMismatch(ApplianceError):
    """The stored bytes are not the ones that were put there: damaged or altered."""
