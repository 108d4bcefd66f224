"""The offline bundle: everything a box without internet needs, gathered on a connected machine.

    OUT/
      bundle.json          what is inside: variant, Python/platform, models, and the sha256
                           and size of every other file in the bundle
      SHA256SUMS           the same checksums, for `sha256sum -c` on any machine
      wheelhouse/          this project's wheel and every dependency, as wheels for the target
        requirements.txt   exact pins of all of them (`pip install --no-index -r`)
      debs/                the Debian packages the Ansible roles install (Redis and its whole
        Packages           dependency tree) as a flat apt repository: no mirror on the target
      models/NAME/         model folders, each with its manifest.json (verified on the way in)
      ansible/, systemd/   the playbook, roles and units (run ansible/site.yml from here)

Downloads are kept in a cache directory between builds (wheels per variant, .deb files), so a
second build resolves and copies from disk: only this project's own wheel is built every time.
Files are hard-linked from the cache (and from --models) when on the same filesystem: replace
files in a bundle, never edit them in place.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from appliance.errors import ApplianceError

BUNDLE_MANIFEST = "bundle.json"
SUMS = "SHA256SUMS"
FORMAT = 1
# What the roles install with apt (roles/redis); their dependency trees come along.
DEB_PACKAGES: tuple[str, ...] = ("redis-server",)
# Debian 12 (bookworm): Python 3.11.2 (the full version matters: markers such as
# `python_full_version < "3.11.3"` pull in extra wheels), glibc 2.36, x86_64.
DEFAULT_PYTHON = "3.11.2"
DEFAULT_PLATFORM = "manylinux_2_36_x86_64"
PROJECT_NAME = "vision-appliance"
_CHUNK = 1 << 20


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
    pip_args: list[str] = field(default_factory=list)
    log: Callable[[str], None] = lambda msg: print(msg, file=sys.stderr)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def project_root(explicit: Path | None = None) -> Path:
    """The source tree to build this project's wheel from (where pyproject.toml is)."""
    candidates = [explicit] if explicit else [Path(__file__).resolve().parents[1], Path.cwd()]
    for path in candidates:
        if path and (path / "pyproject.toml").is_file():
            return path.resolve()
    raise BundleError("cannot find this project's source tree (pyproject.toml): pass --project DIR")


def build(opts: BuildOptions) -> dict:
    """Build the bundle in `opts.out`; return its manifest."""
    final = opts.out.resolve()
    if final.exists() and any(final.iterdir()) and not (final / BUNDLE_MANIFEST).is_file():
        raise BundleError(f"{final} exists and is not a bundle: refusing to overwrite it")
    # Built beside OUT and moved into place at the end: OUT is a whole bundle or absent.
    out = final.with_name(final.name + ".partial")
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    opts.cache.mkdir(parents=True, exist_ok=True)
    root = project_root(opts.project)
    timings: dict[str, float] = {}

    def step(name: str, func: Callable[[], object]) -> object:
        started = time.monotonic()
        opts.log(f"bundle: {name} ...")
        result = func()
        timings[name] = round(time.monotonic() - started, 1)
        opts.log(f"bundle: {name} done in {timings[name]} s")
        return result

    wheel_info = step("wheelhouse", lambda: _wheelhouse(opts, root, out / "wheelhouse"))
    debs = step("debs", lambda: _debs(opts, out / "debs")) if opts.debs else []
    models = step("models", lambda: _models(opts, out / "models"))
    step("playbook", lambda: _playbook(root, out))
    manifest = {
        "format": FORMAT,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "variant": "gpu" if opts.gpu else "cpu",
        "python": opts.python_version,
        "platform": opts.platform,
        "project": PROJECT_NAME,
        **wheel_info,  # type: ignore[dict-item]
        "debs": debs,
        "deb_packages": list(opts.debs),
        "models": models,
        "build_seconds": timings,
    }
    step("checksums", lambda: _write_checksums(out, manifest))
    if final.exists():
        shutil.rmtree(final)
    out.rename(final)
    return manifest


