"""A `chat.completion` body from the jobs that answered a chat: the live endpoint's reply and
each line of a batch's output file are built here, the same way."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from appliance.jobs import JobInfo
from appliance.schema import AnalysisResult
from appliance.vocab import BLOCKED, CONTENT_FILTER, LENGTH, STOP


def result_of(job: JobInfo) -> AnalysisResult | None:
    """The job's result, with its summary (a follow-up task) beside it once written."""
    result = AnalysisResult.model_validate(job.result) if job.result else None
    if result is not None and job.summary and not result.summary:
        result.summary = job.summary
    return result


def answer(jobs: Sequence[JobInfo]) -> tuple[str, str, dict[str, int]]:
    """The joined answers of succeeded jobs, the finish reason and the token usage. A job
    the safety stage blocked has no answer: the reply's finish reason is `content_filter`."""
    texts, pages = [], []
    for job in jobs:
        result = result_of(job)
        texts.append(result.text if result else "")
        pages += result.pages if result else []
    # One cut answer (of several images, or pages) makes the reply a cut one.
    finish = LENGTH if any(p.finish_reason == LENGTH for p in pages) else STOP
    if any(job.state == BLOCKED for job in jobs):
        finish = CONTENT_FILTER
    prompt_tokens = sum(p.prompt_tokens for p in pages)
    completion_tokens = sum(p.tokens for p in pages)
    usage = {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }
    if len(texts) == 1:
        return texts[0], finish, usage
    return "\n\n".join(f"[image {i + 1}]\n{t}" for i, t in enumerate(texts)), finish, usage


def completion(
    completion_id: str, created: int, model: str, jobs: Sequence[JobInfo]
) -> dict[str, Any]:
    """OpenAI's `chat.completion` object for succeeded jobs."""
    content, finish, usage = answer(jobs)
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content},
                "finish_reason": finish,
            }
        ],
        "usage": usage,
    }


def list_object(data: list[dict[str, Any]], has_more: bool) -> dict[str, Any]:
    """One page of a listing (files, batches) in OpenAI's cursor-page shape."""
    return {
        "object": "list",
        "data": data,
        "has_more": has_more,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
    }
