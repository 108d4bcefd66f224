"""`appliance up`: the whole appliance on one machine, for a newcomer or a demo.

Starts what is missing (a Redis, tiny models when no real weights are configured), then runs
the worker, the summary worker, the watcher (when folders are configured) and the web server as
child processes, and stops them all together. Production boxes use the systemd units instead.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlparse

import click

from appliance.errors import ModelError
from appliance.settings import Settings
from cli.group import cli, get_settings


def _redis_answers(url: str) -> bool:
    import redis

    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=1).ping())
    except redis.RedisError:
        return False


def _start_redis(url: str, home: Path) -> subprocess.Popen[bytes]:
    parsed = urlparse(url)
    if parsed.hostname not in ("127.0.0.1", "localhost", "::1"):
        raise click.ClickException(f"Redis at {url} does not answer, and it is not local")
    (home / "redis").mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(
        [
            "redis-server",
            "--bind", "127.0.0.1",
            "--port", str(parsed.port or 6379),
            "--dir", str(home / "redis"),
            "--appendonly", "yes",
            "--appendfsync", "everysec",
            "--maxmemory-policy", "noeviction",
        ],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 10
    while not _redis_answers(url):
        if time.monotonic() > deadline or proc.poll() is not None:
            raise click.ClickException("could not start redis-server (is it installed?)")
        time.sleep(0.1)
    return proc


def _models_dir(settings: Settings, home: Path) -> Path:
    from appliance.registry import ModelRegistry

    try:
        ModelRegistry(settings.models_dir).resolve("vision", settings.vision_model)
        return settings.models_dir
    except ModelError:
        pass
    tiny = home / "models"
    try:
        ModelRegistry(tiny).resolve("vision", "")
    except ModelError:
        from appliance.build.tiny import make_tiny

        click.echo(f"no real weights in {settings.models_dir}: building tiny demo models in {tiny}")
        make_tiny(tiny)
    return tiny


def _bootstrap_admin(settings: Settings, home: Path) -> None:
    """A first admin for the panel, its password kept in a 0600 file beside the demo state."""
    import secrets

    from appliance.users import UserStore

    users = UserStore.from_settings(settings)
    if users.list():
        return
    password = secrets.token_urlsafe(12)
    users.create("admin", password, admin=True)
    secret = home / "admin-password.txt"
    secret.parent.mkdir(parents=True, exist_ok=True)
    secret.touch(mode=0o600)
    secret.write_text(password + "\n")
    click.echo(f"panel login: admin / {password}  (also in {secret})")


@cli.command()
@click.option(
    "--home",
    type=click.Path(path_type=Path),
    default=Path("var"),
    show_default=True,
    help="Where demo state goes when no data dir / models dir is configured.",
)
@click.option("--bind", default="127.0.0.1:8000", show_default=True)
@click.pass_context
def up(ctx: click.Context, home: Path, bind: str) -> None:
    """Run the whole appliance here: Redis, worker(s), watcher, web."""
    settings = get_settings(ctx)
    home = home.resolve()
    env = dict(os.environ)
    configured = "data_dir" in settings.model_fields_set
    data_dir = settings.data_dir if configured else home / "data"
    env["APPLIANCE_DATA_DIR"] = str(data_dir)
    env["APPLIANCE_MODELS_DIR"] = str(_models_dir(settings, home).resolve())
    child_settings = settings.model_copy(update={"data_dir": data_dir})
    child_settings.data_dir.mkdir(parents=True, exist_ok=True)

    children: list[tuple[str, subprocess.Popen[bytes]]] = []
    if not _redis_answers(settings.redis_url):
        children.append(("redis", _start_redis(settings.redis_url, home)))

    _bootstrap_admin(child_settings, home)

    me = [sys.executable, "-m", "appliance"]
    services = [
        ("worker", [*me, "worker"]),
        ("web", [*me, "web", "--bind", bind]),
    ]
    if settings.folders:
        services.append(("watch", [*me, "watch"]))
    for name, argv in services:
        children.append((name, subprocess.Popen(argv, env=env)))
    click.echo(f"appliance up: http://{bind}  (Ctrl-C stops everything)")

    stop = False

    def _on_signal(signum: int, frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)
    failed = None
    while not stop and failed is None:
        failed = next((n for n, p in children if p.poll() is not None), None)
        time.sleep(0.5)
    # Stop in reverse start order so Redis outlives the processes that use it.
    for _name, proc in reversed(children):
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
    if failed:
        raise click.ClickException(f"{failed} exited; stopped the others")