# -- wheelhouse ----------------------------------------------------------------------------


def _pinned(root: Path, name: str) -> str | None:
    deps = tomllib.loads((root / "pyproject.toml").read_text())["project"]["dependencies"]
    for dep in deps:
        match = re.fullmatch(rf"{re.escape(name)}\s*==\s*([\w.]+)", dep.split(";")[0].strip())
        if match:
            return match.group(1)
    return None


def _pip(args: list[str], log: Callable[[str], None]) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "pip", "--disable-pip-version-check", *args]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        log(result.stdout[-3000:] + result.stderr[-3000:])
    return result


def _wheelhouse(opts: BuildOptions, root: Path, dest: Path) -> dict:
    dest.mkdir(parents=True)
    variant = "gpu" if opts.gpu else "cpu"
    abi = "cp" + "".join(opts.python_version.split(".")[:2])
    cache = opts.cache / f"wheels-{variant}-{abi}-{opts.platform}"
    cache.mkdir(parents=True, exist_ok=True)

    # 1. This project's wheel, always fresh (the version does not change with every commit).
    with tempfile.TemporaryDirectory() as tmp:
        built = _pip(
            ["wheel", "--no-deps", "--no-build-isolation", "-q", "-w", tmp, str(root)], opts.log
        )
        if built.returncode != 0:
            built = _pip(["wheel", "--no-deps", "-q", "-w", tmp, str(root)], opts.log)
        if built.returncode != 0:
            raise BundleError("could not build this project's wheel (see the pip output above)")
        (own,) = Path(tmp).glob("*.whl")
        shutil.copy2(own, dest / own.name)
    own = dest / own.name

    # 2. Every dependency, as wheels for the target's Python and platform.
    reqs = [f"{PROJECT_NAME}[{variant}] @ {own.as_uri()}"]
    torch = _pinned(root, "torch")
    if opts.gpu and torch:
        # `===` is an exact string match: it refuses the local CPU build `2.13.0+cpu` that a
        # find-links folder may offer, and takes PyPI's CUDA build of the same release.
        reqs.append(f"torch==={torch}")
    target = [
        "--only-binary=:all:",
        f"--python-version={opts.python_version}",
        "--implementation=cp",
        f"--abi={abi}",
        "--abi=abi3",
        "--abi=none",
        *(f"--platform={tag}" for tag in platform_tags(opts.platform)),
    ]
    with tempfile.TemporaryDirectory(dir=opts.cache) as tmp:
        # Offline first: everything may already be in the cache.
        cmd = ["download", "-q", "-d", tmp, *target, *opts.pip_args, *reqs]
        got = _pip([*cmd, "--no-index", f"--find-links={cache}"], lambda _: None)
        if got.returncode == 0:
            opts.log(f"bundle: wheels resolved from the cache {cache}")
        else:
            got = _pip([*cmd, f"--find-links={cache}"], opts.log)
            if got.returncode != 0:
                raise BundleError("pip could not gather the wheelhouse (see its output above)")
        _complete_for_target(Path(tmp), opts, [*target, *opts.pip_args, f"--find-links={cache}"])
        for wheel in Path(tmp).glob("*.whl"):
            if wheel.name == own.name:
                continue
            if not (cache / wheel.name).exists():
                shutil.copy2(wheel, cache / wheel.name)
            _link_or_copy(cache / wheel.name, dest / wheel.name)

    wheels = sorted(dest.glob("*.whl"))
    if opts.gpu:
        cpu_torch = [w.name for w in wheels if w.name.startswith("torch-") and "+cpu" in w.name]
        if cpu_torch:
            raise BundleError(f"GPU bundle got a CPU-only torch wheel: {cpu_torch[0]}")
    pins = sorted(_pin(w) for w in wheels)
    (dest / "requirements.txt").write_text(
        "# Exact pins of every wheel in this folder (written by `appliance bundle build`).\n"
        + "".join(f"{pin}\n" for pin in pins)
    )
    return {
        "appliance_wheel": own.name,
        "appliance_wheel_sha256": sha256_file(own),
        "wheels": len(wheels),
    }


