"""Drop folders: cameras and scanners write files, the appliance writes results beside them.

One concern per module, paperless-style, so tests drive each on its own:

- `filters`: which names are ever considered (temp names, our own outputs, include/exclude).
- `stability`: when a file is complete (size + mtime stable for the settle time and openable,
  or a `NAME.done` marker / a rename into place).
- `claims`: exactly-once ownership by atomic rename into `.processing/`, plus a manifest per claim.
- `outputs`: sidecars, error notes and digests written atomically; done/failed moves.
- `batches`: files arriving close together form a batch that ends in one digest.
- `watcher`: the loop (watchdog inotify or polling) that ties them to the job queue and that
  reconciles `.processing/` with the job store on every start.
"""

from appliance.watch.watcher import FolderWatcher, Watcher

__all__ = ["FolderWatcher", "Watcher"]
