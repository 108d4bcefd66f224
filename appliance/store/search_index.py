"""The full-text index of succeeded jobs: its tables, and its writes inside the store's
transactions.

One document per succeeded job, made of its file name, result text, summary and extracted
fields (`search_text.index_tokens` cuts them into words first, see there). `search_docs`
holds one row per document with the job's owner and creation time, so that ranking, the
owner filter and newest-first ties never read the large jobs rows of every match.

- SQLite: `search_fts`, an FTS5 table (bm25 ranking) whose rowid is `search_docs.id`, and
  `search_docs` (job id <-> rowid: a jobs rowid is not stable across VACUUM, its key is a
  string). The `unicode61` tokenizer with marks as word characters (`categories 'L* N* Co
  M*'`) only re-splits our own words; without the marks it would cut Hindi and Thai words
  apart at every vowel sign.
- PostgreSQL: `search_docs.document`, a `tsvector` with a GIN index. It is built from a literal
  (`'word':position`), not by `to_tsvector`, so no parser or dictionary second-guesses the
  words; that is the 'simple' configuration's honest behaviour (no stemming: one language's
  stemmer would mangle the seven others on a box that reads all eight), and the same words
  as SQLite's. Position weights rank the file name (A) and the fields and summary (B) above
  the text (D).

Every write that changes what a job's document holds updates it in the same transaction:
`succeed` (and so a re-run's new result), a summary written, `retry` (cleared) and the
retention purge (forgotten). These tables are not SQLAlchemy models (FTS5 is a virtual table;
Alembic cannot compare it): the 0006 migration makes them and `include_name` hides them from
autogenerate.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import Connection, bindparam, select, text

from appliance.store.base import UTCDateTime
from appliance.store.search_text import index_tokens
from appliance.store.tables import Job
from appliance.vocab import SUCCEEDED

PREFIX = "search_"
# bm25 weights of the FTS columns, in order (SQLite); weights of the same fields (PostgreSQL).
COLUMNS = ("filename", "body", "summary", "fields")
BM25_WEIGHTS = (4.0, 1.0, 1.5, 2.0)
_PG_WEIGHTS = ("A", "", "B", "B")  # tsvector weight letters; "" is D, the default
# A job's text beyond this is not indexed (PostgreSQL's tsvector stops at 1 MB).
MAX_FIELD_CHARS = 200_000
_PG_MAX_POS = 16383  # tsvector positions above are clamped by PostgreSQL
_PG_MAX_POSITIONS = 256  # PostgreSQL keeps this many positions per word


def include_name(name: str | None, type_: str, parent_names: Any) -> bool:
    """Alembic's filter: the index tables are made by hand, not from the models."""
    return not (type_ == "table" and name is not None and name.startswith(PREFIX))


def fields_text(result: dict[str, Any] | None) -> str:
    """Extracted fields and labels ("number A-1 total 42"): each page's parsed `data`."""
    out: list[str] = []

    def walk(value: Any) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                out.append(str(key))
                walk(item)
        elif isinstance(value, list):
            for item in value:
                walk(item)
        elif value is not None:
            out.append(str(value))

    for page in (result or {}).get("pages") or []:
        if isinstance(page, dict):
            walk(page.get("data"))
    return " ".join(out)


def _fields(job: dict[str, Any]) -> tuple[str, str, str, str]:
    return (
        job.get("filename") or "",
        (job.get("result_text") or "")[:MAX_FIELD_CHARS],
        (job.get("summary") or "")[:MAX_FIELD_CHARS],
        fields_text(job.get("result"))[:MAX_FIELD_CHARS],
    )


def sqlite_row(job: dict[str, Any]) -> dict[str, str]:
    """The FTS5 columns: the words, space-separated."""
    return {c: " ".join(index_tokens(v)) for c, v in zip(COLUMNS, _fields(job), strict=True)}


def tsvector_literal(job: dict[str, Any]) -> str:
    """`'word':1A,7A 'other':2` for PostgreSQL. Words hold only letters, marks and digits, so
    they need no escaping; fields are 2 positions apart so no phrase spans two of them."""
    positions: dict[str, list[str]] = {}
    pos = 1
    for value, weight in zip(_fields(job), _PG_WEIGHTS, strict=True):
        for token in index_tokens(value):
            seen = positions.setdefault(token, [])
            if len(seen) < _PG_MAX_POSITIONS:
                seen.append(f"{min(pos, _PG_MAX_POS)}{weight}")
            pos += 1
        pos += 1
    return " ".join(f"'{token}':{','.join(p)}" for token, p in positions.items())


