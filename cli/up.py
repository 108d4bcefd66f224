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
import threading
import time
from pathlib import Path
from urllib.parse import urlparse

import click

from appliance.errors import ModelError
from appliance.quiet import demo_pythonwarnings
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


def _bootstrap_admin(settings: Settings, home: Path) -> str:
    """A first admin for the panel, its password kept in a 0600 file beside the demo state.
    Returns the login line for the banner."""
    import secrets

    from appliance.users import UserStore

    secret = home / "admin-password.txt"
    users = UserStore.from_settings(settings)
    if users.list():
        if secret.is_file():
            return f"admin (password in {secret})"
        return "a user made with `appliance users create NAME --admin`"
    password = secrets.token_urlsafe(12)
    users.create("admin", password, admin=True)
    secret.parent.mkdir(parents=True, exist_ok=True)
    secret.touch(mode=0o600)
    secret.write_text(password + "\n")
    return f"admin / {password}  (also in {secret})"


def _models_line(models_dir: Path, settings: Settings) -> tuple[str, bool]:
    """What the banner says about the models, and whether they are the tiny demo ones."""
    from appliance.registry import ModelRegistry

    registry = ModelRegistry(models_dir)
    names, demo = [], False
    for role, wanted in (
        ("vision", settings.vision_model),
        ("summarizer", settings.summarizer_model),
    ):
        try:
            info = registry.resolve(role, wanted)
        except ModelError:
            continue
        names.append(f"{role} {info.name}")
        demo = demo or info.demo
    return ", ".join(names) or "none", demo


def _wait_ready(
    bind: str,
    settings: Settings,
    children: list[tuple[str, subprocess.Popen[bytes]]],
    logs: Path,
    stopping: threading.Event,
) -> bool:
    """Until the web server answers and a worker has warmed its models (True), or Ctrl-C
    (False); a child that exits first is reported with the end of its log."""
    import urllib.request

    from appliance.jobs import JobService

    jobs = JobService.from_settings(settings, migrate=False)
    deadline = time.monotonic() + 300
    web_up = worker_up = False
    while not (web_up and worker_up):
        if stopping.is_set():
            return False
        for name, proc in children:
            if proc.poll() is not None:
                _stop(children)
                raise click.ClickException(f"{name} exited at start:\n{_tail(logs, name)}")
        if time.monotonic() > deadline:
            _stop(children)
            raise click.ClickException(f"not ready after 300 s; see the logs in {logs}")
        if not web_up:
            try:
                with urllib.request.urlopen(f"http://{bind}/healthz", timeout=2) as answer:
                    web_up = answer.status == 200
            except OSError:
                pass
        if not worker_up:
            worker_up = any(w.alive and w.state in ("idle", "busy") for w in jobs.workers())
        stopping.wait(0.3)
    return True


def _tail(logs: Path, name: str, lines: int = 20) -> str:
    path = logs / f"{name}.log"
    text = path.read_text(errors="replace") if path.is_file() else ""
    return "\n".join(text.splitlines()[-lines:])


def _stop(children: list[tuple[str, subprocess.Popen[bytes]]]) -> None:
    # In reverse start order, so Redis outlives the processes that use it.
    for _name, proc in reversed(children):
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()


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
    models_dir = _models_dir(settings, home).resolve()
    env["APPLIANCE_DATA_DIR"] = str(data_dir)
    env["APPLIANCE_MODELS_DIR"] = str(models_dir)
    env["PYTHONWARNINGS"] = demo_pythonwarnings()
    child_settings = settings.model_copy(update={"data_dir": data_dir})
    child_settings.data_dir.mkdir(parents=True, exist_ok=True)
    logs = home / "logs"
    logs.mkdir(parents=True, exist_ok=True)

    stopping = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stopping.set())
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    children: list[tuple[str, subprocess.Popen[bytes]]] = []
    if not _redis_answers(settings.redis_url):
        children.append(("redis", _start_redis(settings.redis_url, home)))

    login = _bootstrap_admin(child_settings, home)

    me = [sys.executable, "-m", "cli"]
    services = [
        ("worker", [*me, "worker"]),
        ("web", [*me, "web", "--bind", bind]),
    ]
    if settings.folders:
        services.append(("watch", [*me, "watch"]))
    for name, argv in services:
        # Each child's output goes to its own log: the terminal keeps the banner readable.
        with open(logs / f"{name}.log", "ab") as log:
            children.append((name, subprocess.Popen(argv, env=env, stdout=log, stderr=log)))
    if not _wait_ready(bind, child_settings, children, logs, stopping):
        _stop(children)
        return
    models, demo = _models_line(models_dir, settings)
    banner = [
        "",
        "  Vision appliance is up",
        f"  panel    http://{bind}/",
        f"  login    {login}",
        f"  API      http://{bind}/api/v1/docs  (tokens: appliance tokens create NAME)",
        f"  models   {models}",
        f"  logs     {logs}/{{{','.join(n for n, _ in services)}}}.log",
    ]
    if demo:
        banner.append(
            "  note     tiny demo models: the text is random by design; README, "
            "'Using real weights', says how to install real ones"
        )
    banner += ["  Ctrl-C stops everything.", ""]
    click.echo("\n".join(banner))

    failed = None
    while not stopping.is_set() and failed is None:
        failed = next((n for n, p in children if p.poll() is not None), None)
        stopping.wait(0.5)
    _stop(children)
    if failed:
        raise click.ClickException(f"{failed} exited; stopped the others:\n{_tail(logs, failed)}")
