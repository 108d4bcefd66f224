"""Helpers shared by the watcher tests: tiny files, deadline polling, folder settings."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from PIL import Image

from appliance.settings import DropFolder


def jpeg(seed: int = 0, size: tuple[int, int] = (16, 16)) -> bytes:
    """A tiny, distinct JPEG per seed (distinct bytes, so dedupe does not merge them)."""
    colour = (seed * 37 % 256, seed * 91 % 256, (seed // 7) * 53 % 256)
    image = Image.new("RGB", size, colour)
    image.putpixel((0, 0), (seed % 256, (seed >> 8) % 256, 7))
    out = io.BytesIO()
    image.save(out, "JPEG", quality=90, comment=f"seed {seed}".encode())
    return out.getvalue()


def wait_for(predicate: Callable[[], Any], timeout: float = 10.0, every: float = 0.02) -> Any:
    """Poll until `predicate()` is truthy; fail with a clear message at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        time.sleep(every)


def folder(path: Path, **overrides: Any) -> DropFolder:
    defaults: dict[str, Any] = {
        "path": path,
        "settle_seconds": 0.3,
        "batch_gap_seconds": 0.3,
        "poll_seconds": 0.1,
        "rescan_seconds": 3600,
    }
    return DropFolder(**(defaults | overrides))


def files_in(directory: Path, pattern: str = "*") -> list[str]:
    if not directory.is_dir():
        return []
    return sorted(p.name for p in directory.glob(pattern) if p.is_file())


def claimed(root: Path) -> list[str]:
    """Files still claimed in `.processing/` (its dot-named bookkeeping does not count)."""
    return [n for n in files_in(root / ".processing") if not n.startswith(".")]


# -- real processes: a private Redis, `appliance worker`, `appliance watch` ----------------------

REPO = Path(__file__).resolve().parent.parent


def write_config(path: Path, values: dict[str, Any], folders: list[dict[str, Any]]) -> Path:
    """A TOML settings file (flat values, [queue]/[generation] tables, [[folders]])."""

    def fmt(value: Any) -> str:
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, int | float):
            return repr(value)
        if isinstance(value, list):
            return "[" + ", ".join(fmt(v) for v in value) + "]"
        return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'

    lines = []
    tables = {k: v for k, v in values.items() if isinstance(v, dict)}
    for key, value in values.items():
        if not isinstance(value, dict):
            lines.append(f"{key} = {fmt(value)}")
    for name, table in tables.items():
        lines.append(f"[{name}]")
        lines += [f"{k} = {fmt(v)}" for k, v in table.items()]
    for f in folders:
        lines.append("[[folders]]")
        lines += [f"{k} = {fmt(v)}" for k, v in f.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def spawn(args: list[str], config: Path, log: Path) -> subprocess.Popen[bytes]:
    env = os.environ | {"APPLIANCE_CONFIG_FILE": str(config), "PYTHONUNBUFFERED": "1"}
    env.pop("CUDA_VISIBLE_DEVICES", None)
    handle = open(log, "ab")  # noqa: SIM115 - the child keeps writing after we return
    return subprocess.Popen(
        [sys.executable, "-m", "cli", *args],
        cwd=REPO,
        env=env,
        stdout=handle,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def kill(proc: subprocess.Popen[bytes], sig: int = signal.SIGKILL) -> None:
    """Signal the process (only the one we started) and reap it."""
    if proc.poll() is None:
        proc.send_signal(sig)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)
