"""Shared fixtures. Model fixtures first: tiny real models, built once and cached between runs."""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from PIL import Image, ImageDraw, ImageFilter

# The provisioning modules share one bundle and one applied root per session.
pytest_plugins = ["tests.provisioning.fixtures"]

# The tests never go online; set before transformers is imported anywhere.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def _tiny_cache_key() -> str:
    """Changes whenever the tiny models could: their builder's source or the library versions."""
    import tokenizers
    import torch
    import transformers

    import appliance.build.onnx_export
    import appliance.build.tiny
    import appliance.build.tiny_guards
    import appliance.safety.template

    digest = hashlib.sha256()
    modules = (appliance.build.tiny, appliance.build.tiny_guards, appliance.safety.template)
    for module in (*modules, appliance.build.onnx_export):
        digest.update(Path(module.__file__ or "").read_bytes())
    for lib in (torch, transformers, tokenizers):
        digest.update(lib.__version__.encode())
    return digest.hexdigest()[:12]


def _verified(root: Path) -> bool:
    from appliance.registry import ModelRegistry, verify

    try:
        infos = ModelRegistry(root).list()
    except Exception:
        return False
    return len(infos) == 4 and not any(verify(info) for info in infos)


@pytest.fixture(scope="session")
def tiny_models_dir(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """A models root holding `tiny-mllama-vision`, `tiny-llama-summarizer` and the two tiny
    safety guards `tiny-mllama-guard`, `tiny-llama-guard` (read-only!)."""
    from appliance.build.tiny import make_tiny

    name = f"tiny-models-{_tiny_cache_key()}"
    store = getattr(request.config, "cache", None)  # absent under `-p no:cacheprovider`
    cache = store.mkdir(name) if store else tmp_path_factory.mktemp("models") / name
    if _verified(cache):
        return cache
    # Build beside the cache and swap in, so concurrent test runs never see a half-built root.
    staging = Path(tempfile.mkdtemp(prefix="tiny-build-", dir=cache.parent))
    make_tiny(staging)
    if _verified(cache):
        shutil.rmtree(staging, ignore_errors=True)
        return cache
    shutil.rmtree(cache, ignore_errors=True)
    try:
        staging.rename(cache)
    except OSError:
        shutil.rmtree(staging, ignore_errors=True)
    assert _verified(cache), f"tiny models in {cache} do not verify"
    return cache


@pytest.fixture(scope="session")
def vision_engine(tiny_models_dir: Path):  # -> VisionEngine
    from appliance.engines.vision import VisionEngine

    return VisionEngine.load(tiny_models_dir / "tiny-mllama-vision", device="cpu")


@pytest.fixture(scope="session")
def summarizer_engine(tiny_models_dir: Path):  # -> SummarizerEngine (ONNX backend)
    from appliance.engines.summarizer import SummarizerEngine

    return SummarizerEngine.load(tiny_models_dir / "tiny-llama-summarizer", device="cpu")


def synthetic_photo(seed: int = 0, size: tuple[int, int] = (640, 480)) -> Image.Image:
    """A photo-like JPEG-decoded image: sky/ground gradients, shapes, blur, JPEG artefacts."""
    width, height = size
    image = Image.new("RGB", size)
    draw = ImageDraw.Draw(image)
    horizon = height // 2 + (seed * 37) % (height // 4)
    for y in range(height):
        if y < horizon:
            t = y / horizon
            colour = (int(90 + 100 * t), int(150 + 60 * t), 235)
        else:
            t = (y - horizon) / max(1, height - horizon)
            colour = (int(60 + 80 * t), int(120 - 40 * t), int(40 + 30 * t))
        draw.line([(0, y), (width, y)], fill=colour)
    sun = (width * (1 + seed % 5)) // 7
    draw.ellipse([sun - 40, 40, sun + 40, 120], fill=(255, 230, 120))
    for i in range(3 + seed % 3):
        x = (seed * 131 + i * 173) % max(1, width - 120)
        draw.rectangle(
            [x, horizon - 90 + i * 7, x + 60 + i * 9, horizon + 10], fill=(150, 60 + 30 * i, 50)
        )
        draw.polygon(
            [(x - 10, horizon - 90 + i * 7), (x + 35, horizon - 140), (x + 80, horizon - 90)],
            fill=(90, 40, 30),
        )
    image = image.filter(ImageFilter.GaussianBlur(1.2))
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=85)
    buffer.seek(0)
    return Image.open(buffer).convert("RGB")


@pytest.fixture
def make_photo() -> Iterator[Callable[..., Image.Image]]:
    yield synthetic_photo


# -- job queue (issue 4): a private Redis per session, SQLite and PostgreSQL stores ---------


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """URL of a private `redis-server` (noeviction) on a free port, for this test session."""
    from tests.queue_helpers import RedisServer

    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture(params=["sqlite", "postgres"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, empty job-store URL: SQLite in tmp_path, or a throwaway PostgreSQL database
    on 127.0.0.1:5432 (skipped, with the reason, when there is none)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'store.db'}"
        return
    from tests.queue_helpers import create_pg_database, drop_pg_database, postgres_reachable

    why = postgres_reachable()
    if why is not None:
        pytest.skip(why)
    name = create_pg_database()
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    finally:
        from appliance.store.db import dispose_all

        dispose_all()
        drop_pg_database(name)


# -- CI: a skipped test is not a pass -------------------------------------------------------


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Under CI=true any skip (no Chromium, no PostgreSQL, not root...) fails the run: CI
    installs everything, so a skip there means a guarantee went untested."""
    if os.environ.get("CI", "").lower() not in ("1", "true") or exitstatus != 0:
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = reporter.stats.get("skipped", []) if reporter else []
    if skipped:
        for report in skipped:
            print(f"\nCI: skipped test counts as a failure: {report.nodeid}: {report.longrepr}")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


# -- one API + worker stack for the session (tests/worker_stack.py) ---------------------------


@pytest.fixture(scope="session")
def api_worker_stack(
    tmp_path_factory: pytest.TempPathFactory, redis_server: str, tiny_models_dir: Path
) -> Iterator[dict]:
    """A Flask app and a real worker on Redis database 7, shared by the worker test modules."""
    from tests.worker_stack import running_stack

    with running_stack(tmp_path_factory.mktemp("api-e2e"), redis_server, tiny_models_dir) as s:
        yield s


# `make test` runs the suite on two xdist workers (`-n 2 --dist loadgroup`). Each test module
# is one unit of work (modules that share an expensive session fixture are one unit together),
# so fixtures are built once; the longest units start first, so the two workers end together.
# The provisioning modules alone take ~10 minutes, most of it waiting on dpkg, ansible and
# booting containers: running them beside the rest nearly halves the suite's wall time.
LONGEST_FIRST = (
    "test_provisioning.py",
    "test_provisioning_head.py",
    "test_queue_workers.py",
    "test_watch_e2e.py",
    "test_scaleout.py",
    "test_up.py",
)
# Modules sharing a session fixture: the bundle and applied roots, the API's worker stack.
SHARED_UNITS = {
    "test_provisioning.py": "provisioning",
    "test_provisioning_head.py": "provisioning",
    "test_api_worker.py": "api-worker-stack",
    "test_safety_worker.py": "api-worker-stack",
}


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook reads the groups
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not hasattr(config, "workerinput"):  # not an xdist worker: keep pytest's own order
        return
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    for item in items:
        unit = SHARED_UNITS.get(item.path.name, str(item.path.relative_to(config.rootpath)))
        item.add_marker(pytest.mark.xdist_group(unit))
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable within a module
