"""Prometheus metrics computed at scrape time from the shared state (the job store).

Gunicorn runs several processes and the work happens in Celery workers, so in-process counters
would each see a slice. Aggregating the store on each scrape (`JobService.metrics`) gives the
same answer from whichever process serves it, with no multiprocess-mode files to manage.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST

# Seconds from submit to finish; CPU tiny models take well under a second, real ones minutes.
LATENCY_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0)
# Tokens/s is averaged over each worker's most recent jobs.
_RECENT_JOBS = 20


class ApplianceCollector:
    def __init__(self, svc: Any) -> None:
        self.jobs = svc.jobs

    def collect(self) -> Iterator[Metric]:
        stats = self.jobs.metrics(LATENCY_BUCKETS, recent_jobs=_RECENT_JOBS)

        jobs = GaugeMetricFamily(
            "appliance_jobs", "Jobs in the store by state and source", labels=["state", "source"]
        )
        for (state, source), count in sorted(stats.counts.items()):
            jobs.add_metric([state, source], count)
        yield jobs

        depth = GaugeMetricFamily(
            "appliance_queue_depth", "Jobs waiting per lane (and running)", labels=["lane"]
        )
        for lane, count in sorted(self.jobs.queue_depth().items()):
            depth.add_metric([lane], count)
        yield depth

        buckets = [(str(bound), count) for bound, count in stats.latency_buckets]
        buckets.append(("+Inf", stats.latency_count))
        yield HistogramMetricFamily(
            "appliance_job_latency_seconds",
            "Submit-to-finish time of succeeded jobs",
            buckets=buckets,
            sum_value=stats.latency_sum,
        )

        verdicts = GaugeMetricFamily(
            "appliance_safety_verdicts",
            "Safety checks of the jobs in the store by stage, verdict and category",
            labels=["stage", "verdict", "category"],
        )
        for (stage, verdict, category), count in sorted(stats.safety.items()):
            verdicts.add_metric([stage, verdict, category], count)
        yield verdicts

        tps = GaugeMetricFamily(
            "appliance_tokens_per_second",
            "Decode speed, mean of the worker's recent jobs",
            labels=["worker"],
        )
        for worker, speed in sorted(stats.tokens_per_s.items()):
            tps.add_metric([worker], speed)
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
