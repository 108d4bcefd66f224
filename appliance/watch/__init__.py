"""Drop folders: cameras and scanners write files, the appliance writes results beside them.

One concern per module, paperless-style, so tests drive each on its own. A file's walk:

- `events`: watchdog events and rescans become hints; `stability` says when a file is complete
  (size + mtime stable for the settle time and openable, or a `NAME.done` marker / a rename
  into place); `filters` says which names are ever considered (temp names, our own outputs,
  include/exclude).
- `claims`: exactly-once ownership by atomic rename into `.processing/`, plus a manifest per
  claim; one watcher per folder (`FolderLock`).
- `dedupe`: the sha256 index of earlier results (`dedupe_days`) and identical files in flight.
- `port`: the job queue as the watcher sees it (`service` on JobService, `memory` for tests).
- `outputs`: sidecars and error notes written atomically; the final move into done/ or failed/.
- `batches` and `digests`: files arriving close together form a batch that ends in one
  `batch-<time>.md` digest.
- `watcher`: the loop that walks each file through the above, one way, and that reconciles
  `.processing/` with the job store on every start.
"""

from appliance.watch.claims import FolderBusy
from appliance.watch.watcher import FolderWatcher, Watcher, folder_request

__all__ = ["FolderBusy", "FolderWatcher", "Watcher", "folder_request"]
