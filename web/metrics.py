"""Prometheus metrics computed at scrape time from the shared state (the job store).

Gunicorn runs several processes and the work happens in Celery workers, so in-process counters
would each see a slice. Aggregating the store on each scrape gives the same answer from
whichever process serves it, with no multiprocess-mode files to manage. The queries are
grouped counts over indexed columns; the latency histogram is one pass with CASE buckets.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from sqlalchemy import case, func, literal_column, select

from appliance.store.models import TERMINAL, Job

# Seconds from submit to finish; CPU tiny models take well under a second, real ones minutes.
LATENCY_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0)
# Tokens/s is averaged over each worker's most recent jobs.
_RECENT_JOBS = 20


def _duration_seconds(dialect: str) -> Any:
    if dialect == "postgresql":
        return func.extract("epoch", Job.finished_at - Job.created_at)
    return (func.julianday(Job.finished_at) - func.julianday(Job.created_at)) * literal_column(
        "86400.0"
    )


class ApplianceCollector:
    def __init__(self, svc: Any) -> None:
        self.jobs = svc.jobs

    def collect(self) -> Iterator[Metric]:
        store = self.jobs.store
        with store.read() as session:
            dialect = session.get_bind().dialect.name
            by_state = session.execute(
                select(Job.state, Job.source, func.count()).group_by(Job.state, Job.source)
            ).all()
            seconds = _duration_seconds(dialect)
            ended = (Job.state.in_(TERMINAL)) & Job.finished_at.is_not(None)
            row = session.execute(
                select(
                    func.count(),
                    func.coalesce(func.sum(seconds), 0.0),
                    *[func.sum(case((seconds <= bound, 1), else_=0)) for bound in LATENCY_BUCKETS],
                ).where(ended, Job.state == "succeeded")
            ).one()
            recent = session.execute(
                select(Job.worker, Job.timings)
                .where(Job.state == "succeeded", Job.worker.is_not(None))
                .order_by(Job.finished_at.desc())
                .limit(_RECENT_JOBS * 8)
            ).all()

        jobs = GaugeMetricFamily(
            "appliance_jobs", "Jobs in the store by state and source", labels=["state", "source"]
        )
        for state, source, count in sorted(by_state):
            jobs.add_metric([state, source], count)
        yield jobs

        depth = GaugeMetricFamily(
            "appliance_queue_depth", "Jobs waiting per lane (and running)", labels=["lane"]
        )
        for lane, count in sorted(self.jobs.queue_depth().items()):
            depth.add_metric([lane], count)
        yield depth

        total, total_seconds, *cumulative = row
        buckets = [(str(b), int(c or 0)) for b, c in zip(LATENCY_BUCKETS, cumulative, strict=True)]
        buckets.append(("+Inf", int(total)))
        yield HistogramMetricFamily(
            "appliance_job_latency_seconds",
            "Submit-to-finish time of succeeded jobs",
            buckets=buckets,
            sum_value=float(total_seconds or 0.0),
        )

        speeds: dict[str, list[float]] = {}
        for worker, timings in recent:
            value = (timings or {}).get("tokens_per_s")
            if value is not None and len(speeds.setdefault(worker, [])) < _RECENT_JOBS:
                speeds[worker].append(float(value))
        tps = GaugeMetricFamily(
            "appliance_tokens_per_second",
            "Decode speed, mean of the worker's recent jobs",
            labels=["worker"],
        )
        for worker, values in sorted(speeds.items()):
            if values:
                tps.add_metric([worker], sum(values) / len(values))
        yield tps

        busy = GaugeMetricFamily(
            "appliance_worker_busy", "1 while the worker runs a job", labels=["worker", "device"]
        )
        up = GaugeMetricFamily(
            "appliance_worker_up", "1 while the worker heartbeats", labels=["worker", "device"]
        )
        gpu = GaugeMetricFamily(
            "appliance_worker_gpu_memory_bytes",
            "GPU memory in use by the worker",
            labels=["worker", "device"],
        )
        for w in self.jobs.workers():
            labels = [w.hostname, w.device]
            busy.add_metric(labels, 1.0 if w.state == "busy" else 0.0)
            up.add_metric(labels, 1.0 if w.alive else 0.0)
            memory = getattr(w, "gpu_memory_bytes", None)  # reported by GPU workers only
            if memory is not None:
                gpu.add_metric(labels, float(memory))
        yield busy
        yield up
        yield gpu


def render(svc: Any) -> tuple[bytes, str]:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ApplianceCollector(svc))
    return generate_latest(registry), CONTENT_TYPE_LATEST
