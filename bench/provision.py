"""Offline provisioning benchmark: bundle build, first apply, second apply (as root).

Builds the bundle (tiny models, CPU wheels; downloads cached in APPLIANCE_TEST_CACHE), mounts
a fresh overlay of the cached Debian bookworm root, and applies ansible/site.yml to it through
a chroot connection with the network cut (`unshare -n`), twice. The last line printed is one
JSON object: seconds for each step, the bundle's size, and the second run's changed count.

    sudo .venv/bin/python bench/provision.py
    sudo .venv/bin/python bench/provision.py --cold     # also time a bundle with an empty cache
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.provisioning import target as t  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--cold", action="store_true", help="Empty the bundle download cache first."
    )
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench/provision.py needs root (mount, chroot)")
    report: dict[str, object] = {}
    started = time.monotonic()
    t.pristine_root()
    t.collections()
    report["prepare_root_s"] = round(time.monotonic() - started, 1)
    with tempfile.TemporaryDirectory(dir=t.CACHE) as tmp:
        work = Path(tmp)
        if args.cold:
            shutil.rmtree(t.CACHE / "bundle-cache", ignore_errors=True)
        report["bundle_build_s"] = round(t.build_bundle(work / "bundle"), 1)
        manifest = json.loads((work / "bundle/bundle.json").read_text())
        report["bundle_mb"] = round(manifest["size_bytes"] / 1e6)
        report["bundle_steps_s"] = manifest["build_seconds"]
        ov = t.mount_overlay(work / "target", [t.pristine_root()])
        try:
            inv = t.chroot_inventory(work / "hosts.json", {"box": ov.root}, work / "bundle")
            for name in ("first_apply", "second_apply"):
                result = t.play(inv)
                if result.rc != 0:
                    print(result.output[-4000:], file=sys.stderr)
                    sys.exit(f"{name} failed")
                report[f"{name}_s"] = round(result.seconds, 1)
                report[f"{name}_changed"] = result.changed("box")
        finally:
            ov.unmount()
    print(json.dumps(report))


if __name__ == "__main__":
    main()
