"""An `AnalysisResult` as a download: JSON, plain text, Markdown or CSV (one row per page)."""

from __future__ import annotations

import csv
import io
import json
from typing import Any

from appliance.schema import AnalysisResult

FORMATS: dict[str, str] = {
    "json": "application/json",
    "txt": "text/plain; charset=utf-8",
    "md": "text/markdown; charset=utf-8",
    "csv": "text/csv; charset=utf-8",
}


def render(result: AnalysisResult, fmt: str, job: dict[str, Any]) -> str:
    if fmt == "json":
        return json.dumps({"job": job, "result": result.model_dump(mode="json")})
    if fmt == "txt":
        text = result.text
        if result.summary:
            text += f"\n\nSummary:\n{result.summary}"
        return text + "\n"
    if fmt == "md":
        return _markdown(result, job)
    return _csv(result, job)


def _markdown(result: AnalysisResult, job: dict[str, Any]) -> str:
    lines = [
        f"# {job.get('filename') or job['id']}",
        "",
        f"*{result.task}* by `{result.model}`",
        "",
    ]
    for page in result.pages:
        if len(result.pages) > 1:
            lines += [f"## Page {page.page}", ""]
        lines += [page.text, ""]
    if result.summary:
        lines += ["## Summary", "", result.summary, ""]
    return "\n".join(lines)


def _csv(result: AnalysisResult, job: dict[str, Any]) -> str:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["job_id", "filename", "task", "page", "text", "data", "summary"])
    for page in result.pages:
        data = json.dumps(page.data) if page.data is not None else ""
        writer.writerow(
            [
                job["id"],
                _cell(job.get("filename") or ""),
                result.task,
                page.page,
                _cell(page.text),
                _cell(data),
                _cell(result.summary or ""),
            ]
        )
    return out.getvalue()


def _cell(value: str) -> str:
    # Spreadsheet formula injection: a model's text starting with = + - @ must not execute.
    return "'" + value if value[:1] in ("=", "+", "-", "@", "\t", "\r") else value
