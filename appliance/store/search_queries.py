"""Full-text search over the index that `search_index` keeps: ranked jobs, filtered like a
listing (`JobFilter`, so an owner sees only their own jobs).

Ranking, on both databases: first the jobs that hold all the words as one phrase in the
order typed ("blue house" before a job with "house ... blue"), then by relevance (SQLite's
bm25 over the weighted columns, PostgreSQL's cover density `ts_rank_cd`, which also rewards
words close together), then newest first. The query reaches SQL only as words that
`search_text` made: letters, marks and digits in quotes, never the user's own syntax.
"""

from __future__ import annotations

from dataclasses import replace

from sqlalchemy import (
    ColumnElement,
    Select,
    bindparam,
    case,
    cast,
    column,
    false,
    func,
    literal,
    literal_column,
    select,
    table,
    text,
)
from sqlalchemy.dialects.postgresql import TSQUERY

from appliance.store.base import UTCDateTime
from appliance.store.job_queries import JobFilter, _conditions
from appliance.store.search_index import BM25_WEIGHTS
from appliance.store.search_text import Clause, SearchQuery
from appliance.store.session import StoreSession
from appliance.store.tables import Job
from appliance.vocab import SUCCEEDED

_DOCS = table(
    "search_docs",
    column("id"),
    column("job_id"),
    column("owner"),
    column("created_at", UTCDateTime()),
    column("document"),
)
_FTS = table("search_fts", column("rowid"))
_FTS_ROWID = _FTS.c.rowid
_BM25 = literal_column(f"bm25(search_fts, {', '.join(str(w) for w in BM25_WEIGHTS)})")


def fts5_match(clauses: tuple[Clause, ...]) -> str:
    """An FTS5 query: `"blue house" AND "invoi" *`. Tokens never hold a quote (see
    `search_text`), so quoting them is all the escaping there is to do."""
    parts = []
    for clause in clauses:
        tokens, prefix = clause.tokens()
        parts.append(f'"{" ".join(tokens)}"' + (" *" if prefix else ""))
    return " AND ".join(parts)


def tsquery(clauses: tuple[Clause, ...]) -> str:
    """A tsquery literal: `'blue' <-> 'house' & 'invoi':*`."""
    parts = []
    for clause in clauses:
        tokens, prefix = clause.tokens()
        quoted = [f"'{t}'" for t in tokens]
        if prefix:
            quoted[-1] += ":*"
        parts.append(" <-> ".join(quoted))
    return " & ".join(f"({p})" if len(clauses) > 1 else p for p in parts)


def _filters(where: JobFilter) -> tuple[list[ColumnElement[bool]], list[ColumnElement[bool]]]:
    """(conditions on search_docs, conditions that need the jobs table joined)."""
    docs: list[ColumnElement[bool]] = []
    if where.owner:
        docs.append(_DOCS.c.owner == where.owner)
    if where.since:
        docs.append(_DOCS.c.created_at >= where.since)
    if where.until:
        docs.append(_DOCS.c.created_at < where.until)
    # Only succeeded jobs have documents: a state filter leaves them all or none.
    if where.states and SUCCEEDED not in where.states:
        docs.append(false())
    rest = replace(where, states=(), owner=None, since=None, until=None)
    return docs, _conditions(rest)


class SearchQueries(StoreSession):
    def search_jobs(
        self, query: SearchQuery, where: JobFilter, *, offset: int = 0, limit: int = 50
    ) -> list[tuple[Job, float]]:
        """Matching jobs, best first, as (job, score: larger is better) for one page."""
        phrase = query.phrase()
        if self.engine.dialect.name == "sqlite":
            stmt = self._sqlite(query, phrase)
        else:
            stmt = self._postgres(query, phrase)
        on_docs, on_jobs = _filters(where)
        stmt = stmt.where(*on_docs)
        if on_jobs:  # task, source, batch: only then is each match's job row read
            stmt = stmt.join(Job, Job.id == _DOCS.c.job_id).where(*on_jobs)
        stmt = stmt.order_by(
            literal_column("tier").desc(),
            literal_column("score").desc(),
            _DOCS.c.created_at.desc(),
            _DOCS.c.job_id.desc(),
        )
        with self.read() as session:
            # Rank on ids and scores only, then load the page's rows.
            ranked = [
                (job_id, float(score))
                for job_id, score, _ in session.execute(stmt.offset(offset).limit(limit))
            ]
            page = [i for i, _ in ranked]
            rows = {job.id: job for job in session.scalars(select(Job).where(Job.id.in_(page)))}
        return [(rows[i], score) for i, score in ranked if i in rows]

    @staticmethod
    def _sqlite(query: SearchQuery, phrase: Clause | None) -> Select[tuple[str, float, int]]:
        tier: ColumnElement[int] = literal(0)
        if phrase is not None:
            first = text("SELECT rowid FROM search_fts WHERE search_fts MATCH :phrase")
            first = first.bindparams(phrase=fts5_match((phrase,)))
            tier = case((_FTS_ROWID.in_(first), 1), else_=0)
        match = text("search_fts MATCH :match").bindparams(match=fts5_match(query.clauses))
        # score is -bm25: bm25 is more negative for better matches.
        return (
            select(_DOCS.c.job_id, (-_BM25).label("score"), tier.label("tier"))
            .select_from(_FTS)
            .join(_DOCS, _DOCS.c.id == _FTS_ROWID)
            .where(match)
        )

    @staticmethod
    def _postgres(query: SearchQuery, phrase: Clause | None) -> Select[tuple[str, float, int]]:
        wanted = cast(bindparam("match", tsquery(query.clauses)), TSQUERY)
        document = _DOCS.c.document
        tier: ColumnElement[int] = literal(0)
        if phrase is not None:
            first = cast(bindparam("phrase", tsquery((phrase,))), TSQUERY)
            tier = case((document.op("@@")(first), 1), else_=0)
        # Normalization 1: divide by 1 + log(length), so a long OCR text does not win on bulk.
        score = func.ts_rank_cd(document, wanted, 1)
        return (
            select(_DOCS.c.job_id, score.label("score"), tier.label("tier"))
            .select_from(_DOCS)
            .where(document.op("@@")(wanted))
        )