# -- writes, on the caller's transaction ----------------------------------------------------

_CREATED = bindparam("created_at", type_=UTCDateTime())
_SQLITE_KEY = text(
    "INSERT INTO search_docs (job_id, owner, created_at) VALUES (:job_id, :owner, :created_at) "
    "ON CONFLICT (job_id) DO UPDATE SET owner = excluded.owner, created_at = excluded.created_at "
    "RETURNING id"
).bindparams(_CREATED)
# FTS5 takes OR REPLACE on its rowid: a re-run's document replaces the old one.
_SQLITE_PUT = text(
    "INSERT OR REPLACE INTO search_fts (rowid, filename, body, summary, fields) "
    "VALUES (:rowid, :filename, :body, :summary, :fields)"
)
_SQLITE_DROP = [
    text(
        "DELETE FROM search_fts WHERE rowid IN (SELECT id FROM search_docs WHERE job_id IN :ids)"
    ).bindparams(bindparam("ids", expanding=True)),
    text("DELETE FROM search_docs WHERE job_id IN :ids").bindparams(
        bindparam("ids", expanding=True)
    ),
]
_PG_PUT = text(
    "INSERT INTO search_docs (job_id, owner, created_at, document) "
    "VALUES (:job_id, :owner, :created_at, CAST(:document AS tsvector)) "
    "ON CONFLICT (job_id) DO UPDATE SET owner = excluded.owner, "
    "created_at = excluded.created_at, document = excluded.document"
).bindparams(_CREATED)
_PG_DROP = [
    text("DELETE FROM search_docs WHERE job_id IN :ids").bindparams(
        bindparam("ids", expanding=True)
    )
]


def put(conn: Connection, jobs: Sequence[dict[str, Any]]) -> None:
    """Index (or re-index) these jobs: dicts with id, owner, created_at, filename,
    result_text, summary, result."""
    if not jobs:
        return
    keys = [{"job_id": j["id"], "owner": j["owner"], "created_at": j["created_at"]} for j in jobs]
    if conn.dialect.name == "sqlite":
        rows = []
        for job, key in zip(jobs, keys, strict=True):
            rowid = conn.execute(_SQLITE_KEY, key).scalar_one()
            rows.append({"rowid": rowid, **sqlite_row(job)})
        conn.execute(_SQLITE_PUT, rows)
    else:
        docs = [{**key, "document": tsvector_literal(j)} for j, key in zip(jobs, keys, strict=True)]
        conn.execute(_PG_PUT, docs)


def drop(conn: Connection, job_ids: Iterable[str]) -> None:
    """Forget these jobs (retried, purged); unknown ids are fine."""
    ids = list(job_ids)
    for start in range(0, len(ids), 500):
        for stmt in _SQLITE_DROP if conn.dialect.name == "sqlite" else _PG_DROP:
            conn.execute(stmt, {"ids": ids[start : start + 500]})


_DOC_COLUMNS = (
    Job.id,
    Job.owner,
    Job.created_at,
    Job.filename,
    Job.result_text,
    Job.summary,
    Job.result,
)


def refresh(conn: Connection, job_ids: Sequence[str]) -> None:
    """Make these jobs' documents match their rows: indexed while succeeded and not purged."""
    rows = conn.execute(select(*_DOC_COLUMNS, Job.state, Job.input_purged_at).where(
        Job.id.in_(job_ids)
    )).all()  # fmt: skip
    keep = [r for r in rows if r.state == SUCCEEDED and r.input_purged_at is None]
    drop(conn, [r.id for r in rows if r not in keep])
    put(conn, [r._asdict() for r in keep])


def reindex_all(conn: Connection, chunk: int = 1000) -> int:
    """Rebuild every document (the 0006 migration back-fills with it); returns how many."""
    drop_all(conn)
    done, last = 0, ""
    while True:
        rows = conn.execute(
            select(*_DOC_COLUMNS)
            .where(Job.state == SUCCEEDED, Job.input_purged_at.is_(None), Job.id > last)
            .order_by(Job.id)
            .limit(chunk)
        ).all()
        if not rows:
            return done
        put(conn, [r._asdict() for r in rows])
        done += len(rows)
        last = rows[-1].id


def drop_all(conn: Connection) -> None:
    if conn.dialect.name == "sqlite":
        conn.execute(text("DELETE FROM search_fts"))
    conn.execute(text("DELETE FROM search_docs"))
