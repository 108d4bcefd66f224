"""Full-text search: query latency over 100,000 stored results, and what indexing costs a write.

    python bench/search.py [--docs 100000] [--queries 300] [--ingest 1000] [--pg URL | --no-pg]

1. A corpus of succeeded jobs in the eight languages (English-heavy, as on a real box): OCR
   pages, captions, descriptions, extracted fields, some summaries; words drawn from a Zipf
   distribution over a real core vocabulary plus a long tail of made-up words, numbers and
   invoice ids, so some words are in half the jobs and most in a handful. Bulk-inserted, with
   the search documents built by the store's own `search_index.put`.
2. Queries through `JobService.search` (ranking, the page of 20, snippets): a common word, a
   rare word, two words, a phrase lifted from a stored text, a prefix, a Hindi word, a Thai
   substring; half of them as a panel user who sees only their own jobs. p50/p99 over all.
3. Ingest: `JobStore.succeed` one job at a time on the loaded store, alternating blocks with
   the index on and off (`index_results`), so both see the same load.

SQLite in a temporary directory; PostgreSQL in a throwaway database on `--pg` (default: the
local server, skipped when none answers). The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
import statistics
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from sqlalchemy import insert, text  # noqa: E402

from appliance.jobs.search import Searching  # noqa: E402
from appliance.store import init_db, search_index  # noqa: E402
from appliance.store.repo import JobStore  # noqa: E402
from appliance.store.tables import Job  # noqa: E402
from appliance.vocab import QUEUED, SUCCEEDED  # noqa: E402

# The common words of each language, most frequent first (split at use).
CORE = {
    "en": "the of and to in invoice total amount due date customer order number page "
    "delivery note paid tax net gross item quantity price account bank report patient "
    "blood pressure sample result shelf box pallet forklift warehouse red blue house car "
    "street sign label serial model signature address phone email received shipped",
    "de": "der die und rechnung betrag summe datum kunde bestellung lieferschein seite "
    "bezahlt steuer netto brutto menge preis konto größe straße müller köln prüfung",
    "fr": "le la et facture montant total date client commande livraison payé taxe "
    "quantité prix compte reçu élève café société numéro adresse",
    "es": "el la y factura importe total fecha cliente pedido entrega pagado impuesto "
    "cantidad precio cuenta número dirección señal almacén",
    "it": "il la e fattura importo totale data cliente ordine consegna pagato imposta "
    "quantità prezzo conto numero indirizzo",
    "pt": "o a e fatura valor total data cliente pedido entrega pago imposto quantidade "
    "preço conta número endereço armazém",
    "hi": "यह चालान कुल राशि दिनांक ग्राहक आदेश भुगतान कर मात्रा मूल्य खाता पता संख्या "
    "रिपोर्ट रोगी नमूना परिणाम हिन्दी में लिखा गया है और के की",
    "th": "ใบแจ้งหนี้ ยอดรวม วันที่ ลูกค้า คำสั่งซื้อ ชำระแล้ว ภาษี จำนวน ราคา บัญชี "
    "ที่อยู่ เลขที่ รายงาน ผู้ป่วย ตัวอย่าง ผลลัพธ์ ภาษาไทย สวยงาม ครับ ค่ะ",
}
LANG_WEIGHTS = {"en": 40, "de": 15, "fr": 10, "es": 10, "it": 5, "pt": 5, "hi": 8, "th": 7}
SYLLABLES = {
    "hi": ["क", "का", "कि", "ना", "रा", "मा", "से", "ली", "तो", "प्र", "स्व", "न्द"],
    "th": ["กา", "นา", "มา", "ริ", "สุ", "ทอ", "ง", "ไม้", "เร", "ดี", "ปร", "ะ"],
}
LATIN = ["ka", "to", "ri", "men", "sa", "lo", "ber", "an", "tel", "ro", "vi", "qu", "é", "ü"]
PARAMS = {"extract": {"fields": ["number", "date", "total", "party"]},
          "classify": {"labels": ["invoice", "receipt", "letter", "form", "photo"]}}  # fmt: skip
TASKS = ["ocr"] * 5 + ["caption", "describe", "extract", "table", "classify"]


class Corpus:
    def __init__(self, seed: int = 7) -> None:
        self.rng = random.Random(seed)
        self.vocab: dict[str, list[str]] = {}
        self.weights: dict[str, list[float]] = {}
        for lang, line in CORE.items():
            core = line.split()
            syl = SYLLABLES.get(lang, LATIN)
            tail = {"".join(self.rng.choices(syl, k=self.rng.randint(2, 4))) for _ in range(4000)}
            words = core + sorted(tail - set(core))
            self.vocab[lang] = words
            self.weights[lang] = list(
                itertools.accumulate(1 / (rank + 1) ** 1.07 for rank in range(len(words)))
            )
        # Amounts, dates and invoice ids: a long tail of their own.
        self.numbers = [str(self.rng.randint(1, 99999)) for _ in range(20000)]
        self.numbers += [f"INV-{self.rng.randint(1000, 99999)}" for _ in range(20000)]
        self.numbers += [f"{d % 28 + 1}.{d % 12 + 1}.2026" for d in range(336)]
        self.langs = list(LANG_WEIGHTS)
        self.lang_w = list(LANG_WEIGHTS.values())

    def words(self, lang: str, n: int) -> list[str]:
        out = self.rng.choices(self.vocab[lang], cum_weights=self.weights[lang], k=n)
        out[::9] = self.rng.choices(self.numbers, k=len(out[::9]))  # OCR of documents has them
        return out

    def text(self, lang: str, task: str) -> tuple[str, dict[str, Any] | None]:
        sep = "" if lang == "th" and self.rng.random() < 0.6 else " "  # Thai runs words together
        if task == "extract":
            data = {f: " ".join(self.words(lang, 2)) for f in ("number", "date", "total", "party")}
            return json.dumps(data, ensure_ascii=False), data
        if task == "classify":
            label = self.rng.choice(["invoice", "receipt", "letter", "form", "photo"])
            return label, {"label": label}
        n = {"ocr": self.rng.randint(60, 400), "caption": 14, "describe": 45, "table": 80}[task]
        words = self.words(lang, n)
        lines = [sep.join(words[i : i + 11]) for i in range(0, n, 11)]
        return "\n".join(lines), None

    def job(self, i: int, owners: list[str], now: datetime) -> tuple[dict[str, Any], dict]:
        lang = self.rng.choices(self.langs, self.lang_w)[0]
        task = self.rng.choice(TASKS)
        body, data = self.text(lang, task)
        summary = " ".join(self.words(lang, 30)) if self.rng.random() < 0.2 else None
        result = {"task": task, "model": "bench", "summary": None,
                  "pages": [{"page": 1, "text": body, "data": data}]}  # fmt: skip
        at = now - timedelta(seconds=i * 13)
        row = {
            "id": str(uuid.UUID(int=self.rng.getrandbits(128))), "created_at": at,
            "updated_at": at, "finished_at": at, "source": "api", "priority": "bulk",
            "owner": owners[i % len(owners)], "filename": f"scan_{i:06d}.{'pdf' if i % 3 else 'jpg'}",
            "input_path": f"/data/uploads/{i}", "input_sha256": f"{i:064x}", "size_bytes": 1000,
            "task": task, "params": {"task": task, "language": lang, **PARAMS.get(task, {})},
            "compat_key": task,
            "state": SUCCEEDED, "attempts": 1, "run_alone": False, "result": result,
            "result_text": body, "summary": summary, "pages": 1,
        }  # fmt: skip
        keys = ("id", "owner", "created_at", "filename", "result_text", "summary", "result")
        return row, {key: row[key] for key in keys}


def load(store: JobStore, jobs: list[tuple[dict[str, Any], dict[str, Any]]]) -> float:
    start, chunk = time.perf_counter(), 2000
    for first in range(0, len(jobs), chunk):
        made = jobs[first : first + chunk]
        with store.engine.begin() as conn:
            conn.execute(insert(Job.__table__), [row for row, _ in made])
            search_index.put(conn, [doc for _, doc in made])
    with store.engine.connect() as conn:
        conn.execute(text("ANALYZE"))
        conn.commit()
    return time.perf_counter() - start


def queries(corpus: Corpus, store: JobStore, n: int, owners: list[str]) -> list[tuple[str, str]]:
    """(kind, query) pairs; phrases are lifted from stored texts so that they match."""
    rng, en = random.Random(11), corpus.vocab["en"]
    with store.engine.connect() as conn:
        texts = [r[0] for r in conn.execute(text(
            "SELECT result_text FROM jobs WHERE task = 'ocr' ORDER BY id LIMIT 400"))]  # fmt: skip
    pairs = [
        (a, b)
        for t in texts
        for a, b in zip(t.split(), t.split()[1:], strict=False)
        if a.isalpha() and b.isalpha()
    ]
    out = []
    for i in range(n):
        kind = ["common", "rare", "two", "phrase", "prefix", "hindi", "thai"][i % 7]
        if kind == "common":
            q = rng.choice(en[:15])
        elif kind == "rare":
            q = rng.choice(en[2000:])
        elif kind == "two":
            q = f"{rng.choice(en[10:60])} {rng.choice(en[30:300])}"
        elif kind == "phrase":
            first, second = rng.choice(pairs)
            q = f'"{first} {second}"'
        elif kind == "prefix":
            q = rng.choice([w for w in en[40:400] if len(w) > 5])[:4] + "*"
        elif kind == "hindi":
            q = rng.choice(corpus.vocab["hi"][:60])
        else:
            word = rng.choice([w for w in corpus.vocab["th"][:80] if len(w) >= 4])
            q = word[1:5] if len(word) > 5 else word  # a substring of a run
        out.append((kind, q))
    return out


def latency(store: JobStore, qs: list[tuple[str, str]], owners: list[str]) -> dict[str, Any]:
    search = Searching()
    search.store = store
    for _, q in qs[:20]:  # warm the caches, as a box that has been serving for a while
        search.search(q, limit=20)
    times: dict[str, list[float]] = {}
    for i, (kind, q) in enumerate(qs):
        owner = owners[i % len(owners)] if i % 2 else None  # a panel user / an admin or token
        start = time.perf_counter()
        search.search(q, owner=owner, limit=20)
        times.setdefault(kind, []).append((time.perf_counter() - start) * 1000)
    every = sorted(t for ts in times.values() for t in ts)
    return {
        "p50_ms": round(statistics.median(every), 2),
        "p99_ms": round(every[min(len(every) - 1, int(len(every) * 0.99))], 2),
        "p50_ms_by_kind": {k: round(statistics.median(v), 2) for k, v in times.items()},
    }


def ingest(store: JobStore, corpus: Corpus, n: int) -> dict[str, float]:
    """Succeed-writes per second with the index on and off, in alternating blocks of 50."""
    ready = []
    for i in range(n):
        row, doc = corpus.job(10_000_000 + i, ["ingest"], datetime.now(UTC))
        job = Job(**{**row, "id": str(uuid.uuid4()), "state": QUEUED, "attempts": 0,
                     "result": None, "result_text": None, "summary": None, "finished_at": None})  # fmt: skip
        store.create_job(job)
        store.claim(job.id, worker="bench@h", device="cpu", claim="c")
        ready.append((job.id, row["result"], row["result_text"]))
    spent = {True: 0.0, False: 0.0}
    done = {True: 0, False: 0}
    for block in range(0, n, 50):
        indexed = (block // 50) % 2 == 0
        store.index_results = indexed
        start = time.perf_counter()
        for job_id, result, body in ready[block : block + 50]:
            store.succeed(job_id, "c", result=result, text=body, timings={}, pages=1,
                          summary_state=None)  # fmt: skip
            done[indexed] += 1
        spent[indexed] += time.perf_counter() - start
    store.index_results = True
    return {
        "ingest_jobs_per_s_indexed": round(done[True] / spent[True], 1),
        "ingest_jobs_per_s_plain": round(done[False] / spent[False], 1),
    }


OWNERS = [f"user{i}" for i in range(20)]


def run(url: str, args: argparse.Namespace, label: str, jobs: list[Any]) -> dict[str, Any]:
    store = JobStore(init_db(url))
    corpus, owners = Corpus(), OWNERS
    loaded = load(store, jobs)
    print(f"{label}: {args.docs} jobs loaded and indexed in {loaded:.1f} s", file=sys.stderr)
    lat = latency(store, queries(corpus, store, args.queries, owners), owners)
    print(f"{label}: {lat}", file=sys.stderr)
    cost = ingest(store, corpus, args.ingest)
    print(f"{label}: {cost}", file=sys.stderr)
    return {"load_s": round(loaded, 1), **lat, **cost}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--docs", type=int, default=100_000)
    ap.add_argument("--queries", type=int, default=280)
    ap.add_argument("--ingest", type=int, default=600)
    ap.add_argument("--pg", default="postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
    ap.add_argument("--no-pg", action="store_true")
    args = ap.parse_args()
    out: dict[str, Any] = {"docs": args.docs, "queries": args.queries}
    started, now, corpus = time.perf_counter(), datetime.now(UTC), Corpus()
    jobs = [corpus.job(i, OWNERS, now) for i in range(args.docs)]  # once, for both databases
    print(
        f"corpus: {args.docs} jobs made in {time.perf_counter() - started:.1f} s", file=sys.stderr
    )
    with tempfile.TemporaryDirectory() as tmp:
        sqlite = run(f"sqlite:///{tmp}/bench.db", args, "sqlite", jobs)
        out["sqlite_db_mb"] = round(sum(p.stat().st_size for p in Path(tmp).iterdir()) / 2**20)
    out.update({f"sqlite_{k}": v for k, v in sqlite.items() if not k.startswith("ingest")})
    out.update({k: v for k, v in sqlite.items() if k.startswith("ingest")})
    if not args.no_pg:
        out.update({f"postgres_{k}": v for k, v in postgres(args, jobs).items()})
    out["bench_s"] = round(time.perf_counter() - started)
    print(json.dumps(out, ensure_ascii=False))


def postgres(args: argparse.Namespace, jobs: list[Any]) -> dict[str, Any]:
    import psycopg
    from sqlalchemy.engine import make_url

    admin = make_url(args.pg)
    dsn = admin.set(drivername="postgresql").render_as_string(hide_password=False)
    name = f"bench_search_{uuid.uuid4().hex[:8]}"
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
    except psycopg.Error as exc:
        print(f"postgres: skipped ({exc})", file=sys.stderr)
        return {}
    try:
        url = admin.set(database=name).render_as_string(hide_password=False)
        return run(url, args, "pg", jobs)
    finally:
        from appliance.store.db import dispose_all

        dispose_all()
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


if __name__ == "__main__":
    main()
