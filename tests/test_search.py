"""Full-text search in the store, on SQLite and PostgreSQL: the index kept with the result,
ranking, visibility, forgetting, the eight languages, the query syntax (web: test_search_web)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from alembic import command
from alembic.config import Config
from sqlalchemy import inspect, text, update

from appliance.errors import InvalidRequest
from appliance.jobs.search import Searching, SearchPage, Snippet, make_snippet
from appliance.store import init_db
from appliance.store.db import MIGRATIONS, get_engine
from appliance.store.repo import JobStore
from appliance.store.search_highlight import match_spans
from appliance.store.search_text import index_tokens, parse_query
from appliance.store.tables import Job
from appliance.vocab import FAILED
from tests.test_store import new_job


@pytest.fixture
def store(store_url: str) -> JobStore:
    return JobStore(init_db(store_url))


def searcher(store: JobStore) -> Searching:
    service = Searching()
    service.store = store
    return service


def finished(store: JobStore, text: str, *, owner: str = "ana", **fields: Any) -> str:
    """A job run to success through the store, as a worker does."""
    job, _ = store.create_job(new_job(owner=owner, **fields))
    assert store.claim(job.id, worker="gpu0@h", device="cpu", claim="c1") is not None
    result = {"task": "ocr", "model": "m", "pages": [{"page": 1, "text": text, "data": None}]}
    assert store.succeed(
        job.id, "c1", result=result, text=text, timings={}, pages=1, summary_state=None
    )
    return job.id


def ids(page: SearchPage) -> list[str]:
    return [hit.job.id for hit in page.items]


# -- the store, both databases ---------------------------------------------------------------


def test_finds_a_job_by_a_word_of_its_ocr_text(store: JobStore) -> None:
    hit = finished(store, "RECHNUNG Nr. 4711\nGesamtbetrag: 1.234,50 EUR\nMüller GmbH, Köln")
    finished(store, "A yellow forklift in the yard")
    search = searcher(store)
    for q in ("gesamtbetrag", "MULLER", "koln", "4711", "eur"):
        assert ids(search.search(q)) == [hit], q
    assert ids(search.search("forklift rechnung")) == []  # every word must match
    snippet = search.search("müller").items[0].snippet
    assert snippet.field == "text" and "<mark>Müller</mark>" in snippet.html()


def test_a_phrase_in_order_ranks_above_scattered_words(store: JobStore) -> None:
    # Both words more often and in a shorter text: without the phrase rule this one wins.
    scattered = finished(store, "House painted blue; blue door, house 7, blue roof, house")
    phrase = finished(store, "On the left a red car, and behind it a small blue house with a fence")
    search = searcher(store)
    assert ids(search.search("blue house")) == [phrase, scattered]
    assert ids(search.search('"blue house"')) == [phrase]
    assert ids(search.search('"painted blue"')) == [scattered]


def test_prefix_queries(store: JobStore) -> None:
    invoice = finished(store, "Invoice INV-2024-0042 due in 30 days")
    envelope = finished(store, "An envelope on a desk")
    search = searcher(store)
    assert ids(search.search("invoi*")) == [invoice]
    assert ids(search.search('"inv 2024 00*"')) == [invoice]
    assert ids(search.search("envel* desk")) == [envelope]
    assert ids(search.search("in*")) == [invoice]  # "in" of "due in 30" too, one job
    assert "<mark>Invoice</mark>" in search.search("invo*").items[0].snippet.html()


def test_thai_and_hindi_are_indexed_and_found(store: JobStore) -> None:
    thai = finished(store, "ใบแจ้งหนี้เลขที่ 42 ภาษาไทยเป็นภาษาที่สวยงาม ครับ")
    hindi = finished(store, "यह चालान हिन्दी में लिखा गया है, कुल राशि ₹500")
    mixed = finished(store, "Invoice 東京都 chalan")
    search = searcher(store)
    assert ids(search.search("ภาษาที่")) == [thai]  # a word inside a run without spaces
    assert ids(search.search("แจ้งหนี้")) == [thai]
    assert ids(search.search("ครับ")) == [thai]
    assert ids(search.search("हिन्दी")) == [hindi]
    assert ids(search.search('"लिखा गया"')) == [hindi]
    assert ids(search.search("चाल*")) == [hindi]
    assert ids(search.search("東京")) == [mixed]
    assert ids(search.search("ภาษาอังกฤษ")) == []
    html = search.search("ภาษาที่").items[0].snippet.html()
    assert "<mark>ภาษาที่</mark>" in html


def test_never_shows_another_users_job(store: JobStore) -> None:
    mine = finished(store, "quarterly report with a pie chart", owner="ana")
    finished(store, "quarterly report with a bar chart", owner="bob")
    search = searcher(store)
    assert ids(search.search("quarterly report", owner="ana")) == [mine]
    assert len(search.search("quarterly report").items) == 2  # no owner: an admin's view


def test_purged_jobs_are_forgotten(store: JobStore) -> None:
    old = finished(store, "delivery note for pallets")
    kept = finished(store, "delivery note for boxes")
    store.mark_purged([old])
    assert ids(searcher(store).search("delivery note")) == [kept]


def test_retry_clears_and_a_rerun_replaces_the_document(store: JobStore) -> None:
    job_id = finished(store, "first result about tractors")
    with store.write() as session:  # as an operator would: mark it failed behind our back
        session.execute(update(Job).where(Job.id == job_id).values(state=FAILED))
    search = searcher(store)
    assert ids(search.search("tractors")) == [job_id]  # a raw UPDATE does not touch the index
    store.retry(job_id)
    assert ids(search.search("tractors")) == []
    assert store.claim(job_id, worker="gpu1@h", device="cpu", claim="c2") is not None
    result = {"task": "ocr", "model": "m", "pages": [{"page": 1, "text": "x", "data": None}]}
    store.succeed(
        job_id, "c2", result=result, text="second about combines", timings={}, pages=1,
        summary_state=None,
    )  # fmt: skip
    assert ids(search.search("combines")) == [job_id] and ids(search.search("tractors")) == []


def test_summaries_fields_and_file_names_are_searchable(store: JobStore) -> None:
    job, _ = store.create_job(new_job(filename="scan_lieferschein.pdf", owner="ana"))
    store.claim(job.id, worker="gpu0@h", device="cpu", claim="c1")
    data = {"supplier": "Acme Widgets", "total": "99.50"}
    result = {"task": "extract", "model": "m", "pages": [{"page": 1, "text": "{}", "data": data}]}
    store.succeed(
        job.id, "c1", result=result, text="{}", timings={}, pages=1, summary_state="pending"
    )
    store.summary_done(job.id, "Ein Lieferschein über zwölf Kartons")
    search = searcher(store)
    for q in ("lieferschein", "zwolf kartons", "widgets", "acme", "99"):
        assert ids(search.search(q)) == [job.id], q
    assert search.search("lieferschein").items[0].snippet.field == "summary"


def test_pages_of_results(store: JobStore) -> None:
    made = {finished(store, f"pallet number {i}") for i in range(5)}
    search = searcher(store)
    first = search.search("pallet", limit=2)
    second = search.search("pallet", limit=2, cursor=first.next_cursor)
    third = search.search("pallet", limit=2, cursor=second.next_cursor)
    assert third.next_cursor is None
    assert set(ids(first) + ids(second) + ids(third)) == made
    with pytest.raises(InvalidRequest):
        search.search("pallet", cursor="bogus!")


@pytest.mark.parametrize(
    "q", ['"unbalanced', "*", "fo*o", "%%%", "", "   ", "x*", "a " * 300, '"*"']
)
def test_malformed_queries_are_invalid_requests(store: JobStore, q: str) -> None:
    finished(store, "anything")
    with pytest.raises(InvalidRequest):
        searcher(store).search(q)


def test_migration_backfills_jobs_that_already_succeeded(store_url: str) -> None:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option("sqlalchemy.url", store_url)
    engine = get_engine(store_url)
    with engine.begin() as conn:
        config.attributes["connection"] = conn
        command.upgrade(config, "0005_webhooks")
    store = JobStore(engine)
    store.index_results = False  # the jobs of a box from before search
    # Today's code writes columns that later migrations add (0008's `safety`): lend it that
    # column while it writes the old job, so the rows are those of a box from before search.
    with engine.begin() as conn:
        conn.execute(text("ALTER TABLE jobs ADD COLUMN safety JSON"))
    before = finished(store, "an old result about harvesters")
    with engine.begin() as conn:
        conn.execute(text("ALTER TABLE jobs DROP COLUMN safety"))
    with engine.begin() as conn:
        config.attributes["connection"] = conn
        command.upgrade(config, "head")
    assert ids(searcher(JobStore(engine)).search("harvesters")) == [before]
    with engine.begin() as conn:  # and down again, cleanly
        config.attributes["connection"] = conn
        command.downgrade(config, "0005_webhooks")
        left = inspect(conn).get_table_names()
    assert "jobs" in left and not [name for name in left if name.startswith("search_")]


# -- pure pieces -------------------------------------------------------------------------------


def test_tokens_fold_case_and_accents_but_keep_indic_and_thai_marks() -> None:
    assert index_tokens("Größe CAFÉ naïve") == ["grosse", "cafe", "naive"]
    assert index_tokens("हिन्दी में") == ["हिन्दी", "में"]
    assert index_tokens("ครับ") == ["ครั", "รับ", "ับ", "บ"]


def test_snippets_are_escaped_and_marked() -> None:
    query = parse_query("total")
    text = "<script>alert(1)</script> " + "filler " * 40 + "the TOTAL is <b>42</b> " + "x " * 200
    spans = match_spans(text, query)
    assert [text[a:b] for a, b in spans] == ["TOTAL"]
    job = SimpleNamespace(result_text=text, summary=None, filename="a.png")
    snippet = make_snippet(job, query)  # type: ignore[arg-type]
    html = snippet.html()
    assert "<mark>TOTAL</mark>" in html and "&lt;b&gt;42&lt;/b&gt;" in html
    assert "<script>" not in html and snippet.text.startswith("…")
    assert Snippet("a<b", ((0, 1),), "text").html() == "<mark>a</mark>&lt;b"
