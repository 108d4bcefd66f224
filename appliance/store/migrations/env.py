"""Alembic environment: the connection comes from `init_db`, or from the settings' URL."""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection

from appliance.store import all_metadata
from appliance.store.search_index import include_name

config = context.config


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=all_metadata(),
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
        # The full-text index's tables are hand-made (an FTS5 virtual table has no model).
        include_name=include_name,
    )
    with context.begin_transaction():
        context.run_migrations()


connection = config.attributes.get("connection")
if connection is not None:
    _run(connection)
else:  # the alembic command line
    from appliance.settings import load_settings
    from appliance.store.db import make_engine

    url = config.get_main_option("sqlalchemy.url") or load_settings().db_url
    with make_engine(url).connect() as conn:
        _run(conn)
        conn.commit()
