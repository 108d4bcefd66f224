"""The bundle's Debian packages (Redis; PostgreSQL for a head node) and their dependency trees,
as flat apt repositories."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from collections.abc import Iterable
from pathlib import Path

from appliance.build.common import BuildOptions, BundleError, link_or_copy


def debs(opts: BuildOptions, dest: Path, packages: tuple[str, ...] | None = None) -> list[str]:
    """`packages` (default: opts.debs) and their dependency trees as .debs in `dest`, with a
    Packages index; returns the file names."""
    if shutil.which("apt-get") is None:
        raise BundleError("apt-get is not available: build the bundle on Debian 12, or --no-debs")
    dest.mkdir(parents=True)
    cache = opts.cache / "debs"
    cache.mkdir(parents=True, exist_ok=True)
    names = _deb_closure(opts.debs if packages is None else packages)
    have = {_deb_key(p): p for p in cache.glob("*.deb")}
    versions = _candidate_versions(names)
    missing = [n for n in names if (n, versions.get(n)) not in have]
    if missing:
        result = subprocess.run(
            ["apt-get", "download", "-q", *missing],
            cwd=cache,
            capture_output=True,
            text=True,
        )
        if result.returncode != 0:
            raise BundleError(
                f"apt-get download failed (is `apt-get update` done?): {result.stderr.strip()}"
            )
        have = {_deb_key(p): p for p in cache.glob("*.deb")}
    files = []
    for name in names:
        deb = have.get((name, versions.get(name)))
        if deb is None:
            raise BundleError(f"no .deb for {name} {versions.get(name)} after apt-get download")
        link_or_copy(deb, dest / deb.name)
        files.append(deb.name)
    _write_packages_index(dest)
    return sorted(files)


def _deb_closure(packages: Iterable[str]) -> list[str]:
    """`packages` and everything they depend on, recursively (real packages only)."""
    result = subprocess.run(
        [
            "apt-cache", "depends", "--recurse", "--no-recommends", "--no-suggests",
            "--no-conflicts", "--no-breaks", "--no-replaces", "--no-enhances", *packages,
        ],
        capture_output=True,
        text=True,
    )  # fmt: skip
    if result.returncode != 0:
        raise BundleError(f"apt-cache depends failed: {result.stderr.strip()}")
    names = {
        line.strip()
        for line in result.stdout.splitlines()
        if line and not line.startswith(" ") and not line.startswith("<")
    }
    # Drop names apt knows but cannot download (purely virtual, or no candidate).
    versions = _candidate_versions(sorted(names))
    return sorted(n for n in names if versions.get(n))


def _candidate_versions(names: list[str]) -> dict[str, str]:
    if not names:
        return {}
    out = subprocess.run(["apt-cache", "policy", *names], capture_output=True, text=True).stdout
    versions: dict[str, str] = {}
    current = None
    for line in out.splitlines():
        if line and not line.startswith(" ") and line.endswith(":"):
            current = line[:-1].split(":")[0]
        elif current and line.strip().startswith("Candidate:"):
            cand = line.split(":", 1)[1].strip()
            if cand and cand != "(none)":
                versions[current] = cand
    return versions


def _deb_key(path: Path) -> tuple[str, str]:
    fields = _deb_fields(path)
    return fields["Package"], fields["Version"]


def _deb_fields(path: Path) -> dict[str, str]:
    out = subprocess.run(
        ["dpkg-deb", "-f", str(path)], capture_output=True, text=True, check=True
    ).stdout
    fields: dict[str, str] = {}
    key = None
    for line in out.splitlines():
        if line.startswith((" ", "\t")) and key:
            fields[key] += "\n" + line
        elif ":" in line:
            key, _, value = line.partition(":")
            fields[key] = value.strip()
    return fields


def _write_packages_index(folder: Path) -> None:
    """A flat apt repository (`deb [trusted=yes] file:FOLDER ./`), like dpkg-scanpackages."""
    stanzas = []
    for deb in sorted(folder.glob("*.deb")):
        fields = _deb_fields(deb)
        lines = [f"{k}: {v}" for k, v in fields.items()]
        data = deb.read_bytes()
        lines += [
            f"Filename: ./{deb.name}",
            f"Size: {len(data)}",
            f"MD5sum: {hashlib.md5(data).hexdigest()}",  # noqa: S324 - apt's index format
            f"SHA256: {hashlib.sha256(data).hexdigest()}",
        ]
        stanzas.append("\n".join(lines))
    (folder / "Packages").write_text("\n\n".join(stanzas) + "\n")
