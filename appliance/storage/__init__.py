"""Blob storage addressed by sha256: every input, OpenAI file and batch output the box keeps.

One interface (`Blobs`), two backends: the local filesystem under `data_dir` (one box, the
default) and any S3-compatible object store (`storage.url = "s3://BUCKET/PREFIX"`) shared by
the boxes of a fleet, so a file taken in on one box is read by a worker on another. A blob's
*location* (a path, or `s3://...`) is what rows keep; a read always checks the sha256.
"""

from appliance.storage.blobs import Blobs, open_blobs
from appliance.storage.errors import BlobMissing, ChecksumMismatch, StorageUnavailable

__all__ = ["BlobMissing", "Blobs", "ChecksumMismatch", "StorageUnavailable", "open_blobs"]
