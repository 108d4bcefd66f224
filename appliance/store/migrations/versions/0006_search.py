"""full-text search index over succeeded jobs (FTS5 on SQLite, tsvector + GIN on PostgreSQL)

Revision ID: 0006_search
Revises: 0005_webhooks
Create Date: 2026-12-02

The index tables are written out here (frozen, like any migration); what goes into them is
`appliance.store.search_index`, whose `reindex_all` back-fills the jobs that already succeeded.
"""

from __future__ import annotations

from alembic import op

revision = "0006_search"
down_revision = "0005_webhooks"
branch_labels = None
depends_on = None

# search_docs repeats the job's owner and creation time: ranking and the owner filter then
# never read the (large) jobs rows of every match, only the page's.
_SQLITE = [
    "CREATE TABLE search_docs ("
    " id INTEGER PRIMARY KEY,"
    " job_id VARCHAR(36) NOT NULL UNIQUE REFERENCES jobs (id) ON DELETE CASCADE,"
    " owner VARCHAR(255),"
    " created_at DATETIME NOT NULL)",
    # Words come pre-cut and folded (search_text); marks are word characters so that the
    # tokenizer does not split Hindi and Thai at their vowel signs.
    "CREATE VIRTUAL TABLE search_fts USING fts5("
    " filename, body, summary, fields,"
    " tokenize = \"unicode61 remove_diacritics 0 categories 'L* N* Co M*'\")",
]
_POSTGRES = [
    "CREATE TABLE search_docs ("
    " job_id VARCHAR(36) PRIMARY KEY REFERENCES jobs (id) ON DELETE CASCADE,"
    " owner VARCHAR(255),"
    " created_at TIMESTAMP WITHOUT TIME ZONE NOT NULL,"
    " document TSVECTOR NOT NULL)",
    "CREATE INDEX ix_search_docs_document ON search_docs USING GIN (document)",
    "CREATE INDEX ix_search_docs_owner ON search_docs (owner)",
]


def upgrade() -> None:
    from appliance.store.search_index import reindex_all

    bind = op.get_bind()
    sqlite = bind.dialect.name == "sqlite"
    for statement in _SQLITE if sqlite else _POSTGRES:
        try:
            op.execute(statement)
        except Exception as exc:
            if sqlite and "fts5" in str(exc):
                raise RuntimeError(
                    "this Python's SQLite lacks FTS5, which search needs; use a Python built "
                    "with it (Debian's is) or PostgreSQL"
                ) from exc
            raise
    reindex_all(bind)


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        op.execute("DROP TABLE search_fts")
    op.execute("DROP TABLE search_docs")
