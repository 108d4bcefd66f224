"""Local model registry: one folder per model under the models root, each with `manifest.json`.

The manifest names the model, its role and architecture, and the sha256 of every file, so that a
truncated copy or a flipped bit is reported by name before a 20 GB load fails obscurely.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, TypeVar

from appliance.errors import ModelError

MANIFEST = "manifest.json"
ROLES: tuple[str, ...] = ("vision", "summarizer", "safety")
Role = Literal["vision", "summarizer", "safety"]
_CHUNK = 1 << 20
T = TypeVar("T")


@dataclass(frozen=True)
class ModelInfo:
    name: str
    role: str
    architecture: str
    path: Path
    files: dict[str, str] = field(default_factory=dict)
    # Random weights of the real architecture (`appliance models make-tiny`): the plumbing
    # works, the text is gibberish by design. The panel and `appliance up` say so.
    demo: bool = False

    @property
    def size_bytes(self) -> int:
        return sum(
            (self.path / rel).stat().st_size for rel in self.files if (self.path / rel).exists()
        )


def sha256_file(path: Path, progress: Callable[[int], None] | None = None) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
            if progress:
                progress(len(chunk))
    return digest.hexdigest()


def _model_files(folder: Path) -> list[str]:
    rels = (p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    return sorted(rel for rel in rels if rel != MANIFEST)


def write_manifest(
    folder: Path, name: str, role: str, architecture: str, *, demo: bool = False
) -> Path:
    """Hash every file under `folder` (except its own manifest) into `folder/manifest.json`."""
    if role not in ROLES:
        raise ModelError(f"model {name}: unknown role {role!r} (one of {', '.join(ROLES)})")
    folder = Path(folder)
    files = {rel: sha256_file(folder / rel) for rel in _model_files(folder)}
    manifest = {"name": name, "role": role, "architecture": architecture, "files": files}
    if demo:
        manifest["demo"] = True
    path = folder / MANIFEST
    path.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return path


def read_manifest(folder: Path) -> ModelInfo:
    path = Path(folder) / MANIFEST
    try:
        data = json.loads(path.read_text())
        return ModelInfo(
            name=str(data["name"]),
            role=str(data["role"]),
            architecture=str(data.get("architecture", "")),
            path=Path(folder),
            files={str(k): str(v) for k, v in dict(data.get("files", {})).items()},
            demo=bool(data.get("demo", False)),
        )
    except FileNotFoundError:
        raise ModelError(f"model folder {folder}: no {MANIFEST}") from None
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ModelError(f"model folder {folder}: unreadable {MANIFEST} ({err})") from None


class ModelRegistry:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def list(self) -> list[ModelInfo]:
        if not self.root.is_dir():
            raise ModelError(f"models directory {self.root} does not exist")
        return [read_manifest(d) for d in sorted(self.root.iterdir()) if (d / MANIFEST).is_file()]

    def get(self, name: str) -> ModelInfo:
        for info in self.list():
            if info.name == name:
                return info
        known = ", ".join(i.name for i in self.list()) or "none"
        raise ModelError(f"model {name!r} not found in {self.root} (installed: {known})")

    def first(self, role: str) -> ModelInfo:
        for info in self.list():
            if info.role == role:
                return info
        raise ModelError(f"no {role} model installed in {self.root}")

    def resolve(self, role: str, name: str = "") -> ModelInfo:
        """The named model (which must have `role`), or the first model of `role` if unnamed."""
        if not name:
            return self.first(role)
        info = self.get(name)
        if info.role != role:
            raise ModelError(f"model {name!r} is a {info.role} model, not a {role} model")
        return info


def verify(model: ModelInfo, progress: bool = False) -> list[str]:
    """Problems with `model`'s files, one human line each; empty when every checksum matches."""
    problems: list[str] = []
    present = set(_model_files(model.path))
    listed = [rel for rel in sorted(model.files) if rel in present]
    for rel in sorted(model.files):
        if rel not in present:
            problems.append(f"{model.name}: missing file {rel}")
    for rel in sorted(present - set(model.files)):
        problems.append(f"{model.name}: unlisted file {rel}")

    bar = None
    if progress:
        from tqdm import tqdm

        total = sum((model.path / rel).stat().st_size for rel in listed)
        bar = tqdm(total=total, unit="B", unit_scale=True, desc=model.name, leave=False)
    try:
        for rel in listed:
            got = sha256_file(model.path / rel, bar.update if bar else None)
            if got != model.files[rel]:
                problems.append(f"{model.name}: checksum mismatch in {rel}")
    finally:
        if bar:
            bar.close()
    return problems


@contextmanager
def offline() -> Iterator[None]:
    """Make sure no library reaches for the hub: the appliance has no internet by design."""
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        os.environ.setdefault(var, "1")
    yield


def load_local(what: str, folder: Path, loader: Callable[..., T], **kwargs: object) -> T:
    """`loader(folder, local_files_only=True, **kwargs)`, with library errors as one-line ModelError.

    `what` names the model in the message (e.g. "vision model tiny-mllama-vision").
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ModelError(f"{what}: folder {folder} does not exist")
    with offline():
        try:
            return loader(str(folder), local_files_only=True, **kwargs)
        except ModelError:
            raise
        # Loaders fail in many library-specific ways (safetensors, onnxruntime, protobuf...):
        # at this boundary each one means the same thing to a user.
        except Exception as err:
            raise ModelError(f"{what}: cannot load from {folder}: {_one_line(err)}") from None


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    # Library messages suggest hub URLs and "check your internet connection": irrelevant here.
    text = text.split(" Check your internet")[0].split(" If you were trying to load")[0]
    return text[:300]
