"""What a metrics scrape and the system page read, aggregated in SQL."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import (
    ColumnElement,
    and_,
    case,
    func,
    literal_column,
    select,
)

from appliance.store.session import StoreSession
from appliance.store.tables import Job
from appliance.vocab import (
    SUCCEEDED,
    TERMINAL,
)


@dataclass(frozen=True)
class JobMetrics:
    """What a metrics scrape reports from the store, read in one transaction."""

    counts: dict[tuple[str, str], int]  # (state, source) -> jobs
    # Succeeded jobs' submit-to-finish seconds: (bound, jobs <= bound) per bound, cumulative.
    latency_buckets: tuple[tuple[float, int], ...]
    latency_count: int
    latency_sum: float
    tokens_per_s: dict[str, float]  # worker -> mean over its most recent succeeded jobs
    # The safety stage: checks by (stage, verdict, category); category "none" when no code.
    safety: dict[tuple[str, str, str], int] = field(default_factory=dict)


def _seconds_to_finish(dialect: str) -> ColumnElement[Any]:
    """finished_at - created_at in seconds: SQLite has no interval type, only julianday."""
    if dialect == "postgresql":
        return func.extract("epoch", Job.finished_at - Job.created_at)
    return (func.julianday(Job.finished_at) - func.julianday(Job.created_at)) * literal_column(
        "86400.0"
    )


class MetricsQueries(StoreSession):
    def metrics(self, latency_bounds: Sequence[float], recent_jobs: int) -> JobMetrics:
        """Job counts by (state, source), the latency histogram of succeeded jobs over
        `latency_bounds`, and each worker's mean tokens/s over its `recent_jobs` latest
        succeeded jobs that report one.

        Three reads in one transaction, aggregated in SQL (a CASE per bucket, one pass) so a
        scrape never loads a row per job into Python, however many the store holds.
        """
        seconds = _seconds_to_finish(self.engine.dialect.name)
        succeeded = and_(Job.state == SUCCEEDED, Job.finished_at.is_not(None))
        with self.read() as session:
            by_state = session.execute(
                select(Job.state, Job.source, func.count()).group_by(Job.state, Job.source)
            ).all()
            total, total_seconds, *cumulative = session.execute(
                select(
                    func.count(),
                    func.coalesce(func.sum(seconds), 0.0),
                    *[func.sum(case((seconds <= bound, 1), else_=0)) for bound in latency_bounds],
                ).where(succeeded)
            ).one()
            # Only the newest jobs overall: a few workers' recent ones fit in 8x the window
            # without reading every timings blob in the table.
            recent = session.execute(
                select(Job.worker, Job.timings)
                .where(Job.state == SUCCEEDED, Job.worker.is_not(None))
                .order_by(Job.finished_at.desc())
                .limit(recent_jobs * 8)
            ).all()
            # Only jobs a policy checked carry checks (a short JSON list each).
            checked = session.scalars(select(Job.safety).where(Job.safety.is_not(None))).all()
        verdicts: Counter[tuple[str, str, str]] = Counter()
        for checks in checked:
            for c in checks or []:
                for code in c.get("categories") or ["none"]:
                    verdicts[(str(c.get("stage")), str(c.get("verdict")), str(code))] += 1
        speeds: dict[str, list[float]] = {}
        for worker, timings in recent:
            value = (timings or {}).get("tokens_per_s")
            if value is not None and len(speeds.setdefault(worker, [])) < recent_jobs:
                speeds[worker].append(float(value))
        return JobMetrics(
            counts={(state, source): int(n) for state, source, n in by_state},
            latency_buckets=tuple(
                (b, int(c or 0)) for b, c in zip(latency_bounds, cumulative, strict=True)
            ),
            latency_count=int(total),
            latency_sum=float(total_seconds or 0.0),
            tokens_per_s={w: sum(v) / len(v) for w, v in speeds.items() if v},
            safety=dict(verdicts),
        )

    def finished_since(self, since: datetime) -> list[tuple[datetime, datetime, str]]:
        """(created_at, finished_at, state) of every job that ended at or after `since`."""
        with self.read() as session:
            rows = session.execute(
                select(Job.created_at, Job.finished_at, Job.state).where(
                    Job.finished_at >= since, Job.state.in_(TERMINAL)
                )
            ).all()
        return [(created, finished, state) for created, finished, state in rows]
