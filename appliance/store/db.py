"""Engines and sessions: SQLite (WAL, busy timeout) by default, PostgreSQL by URL.

`init_db(settings)` applies the package's Alembic migrations up to head; every process that
uses the store calls it once on start (it is cheap when already current, and serialised by a
database lock, so several workers starting together are fine).
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from appliance.settings import Settings

MIGRATIONS = Path(__file__).parent / "migrations"
# Any fixed 64-bit number: serialises concurrent `init_db` calls on PostgreSQL.
_PG_MIGRATION_LOCK = 0x6A6F6273
SQLITE_BUSY_TIMEOUT_MS = 30_000

_engines: dict[str, Engine] = {}
_migrated: set[str] = set()
_lock = threading.Lock()


def make_engine(url: str) -> Engine:
    """A new engine for `url`. SQLite gets WAL, a busy timeout and `BEGIN IMMEDIATE` writes."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return create_engine(url, pool_pre_ping=True, pool_size=5, max_overflow=5)
    if parsed.database and parsed.database != ":memory:":
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    # A small pool: opening a connection costs its PRAGMAs, too much once per transaction.
    engine = create_engine(url, pool_size=5, max_overflow=10, connect_args={"timeout": 30})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, _record) -> None:  # type: ignore[no-untyped-def]
        # Let SQLAlchemy's "begin" event below issue BEGIN itself (pysqlite would defer it).
        dbapi_conn.isolation_level = None
        cursor = dbapi_conn.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn) -> None:  # type: ignore[no-untyped-def]
        # IMMEDIATE takes the write lock up front, so a transaction never fails half-way with
        # SQLITE_BUSY when upgrading a read lock; readers opt out with sqlite_begin="DEFERRED".
        mode = conn.get_execution_options().get("sqlite_begin", "IMMEDIATE")
        conn.exec_driver_sql(f"BEGIN {mode}")

    return engine


def get_engine(url: str) -> Engine:
    """The process-wide engine for `url` (created on first use)."""
    with _lock:
        engine = _engines.get(url)
        if engine is None:
            engine = _engines[url] = make_engine(url)
        return engine


def init_db(settings: Settings | str) -> Engine:
    """Create or upgrade the schema to the newest migration; return the engine."""
    from alembic import command
    from alembic.config import Config

    url = settings if isinstance(settings, str) else settings.db_url
    engine = get_engine(url)
    with _lock:
        if url in _migrated:
            return engine
        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS))
        config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
        # On SQLite BEGIN IMMEDIATE (see make_engine) is the lock; PostgreSQL takes an advisory one.
        with engine.begin() as conn:
            if conn.dialect.name == "postgresql":
                conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_PG_MIGRATION_LOCK})")
            config.attributes["connection"] = conn
            command.upgrade(config, "head")
        _migrated.add(url)
    return engine


def session_factory(engine: Engine, *, readonly: bool = False) -> sessionmaker[Session]:
    """Sessions on `engine`; `readonly=True` ones do not take SQLite's write lock."""
    bind = engine.execution_options(sqlite_begin="DEFERRED") if readonly else engine
    return sessionmaker(bind=bind, expire_on_commit=False)


def _after_fork_in_child() -> None:
    # A forked child (gunicorn, prefork) must not use its parent's pooled connections.
    for engine in list(_engines.values()):
        engine.dispose(close=False)


os.register_at_fork(after_in_child=_after_fork_in_child)


def dispose_all() -> None:
    """Close every pooled connection (tests; after a fork)."""
    with _lock:
        for engine in _engines.values():
            engine.dispose()
        _engines.clear()
        _migrated.clear()