def _target_environment(python_version: str) -> dict[str, str]:
    parts = python_version.split(".")
    return {
        "python_version": ".".join(parts[:2]),
        "python_full_version": python_version if len(parts) > 2 else python_version + ".0",
        "implementation_name": "cpython",
        "platform_python_implementation": "CPython",
        "sys_platform": "linux",
        "os_name": "posix",
        "platform_system": "Linux",
        "platform_machine": "x86_64",
    }


def _complete_for_target(folder: Path, opts: BuildOptions, pip_args: list[str]) -> None:
    """Add what the target needs but this machine's pip left out.

    pip evaluates dependency markers against the Python running it, not `--python-version`:
    on a 3.11.7 build host, redis' `async-timeout; python_full_version < "3.11.3"` is skipped,
    and Debian 12's Python 3.11.2 then cannot install. Re-check every wheel's requirements with
    the target's marker values and download what is missing, until nothing is.
    """
    from packaging.requirements import InvalidRequirement, Requirement
    from packaging.utils import canonicalize_name

    env = _target_environment(opts.python_version)
    for _ in range(5):
        metas = {
            canonicalize_name(name): lines
            for name, lines in map(_wheel_metadata, folder.glob("*.whl"))
        }
        # Walk from this project with its extra, each package with the extras asked of it.
        wanted: dict[str, set[str]] = {
            canonicalize_name(PROJECT_NAME): {"gpu" if opts.gpu else "cpu"}
        }
        todo = list(wanted)
        missing: set[str] = set()
        while todo:
            name = todo.pop()
            for line in metas.get(name, []):
                try:
                    req = Requirement(line)
                except InvalidRequirement:
                    continue
                asked = ["", *sorted(wanted[name])]
                if req.marker is not None and not any(
                    req.marker.evaluate({**env, "extra": extra}) for extra in asked
                ):
                    continue
                dep = canonicalize_name(req.name)
                if dep not in metas:
                    missing.add(f"{req.name}{req.specifier}")
                    continue
                if dep not in wanted or not req.extras <= wanted[dep]:
                    wanted.setdefault(dep, set()).update(req.extras)
                    todo.append(dep)
        if not missing:
            return
        opts.log(f"bundle: the target also needs {', '.join(sorted(missing))}")
        cmd = ["download", "-q", "-d", str(folder), *pip_args, *sorted(missing)]
        got = _pip([*cmd, "--no-index"], lambda _: None)
        if got.returncode != 0:
            got = _pip(cmd, opts.log)
        if got.returncode != 0:
            raise BundleError(f"pip could not download {', '.join(sorted(missing))} for the target")
    raise BundleError("the wheelhouse's requirements did not settle")


def _wheel_metadata(wheel: Path) -> tuple[str, list[str]]:
    import zipfile

    with zipfile.ZipFile(wheel) as zf:
        name = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
        text = zf.read(name).decode("utf-8", "replace")
    head = text.split("\n\n", 1)[0]
    project = next(
        (ln.split(":", 1)[1].strip() for ln in head.splitlines() if ln.startswith("Name:")), ""
    )
    requires = [
        ln.split(":", 1)[1].strip() for ln in head.splitlines() if ln.startswith("Requires-Dist:")
    ]
    return project, requires


def platform_tags(platform: str) -> list[str]:
    """`manylinux_2_36_x86_64` and every older manylinux tag it runs (pip does not expand
    a `--platform` given on its command line)."""
    match = re.fullmatch(r"manylinux_2_(\d+)_(\w+)", platform)
    if not match:
        return [platform]
    glibc, arch = int(match.group(1)), match.group(2)
    tags = [f"manylinux_2_{minor}_{arch}" for minor in range(glibc, 4, -1)]
    legacy = {17: "manylinux2014", 12: "manylinux2010", 5: "manylinux1"}
    tags += [f"{name}_{arch}" for minor, name in legacy.items() if minor <= glibc]
    return tags


