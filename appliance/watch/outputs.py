"""Results beside the files: written whole or not at all, and never over an input.

Every write goes to a dot-named temp file in the target folder (ignored by the watcher and by
anyone listing `*.json`), is fsynced, then renamed over the final name: a reader, or a crash,
never sees half a sidecar. Writing the same sidecar twice (after a crash) just replaces it.

A finished claim leaves, in this order: its sidecars (`NAME.json`, then `NAME.txt`, the "done"
signal people script against) or its `NAME.error.txt`, then the original, renamed into done/ or
failed/ under a name chosen once and kept in the claim's manifest.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from appliance.files import atomic_write
from appliance.safety.verdicts import summary as safety_summary
from appliance.schema import TaskRequest
from appliance.settings import DropFolder
from appliance.vocab import CANCELLED
from appliance.watch.filters import relative
from appliance.watch.port import JobView

if TYPE_CHECKING:  # claims.py writes its manifests with atomic_write from here
    from appliance.watch.claims import Claim


def free_name(directory: Path, name: str) -> Path:
    """`directory/name`, or `name (2).ext`... if taken: a re-dropped name never overwrites."""
    candidate = directory / name
    if not candidate.exists():
        return candidate
    for n in range(2, 10_000):
        candidate = directory / numbered(name, n)
        if not candidate.exists():
            return candidate
    raise FileExistsError(f"no free name for {name} in {directory}")


def numbered(name: str, n: int) -> str:
    """`scan.jpg` -> `scan (n).jpg`: the one naming rule for a second file of the same name."""
    stem, dot, ext = name.partition(".")
    return f"{stem} ({n}){dot}{ext}"


def error_note(final: Path) -> Path:
    return final.with_name(final.name + ".error.txt")


def sidecar_field(path: Path, key: str) -> Any:
    """`key` of a JSON sidecar; None when the file is gone, torn or not one of ours."""
    try:
        return json.loads(path.read_text())[key]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def result_text(result: dict[str, Any]) -> str:
    """The `.txt` sidecar: the text of each page (marked when there are several), the summary."""
    pages = result.get("pages") or []
    if len(pages) == 1:
        text = pages[0].get("text", "")
    else:
        text = "\n\n".join(f"[page {p.get('page')}]\n{p.get('text', '')}" for p in pages)
    if result.get("summary"):
        text += f"\n\nSummary: {result['summary']}"
    return text


class Layout:
    """Where things go for one drop folder."""

    def __init__(self, folder: DropFolder) -> None:
        self.root = folder.path
        self.done = _under(self.root, folder.done_dir)
        self.failed = _under(self.root, folder.failed_dir)
        self.blocked = _under(self.root, folder.blocked_dir)
        self.output = Path(folder.output_dir) if folder.output_dir else None
        if self.output is not None and not self.output.is_absolute():
            self.output = self.root / self.output
        self.move_done = folder.move_done

    def reserved_dirs(self) -> tuple[str, ...]:
        """Top-level folders inside root that hold results, never inputs."""
        names = []
        for d in (self.done, self.failed, self.blocked, self.output):
            if d is not None and d.parent == self.root:
                names.append(d.name)
        return tuple(names)

    def done_dir(self, rel: PurePosixPath) -> Path:
        return self.done / rel.parent if self.move_done else self.root / rel.parent

    def failed_dir(self, rel: PurePosixPath) -> Path:
        return self.failed / rel.parent

    def blocked_dir(self, rel: PurePosixPath) -> Path:
        return self.blocked / rel.parent

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


class Outputs:
    """What one folder writes for a finished claim, and where the original goes."""

    def __init__(self, folder: DropFolder, request: TaskRequest) -> None:
        self.layout = Layout(folder)
        self.request = request
        self._skip: dict[Path, tuple[int, int]] = {}  # left-in-place originals already done

    def already_done(self, path: Path) -> bool:
        """Left-in-place mode: an original whose sidecar records this very file is done."""
        if self.layout.move_done:
            return False
        try:
            st = path.stat()
        except OSError:
            return False
        key = (st.st_size, st.st_mtime_ns)
        if self._skip.get(path) == key:
            return True
        rel = relative(self.layout.root, path) or PurePosixPath(path.name)
        source = sidecar_field(self.layout.sidecar_dir(rel) / f"{path.name}.json", "source")
        if isinstance(source, dict) and (source.get("size"), source.get("mtime_ns")) == key:
            self._skip[path] = key
            return True
        return False

    def sidecar(self, c: Claim, final: Path) -> Path:
        """The JSON sidecar of a claim whose original ends up as `final`."""
        return self.layout.sidecar_dir(c.rel) / f"{final.name}.json"

    def succeeded(
        self,
        c: Claim,
        job_id: str,
        result: dict[str, Any],
        duplicate_of: dict[str, Any] | None = None,
    ) -> tuple[Path, str]:
        """Write the sidecars; returns where the original goes and its text."""
        final = self.final_path(c, self.layout.done_dir(c.rel))
        text = result_text(result)
        payload: dict[str, Any] = {
            "file": final.name,
            "source": {
                "path": c.rel.as_posix(),
                "sha256": c.sha256,
                "size": c.size,
                "mtime_ns": c.mtime_ns,
                "claimed_at": c.claimed_at,
            },
            "job_id": job_id,
            "batch_id": c.batch_id,
            "request": self.request.model_dump(),
            "model": result.get("model"),
            "timings": result.get("timings", {}),
            "result": result,
        }
        if result.get("safety"):  # policy flag: the verdicts beside the result
            payload["safety"] = safety_summary(result["safety"])
        if duplicate_of is not None:
            payload["duplicate_of"] = duplicate_of
        # JSON first: the .txt appearing is the "done" signal people script against.
        atomic_write(self.sidecar(c, final), json.dumps(payload, indent=2, default=str))
        atomic_write(self.layout.sidecar_dir(c.rel) / f"{final.name}.txt", text + "\n")
        return final, text

    def failed(self, c: Claim, view: JobView) -> tuple[Path, str]:
        """Write `NAME.error.txt`; returns where the original goes and the reason."""
        reason = view.error or (CANCELLED if view.state == CANCELLED else "no result")
        final = self.final_path(c, self.layout.failed_dir(c.rel))
        atomic_write(
            error_note(final),
            f"{c.rel.as_posix()}: {reason}\n\njob: {view.id or '-'}\nstate: {view.state}\n"
            f"sha256: {c.sha256}\nat: {time.strftime('%Y-%m-%d %H:%M:%S')}\n",
        )
        return final, reason

    def blocked(self, c: Claim, view: JobView) -> tuple[Path, str]:
        """The safety stage withheld it: the original goes to `blocked/` with `NAME.json`
        (the verdicts) and `NAME.error.txt` (the reason); no result is written."""
        reason = view.error or "blocked by the safety check"
        final = self.final_path(c, self.layout.blocked_dir(c.rel))
        payload = {
            "file": final.name,
            "source": {"path": c.rel.as_posix(), "sha256": c.sha256, "size": c.size},
            "job_id": view.id,
            "state": view.state,
            "error": reason,
            "safety": safety_summary(view.safety),
        }
        atomic_write(final.parent / f"{final.name}.json", json.dumps(payload, indent=2))
        atomic_write(error_note(final), f"{c.rel.as_posix()}: {reason}\n\njob: {view.id}\n")
        return final, reason

    def final_path(self, c: Claim, directory: Path) -> Path:
        """Where the original goes, chosen once and kept in the manifest: after a crash
        between writing the sidecars and the move, the retry reuses the name (and overwrites
        its own sidecars) instead of seeing them and picking `x (2).jpg`."""
        if c.final and Path(c.final).parent == directory:
            return Path(c.final)
        final = free_name(directory, c.rel.name)
        n = 2
        while self.sidecar(c, final).exists() or error_note(final).exists():
            final = free_name(directory, numbered(c.rel.name, n))
            n += 1
        c.final = str(final)
        c.save()
        return final

    @staticmethod
    def place(c: Claim, final: Path) -> None:
        """The original's last move, after its outputs: its arrival means everything is there."""
        final.parent.mkdir(parents=True, exist_ok=True)
        # os.link + unlink would refuse to overwrite atomically, but fails on many SMB/FAT
        # mounts; the name was checked free and only this watcher writes into done/ and failed/.
        os.rename(c.path, final)
