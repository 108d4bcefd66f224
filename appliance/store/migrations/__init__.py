"""Alembic migrations of the job store, applied by `appliance.store.init_db`.

Adding a table (e.g. API tokens): define the model on `appliance.store.base.Base` in its own
module under `appliance/store/`, then add `versions/NNNN_<what>.py` with
`down_revision` = the current head's `revision` (one linear chain). To let Alembic draft it:

    alembic -c appliance/store/alembic.ini revision --autogenerate -m "api tokens"

(the URL comes from `APPLIANCE_DATABASE_URL` / the settings file). Migrations must work on
SQLite and PostgreSQL: use `op.batch_alter_table` to alter existing SQLite tables.
"""
