"""Full-text search for `JobService`: ranked jobs with a highlighted snippet each.

    page = service.search('"blue house" invoi*', owner="ana")
    page.items[0].job.id, page.items[0].snippet.html()

The store ranks (see `appliance.store.search_queries`); this module pages and cuts snippets.
Highlights come from the same tokenizer the index uses, so what is marked is what matched.
"""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from appliance.errors import InvalidRequest
from appliance.jobs.views import JobInfo
from appliance.store.job_queries import JobFilter
from appliance.store.search_highlight import locate, match_spans
from appliance.store.search_text import SearchQuery, parse_query

if TYPE_CHECKING:
    from appliance.store.repo import JobStore

SNIPPET_CHARS = 200
# Deeper pages cost a ranking of everything before them: narrow the search instead.
MAX_OFFSET = 10_000
# Snippets look for matches in this much of a field (OCR of a long PDF can be large).
_SCAN_CHARS = 50_000


@dataclass(frozen=True)
class Snippet:
    """A piece of one field of the job; `highlights` are [start, end) spans of `text`."""

    text: str
    highlights: tuple[tuple[int, int], ...]
    field: str  # text | summary | filename

    def html(self) -> str:
        """The snippet HTML-escaped, matches in <mark>."""
        out, last = [], 0
        for start, end in self.highlights:
            out.append(html.escape(self.text[last:start]))
            out.append(f"<mark>{html.escape(self.text[start:end])}</mark>")
            last = end
        out.append(html.escape(self.text[last:]))
        return "".join(out)


@dataclass(frozen=True)
class SearchHit:
    job: JobInfo
    score: float  # larger is better; comparable within one search only
    snippet: Snippet

    def to_dict(self) -> dict[str, Any]:
        return {
            "job": self.job.to_dict(),
            "score": self.score,
            "snippet": self.snippet.text,
            "snippet_html": self.snippet.html(),
            "highlights": [list(span) for span in self.snippet.highlights],
            "field": self.snippet.field,
        }


@dataclass(frozen=True)
class SearchPage:
    items: list[SearchHit]
    next_cursor: str | None  # pass as `cursor=` for the next page


def make_snippet(job: JobInfo, query: SearchQuery) -> Snippet:
    """Around the first match in the result text, else the summary, else the file name."""
    for name, value in (("text", job.result_text), ("summary", job.summary), ("filename", job.filename)):  # fmt: skip
        flat = " ".join((value or "")[:_SCAN_CHARS].split())
        # Mark only around the first hit when it can be found cheaply: a long OCR text
        # tokenized whole for every hit of a page would cost more than the query.
        at = locate(flat, query)
        if at >= 0:
            start = max(0, at - SNIPPET_CHARS)
            near = match_spans(flat[start : at + SNIPPET_CHARS * 2], query)
            if near:
                return _window(flat, [(a + start, b + start) for a, b in near], name)
        spans = match_spans(flat, query)
        if spans:
            return _window(flat, spans, name)
    flat = " ".join((job.result_text or "")[: SNIPPET_CHARS * 2].split())
    return _window(flat, [], "text")


def _window(text: str, spans: list[tuple[int, int]], name: str) -> Snippet:
    start = max(0, spans[0][0] - SNIPPET_CHARS // 3) if spans else 0
    if start:  # begin at a word
        space = text.find(" ", start, spans[0][0])
        start = space + 1 if space >= 0 else start
    end = min(len(text), max(start + SNIPPET_CHARS, spans[0][1] if spans else 0))
    if end < len(text):
        space = text.rfind(" ", spans[0][1] if spans else start, end)
        end = space if space > 0 else end
    prefix = "…" if start else ""
    shift = len(prefix) - start
    marks = tuple(
        (max(s, start) + shift, min(e, end) + shift) for s, e in spans if s < end and e > start
    )
    return Snippet(prefix + text[start:end] + ("…" if end < len(text) else ""), marks, name)


def _offset(cursor: str | None) -> int:
    if not cursor:
        return 0
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        if raw.startswith("s:") and raw[2:].isdigit():
            return min(int(raw[2:]), MAX_OFFSET)
    except (ValueError, UnicodeDecodeError):
        pass
    raise InvalidRequest("invalid cursor")


def _cursor(offset: int) -> str:
    return base64.urlsafe_b64encode(f"s:{offset}".encode()).decode().rstrip("=")


class Searching:
    """Mixed into `JobService`, which provides the store."""

    store: JobStore

    def search(
        self,
        q: str,
        *,
        owner: str | None = None,
        state: str | None = None,
        task: str | None = None,
        source: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        cursor: str | None = None,
        limit: int = 20,
    ) -> SearchPage:
        """Succeeded jobs whose result text, summary, extracted fields or file name match `q`,
        best first. `q`: words that must all occur (case and accents ignored), `prefix*`,
        `"exact phrase"`; a malformed one raises InvalidRequest. `owner`: only that user's
        jobs. Other filters as in `list` (only succeeded jobs are indexed, so a `state` other
        than succeeded finds nothing); follow `next_cursor` for the next page."""
        query = parse_query(q)
        limit = max(1, min(int(limit), 200))
        offset = _offset(cursor)
        where = JobFilter(
            states=(state,) if state else (),
            owner=owner,
            task=task,
            source=source,
            since=_utc(since),
            until=_utc(until),
        )
        rows = self.store.search_jobs(query, where, offset=offset, limit=limit + 1)
        more = len(rows) > limit and offset + limit < MAX_OFFSET
        hits = []
        for row, score in rows[:limit]:
            job = JobInfo.from_row(row)
            hits.append(SearchHit(job, score, make_snippet(job, query)))
        return SearchPage(hits, _cursor(offset + limit) if more else None)


def _utc(value: datetime | None) -> datetime | None:
    return value.replace(tzinfo=UTC) if value is not None and value.tzinfo is None else value
