"""Which paths the watcher may ever take: never temp names, never its own outputs."""

from __future__ import annotations

from fnmatch import fnmatch, fnmatchcase
from pathlib import Path, PurePosixPath

from appliance.settings import DropFolder

# Names writers use while a file is incomplete, and OS/NAS litter (paperless-ng#462 .filepart).
BUILTIN_IGNORES: tuple[str, ...] = (
    ".*",  # dotfiles: rsync/Samba temp names, .DS_Store, our own atomic-write temps
    "*.part",
    "*.filepart",
    "*.crdownload",
    "*.tmp",
    "~$*",  # Office lock files
    "Thumbs.db",
    "desktop.ini",
    "@eaDir",  # Synology thumbnail folders
    "#recycle",
)

# What the watcher writes itself: taking them back in would loop forever.
OUTPUT_SUFFIXES: tuple[str, ...] = (".json", ".txt", ".md")

PROCESSING_DIR = ".processing"


class PathFilter:
    """Decides on paths relative to the watched folder (POSIX form, e.g. `sub/x.jpg`)."""

    def __init__(self, folder: DropFolder, reserved_dirs: tuple[str, ...] = ()) -> None:
        self.include = list(folder.include)
        self.exclude = list(folder.exclude)
        self.marker_suffix = folder.marker_suffix
        self.recursive = folder.recursive
        # done/, failed/, an output dir inside the folder: results live there, not inputs.
        self.reserved = {PROCESSING_DIR, *reserved_dirs}

    def is_marker(self, rel: PurePosixPath) -> bool:
        return bool(self.marker_suffix) and rel.name.endswith(self.marker_suffix)

    def dir_ignored(self, rel_dir: PurePosixPath) -> bool:
        """Whether a folder (relative) is never descended into."""
        parts = rel_dir.parts
        if not parts:
            return False
        if not self.recursive:
            return True
        if parts[0] in self.reserved:
            return True
        return any(_ignored_name(part) for part in parts)

    def accepts(self, rel: PurePosixPath) -> bool:
        """Whether `rel` is a candidate input file (markers are not: see `is_marker`)."""
        if self.dir_ignored(rel.parent):
            return False
        name = rel.name
        if _ignored_name(name) or self.is_marker(rel):
            return False
        if name.lower().endswith(OUTPUT_SUFFIXES):
            return False
        text = rel.as_posix()
        if self.include and not any(fnmatch(name, g) or fnmatch(text, g) for g in self.include):
            return False
        return not any(fnmatch(name, g) or fnmatch(text, g) for g in self.exclude)


def _ignored_name(name: str) -> bool:
    # Case-blind: Windows clients write `X.PART` and `thumbs.db` as often as the canonical form.
    lower = name.lower()
    return any(fnmatchcase(lower, pattern.lower()) for pattern in BUILTIN_IGNORES)


def relative(root: Path, path: Path) -> PurePosixPath | None:
    """`path` relative to the watched folder, in the POSIX form the filter takes; None if
    it lies outside (an event for a path that was moved away)."""
    try:
        return PurePosixPath(path.relative_to(root).as_posix())
    except ValueError:
        return None