def _pin(wheel: Path) -> str:
    name, version = wheel.name.split("-")[:2]
    return f"{name.replace('_', '-').lower()}=={version}"


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


# -- Debian packages -----------------------------------------------------------------------


def _debs(opts: BuildOptions, dest: Path) -> list[str]:
    if shutil.which("apt-get") is None:
        raise BundleError("apt-get is not available: build the bundle on Debian 12, or --no-debs")
    dest.mkdir(parents=True)
    cache = opts.cache / "debs"
    cache.mkdir(parents=True, exist_ok=True)
    names = _deb_closure(opts.debs)
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
        _link_or_copy(deb, dest / deb.name)
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


# -- models --------------------------------------------------------------------------------


def _models(opts: BuildOptions, dest: Path) -> list[dict]:
    from appliance.registry import MANIFEST, read_manifest, verify

    dest.mkdir(parents=True)
    roots = list(opts.models)
    if opts.tiny_models:
        tiny = opts.cache / "tiny-models"
        if not any(tiny.glob(f"*/{MANIFEST}")):
            from appliance.build.tiny import make_tiny

            opts.log(f"bundle: building tiny models in {tiny}")
            make_tiny(tiny)
        roots.append(tiny)
    folders: list[Path] = []
    for root in roots:
        root = Path(root)
        if (root / MANIFEST).is_file():
            folders.append(root)
        elif root.is_dir():
            folders += sorted(d for d in root.iterdir() if (d / MANIFEST).is_file())
        else:
            raise BundleError(f"models: {root} is not a directory")
    listed = []
    for folder in folders:
        info = read_manifest(folder)
        problems = verify(info)
        if problems:
            raise BundleError("model failed verification: " + "; ".join(problems))
        target = dest / folder.name
        if target.exists():
            raise BundleError(f"two model folders named {folder.name}")
        for rel in [*info.files, MANIFEST]:
            (target / rel).parent.mkdir(parents=True, exist_ok=True)
            _link_or_copy(folder / rel, target / rel)
        listed.append({"name": info.name, "role": info.role, "dir": folder.name})
    return listed


# -- playbook and checksums ----------------------------------------------------------------


def _playbook(root: Path, out: Path) -> None:
    for name in ("ansible", "systemd"):
        if (root / name).is_dir():
            shutil.copytree(
                root / name,
                out / name,
                ignore=shutil.ignore_patterns("__pycache__", "*.retry", ".ansible"),
            )


def _bundle_files(out: Path) -> list[str]:
    rels = (p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    return sorted(rel for rel in rels if rel not in (BUNDLE_MANIFEST, SUMS))


def _write_checksums(out: Path, manifest: dict) -> None:
    files = {rel: sha256_file(out / rel) for rel in _bundle_files(out)}
    manifest["files"] = {
        rel: {"sha256": digest, "size": (out / rel).stat().st_size} for rel, digest in files.items()
    }
    manifest["size_bytes"] = sum(entry["size"] for entry in manifest["files"].values())
    (out / BUNDLE_MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    (out / SUMS).write_text("".join(f"{digest}  {rel}\n" for rel, digest in files.items()))


def verify_bundle(out: Path) -> list[str]:
    """Problems with the bundle in `out` (missing, changed or unlisted files); empty if none."""
    try:
        manifest = json.loads((out / BUNDLE_MANIFEST).read_text())
    except (OSError, ValueError) as err:
        raise BundleError(f"{out}: no readable {BUNDLE_MANIFEST} ({err})") from None
    listed = manifest.get("files", {})
    present = set(_bundle_files(out))
    problems = [f"missing {rel}" for rel in sorted(set(listed) - present)]
    problems += [f"unlisted {rel}" for rel in sorted(present - set(listed))]
    for rel in sorted(set(listed) & present):
        if sha256_file(out / rel) != listed[rel]["sha256"]:
            problems.append(f"checksum mismatch {rel}")
    return problems
