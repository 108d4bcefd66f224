"""The system page's numbers: jobs per hour and mean latency over the last 24 h, as inline SVG.

Computed from the job store's finished jobs, bucketed in Python so the same code runs on SQLite
and PostgreSQL (24 h of one box is at most tens of thousands of rows, two timestamps each).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from markupsafe import Markup, escape

from appliance.vocab import SUCCEEDED

if TYPE_CHECKING:
    from appliance.jobs import JobService

HOURS = 24


@dataclass(frozen=True)
class HourBucket:
    start: datetime
    jobs: int
    failed: int
    mean_latency: float | None  # seconds from upload to result


def hourly(rows: list[tuple[datetime, datetime, str]], now: datetime) -> list[HourBucket]:
    """Buckets for (created_at, finished_at, state) rows finished in the 24 h before `now`."""
    top = now.replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)
    first = top - timedelta(hours=HOURS)
    counts = [0] * HOURS
    failed = [0] * HOURS
    latency = [0.0] * HOURS
    for created, finished, state in rows:
        if finished is None or not first <= finished < top:
            continue
        i = int((finished - first).total_seconds() // 3600)
        counts[i] += 1
        failed[i] += state != SUCCEEDED
        latency[i] += max(0.0, (finished - (created or finished)).total_seconds())
    return [
        HourBucket(first + timedelta(hours=i), counts[i], failed[i],
                   latency[i] / counts[i] if counts[i] else None)
        for i in range(HOURS)
    ]  # fmt: skip


def load(jobs: JobService, now: datetime | None = None) -> list[HourBucket]:
    now = now or datetime.now(UTC)
    # An hour's margin over the chart's 24 h; `hourly` drops the rows outside its bars.
    return hourly(jobs.finished_since(now - timedelta(hours=HOURS + 1)), now)


def chart(buckets: list[HourBucket]) -> Markup:
    """Bars = jobs per hour, line = mean latency; each scaled to its own maximum."""
    width, height, pad_l, pad_b, pad_t = 480, 160, 28, 18, 12
    plot_w, plot_h = width - pad_l - 28, height - pad_b - pad_t
    slot = plot_w / len(buckets)
    max_jobs = max([b.jobs for b in buckets] + [1])
    max_lat = max([b.mean_latency or 0 for b in buckets] + [1e-9])
    parts = [
        f'<svg viewBox="0 0 {width} {height}" role="img" aria-labelledby="chart-title" '
        'xmlns="http://www.w3.org/2000/svg">',
        f'<title id="chart-title">Jobs per hour (bars, max {max_jobs}) and mean latency '
        f"(line, max {max_lat:.1f} s) over the last {HOURS} hours</title>",
        f'<line x1="{pad_l}" y1="{pad_t + plot_h}" x2="{pad_l + plot_w}" y2="{pad_t + plot_h}" '
        'stroke="#aab2bf"/>',
        f'<text x="{pad_l - 4}" y="{pad_t + 4}" text-anchor="end">{max_jobs}</text>',
        f'<text x="{pad_l - 4}" y="{pad_t + plot_h}" text-anchor="end">0</text>',
        f'<text x="{pad_l + plot_w + 4}" y="{pad_t + 4}">{max_lat:.0f}s</text>',
    ]
    points = []
    for i, b in enumerate(buckets):
        x = pad_l + i * slot
        bar_h = plot_h * b.jobs / max_jobs
        label = f"{b.start:%H}:00 UTC: {b.jobs} jobs"
        if b.mean_latency is not None:
            label += f", mean latency {b.mean_latency:.1f} s"
            y = pad_t + plot_h - plot_h * b.mean_latency / max_lat
            points.append(f"{x + slot / 2:.1f},{y:.1f}")
        parts.append(
            f'<rect class="bar" x="{x + 1:.1f}" y="{pad_t + plot_h - bar_h:.1f}" '
            f'width="{slot - 2:.1f}" height="{bar_h:.1f}"><title>{escape(label)}</title></rect>'
        )
        if i % 6 == 0:
            parts.append(f'<text x="{x:.1f}" y="{height - 4}">{b.start:%H}:00</text>')
    if len(points) > 1:
        parts.append(f'<polyline class="line" points="{" ".join(points)}"/>')
    elif points:
        x, y = points[0].split(",")
        parts.append(f'<circle cx="{x}" cy="{y}" r="3" fill="#b3261e"/>')
    parts.append("</svg>")
    return Markup("".join(parts))
