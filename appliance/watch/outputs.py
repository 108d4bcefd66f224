"""Results beside the files: written whole or not at all, and never over an input.

Every write goes to a dot-named temp file in the target folder (ignored by the watcher and by
anyone listing `*.json`), is fsynced, then renamed over the final name: a reader, or a crash,
never sees half a sidecar. Writing the same sidecar twice (after a crash) just replaces it.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path, PurePosixPath

from appliance.settings import DropFolder


def atomic_write(path: Path, data: str | bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    raw = data.encode() if isinstance(data, str) else data
    try:
        with open(tmp, "wb") as fh:
            fh.write(raw)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def free_name(directory: Path, name: str) -> Path:
    """`directory/name`, or `name (2).ext`... if taken: a re-dropped name never overwrites."""
    candidate = directory / name
    if not candidate.exists():
        return candidate
    stem, dot, ext = name.partition(".")
    for n in range(2, 10_000):
        candidate = directory / f"{stem} ({n}){dot}{ext}"
        if not candidate.exists():
            return candidate
    raise FileExistsError(f"no free name for {name} in {directory}")


def move_into(src: Path, directory: Path, name: str) -> Path:
    """Rename `src` to a free `directory/name`; returns where it ended up."""
    directory.mkdir(parents=True, exist_ok=True)
    dst = free_name(directory, name)
    # os.link + unlink would refuse to overwrite atomically, but fails on many SMB/FAT mounts;
    # free_name was checked a moment ago and only this watcher writes into done/ and failed/.
    os.rename(src, dst)
    return dst


class Layout:
    """Where things go for one drop folder."""

    def __init__(self, folder: DropFolder) -> None:
        self.root = folder.path
        self.done = _under(self.root, folder.done_dir)
        self.failed = _under(self.root, folder.failed_dir)
        self.output = Path(folder.output_dir) if folder.output_dir else None
        if self.output is not None and not self.output.is_absolute():
            self.output = self.root / self.output
        self.move_done = folder.move_done

    def reserved_dirs(self) -> tuple[str, ...]:
        """Top-level folders inside root that hold results, never inputs."""
        names = []
        for d in (self.done, self.failed, self.output):
            if d is not None and d.parent == self.root:
                names.append(d.name)
        return tuple(names)

    def done_dir(self, rel: PurePosixPath) -> Path:
        return self.done / rel.parent if self.move_done else self.root / rel.parent

    def failed_dir(self, rel: PurePosixPath) -> Path:
        return self.failed / rel.parent

    def sidecar_dir(self, rel: PurePosixPath) -> Path:
        """Sidecars go to the output folder, else next to where the original ends up."""
        if self.output is not None:
            return self.output / rel.parent
        return self.done_dir(rel)

    def digest_dir(self) -> Path:
        if self.output is not None:
            return self.output
        return self.done if self.move_done else self.root


def _under(root: Path, name: str) -> Path:
    p = Path(name)
    return p if p.is_absolute() else root / p
