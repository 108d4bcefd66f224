"""/api/v1/search: full-text search over job results, ranked, with highlighted snippets."""

from __future__ import annotations

from typing import Any

import marshmallow as ma
from flask.views import MethodView

from appliance.errors import InvalidRequest
from appliance.schema import TASKS
from appliance.vocab import SOURCES
from web.api import Blueprint
from web.api.jobs import JobSchema
from web.api.jobview import to_dict
from web.problems import Problem
from web.services import services

blp = Blueprint(
    "search",
    __name__,
    url_prefix="/api/v1/search",
    description="Full-text search over results, summaries, extracted fields and file names",
)


class SearchQuerySchema(ma.Schema):
    q = ma.fields.String(
        required=True,
        validate=ma.validate.Length(min=1, max=500),
        metadata={
            "description": "Words that must all occur (case and accents ignored), `prefix*`, "
            '`"exact phrase"`; e.g. `"blue house" invoi*`'
        },
    )
    task = ma.fields.String(load_default=None, validate=ma.validate.OneOf(TASKS))
    source = ma.fields.String(load_default=None, validate=ma.validate.OneOf(SOURCES))
    since = ma.fields.AwareDateTime(
        load_default=None, metadata={"description": "created at or after"}
    )
    until = ma.fields.AwareDateTime(load_default=None, metadata={"description": "created before"})
    limit = ma.fields.Integer(load_default=20, validate=ma.validate.Range(1, 200))
    cursor = ma.fields.String(load_default=None, validate=ma.validate.Length(max=200))


class SearchHitSchema(ma.Schema):
    job = ma.fields.Nested(JobSchema)
    score = ma.fields.Float(metadata={"description": "larger is better, within one search"})
    snippet = ma.fields.String(metadata={"description": "a piece of the matching field"})
    snippet_html = ma.fields.String(
        metadata={"description": "the snippet HTML-escaped, matches in <mark>"}
    )
    highlights = ma.fields.List(
        ma.fields.List(ma.fields.Integer()),
        metadata={"description": "[start, end) character spans of the matches in `snippet`"},
    )
    field = ma.fields.String(
        metadata={"enum": ["text", "summary", "filename"], "description": "what `snippet` is of"}
    )


class SearchPageSchema(ma.Schema):
    items = ma.fields.List(ma.fields.Nested(SearchHitSchema))
    next_cursor = ma.fields.String(allow_none=True)


@blp.route("")
class Search(MethodView):
    @blp.arguments(SearchQuerySchema, location="query")
    @blp.response(200, SearchPageSchema)
    @blp.alt_response(400, response="BAD_REQUEST")
    def get(self, query: dict[str, Any]) -> dict[str, Any]:
        """Succeeded jobs matching `q`, best first: jobs holding the words as one phrase, then
        by relevance. Sees the jobs the listing sees. A query that cannot be searched (an
        unbalanced quote, a lone `*`, only punctuation) or a bad cursor is a 400 problem."""
        try:
            page = services().jobs.search(
                query["q"],
                task=query["task"],
                source=query["source"],
                since=query["since"],
                until=query["until"],
                limit=query["limit"],
                cursor=query["cursor"],
            )
        except InvalidRequest as exc:  # the query's syntax, not a field's type: 400, not 422
            raise Problem(400, str(exc)) from exc
        items = []
        for hit in page.items:
            item = hit.to_dict()
            item["job"] = to_dict(hit.job)  # without the server-side fields
            items.append(item)
        return {"items": items, "next_cursor": page.next_cursor}
