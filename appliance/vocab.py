"""The appliance's words, defined once: job states, intake sources, priority lanes, follow-up
text states, why a generation ended. Every other module (store, queue, watcher, API, panel,
CLI, OpenAPI enums) imports them from here; a state written as a bare string anywhere else is
a bug waiting to drift.

Plain strings (with `Literal` types for checkers), not enums: they go into SQL columns, JSON,
Redis messages and URLs unchanged.
"""

from __future__ import annotations

from typing import Final, Literal, get_args

# -- a job's life ------------------------------------------------------------------------
JobState = Literal["queued", "running", "succeeded", "failed", "cancelled", "blocked"]
QUEUED: Final = "queued"
RUNNING: Final = "running"
SUCCEEDED: Final = "succeeded"
FAILED: Final = "failed"
CANCELLED: Final = "cancelled"
# The safety stage withheld it (policy `block`): the input was not analysed or the answer not
# released. Ended for good: retrying would only give the same verdict; the file is kept.
BLOCKED: Final = "blocked"
STATES: tuple[str, ...] = get_args(JobState)
# Still waiting for or holding a worker; cancel applies to these.
ACTIVE: tuple[str, ...] = (QUEUED, RUNNING)
# Ended: a result, an error or a cancel; retry applies to FAILED and CANCELLED.
TERMINAL: tuple[str, ...] = (SUCCEEDED, FAILED, CANCELLED, BLOCKED)
RETRYABLE: tuple[str, ...] = (FAILED, CANCELLED)

# -- where a job came from, and its lane ---------------------------------------------------
Source = Literal["panel", "api", "folder", "cli"]
SOURCES: tuple[str, ...] = get_args(Source)
Priority = Literal["interactive", "bulk"]
INTERACTIVE: Final = "interactive"
BULK: Final = "bulk"
PRIORITIES: tuple[str, ...] = get_args(Priority)


def default_priority(source: str) -> str:
    """Drop folders feed the bulk lane; a person waiting at the panel or a client of the API
    goes first."""
    return BULK if source == "folder" else INTERACTIVE


# -- follow-up text work (a job's summary, a batch's digest); None = not asked for ----------
PENDING: Final = "pending"
DONE: Final = "done"

# -- why a generation ended (the words OpenAI's `finish_reason` uses) -----------------------
FinishReason = Literal["stop", "length"]
STOP: Final = "stop"  # the model ended its turn with an end-of-turn token
LENGTH: Final = "length"  # cut off: the row used up its max_new_tokens
# OpenAI's word for an answer withheld by a content filter (a BLOCKED job's chat reply).
CONTENT_FILTER: Final = "content_filter"
FINISH_REASONS: tuple[str, ...] = get_args(FinishReason)

# -- the safety stage (Llama Guard 3): per-source policy, what is checked, the verdicts -----
SafetyMode = Literal["off", "flag", "block"]
OFF: Final = "off"  # no check
FLAG: Final = "flag"  # check, store the verdict, release the answer anyway
BLOCK: Final = "block"  # check; an unsafe verdict ends the job BLOCKED
SAFETY_MODES: tuple[str, ...] = get_args(SafetyMode)
SafetyStage = Literal["input", "output", "summary", "digest"]
INPUT: Final = "input"  # the image and prompt, before analysis (the guard judges the user turn)
OUTPUT: Final = "output"  # the generated answer (the guard judges the agent turn)
SUMMARY: Final = "summary"  # a job's follow-up summary (text guard)
DIGEST: Final = "digest"  # a batch's digest (text guard)
SAFETY_STAGES: tuple[str, ...] = get_args(SafetyStage)
Verdict = Literal["safe", "unsafe", "unparsable"]
SAFE: Final = "safe"
UNSAFE: Final = "unsafe"
UNPARSABLE: Final = "unparsable"  # not a well-formed verdict: the fail mode decides
VERDICTS: tuple[str, ...] = get_args(Verdict)
FailMode = Literal["closed", "open"]
CLOSED: Final = "closed"  # an unparsable verdict counts as unsafe
OPEN: Final = "open"  # an unparsable verdict is flagged, the answer released
FAIL_MODES: tuple[str, ...] = get_args(FailMode)

# -- worker rows -----------------------------------------------------------------------------
WorkerState = Literal["starting", "idle", "busy", "stopped"]

# -- a batch's end, as the event log and webhooks name it ------------------------------------
BATCH_FINISHED: Final = "batch_finished"

# -- webhooks: the events a subscription can ask for, and a delivery's life ----------------
# "job." + an end state, and a batch that finished: built from the words above, not retyped.
JOB_EVENT_PREFIX: Final = "job."
BATCH_FINISHED_EVENT: Final = "batch.finished"
WEBHOOK_EVENTS: tuple[str, ...] = (
    *(JOB_EVENT_PREFIX + state for state in TERMINAL),
    BATCH_FINISHED_EVENT,
)
# A delivery is PENDING until one attempt got a 2xx (DELIVERED) or its retries ran out (FAILED).
DELIVERED: Final = "delivered"
DELIVERY_STATES: tuple[str, ...] = (PENDING, DELIVERED, FAILED)


def webhook_event(log_event: str) -> str | None:
    """The webhook event for an event-log entry (`succeeded` -> `job.succeeded`), or None."""
    if log_event in TERMINAL:
        return JOB_EVENT_PREFIX + log_event
    return BATCH_FINISHED_EVENT if log_event == BATCH_FINISHED else None


# -- OpenAI batches (`/v1/batches`): the statuses OpenAI documents, in a batch's order -------
# validating -> in_progress -> finalizing -> completed; cancelling -> cancelled; failed (the
# whole input was unusable); expired (the completion window ran out). "failed" and "cancelled"
# are the job states' words above, reused: the same spelling means the same end.
OpenAIBatchStatus = Literal[
    "validating",
    "failed",
    "in_progress",
    "finalizing",
    "completed",
    "expired",
    "cancelling",
    "cancelled",
]
VALIDATING: Final = "validating"
IN_PROGRESS: Final = "in_progress"
FINALIZING: Final = "finalizing"
COMPLETED: Final = "completed"
EXPIRED: Final = "expired"
CANCELLING: Final = "cancelling"
OPENAI_BATCH_STATUSES: tuple[str, ...] = get_args(OpenAIBatchStatus)
# Still waiting for its jobs or its output files.
OPENAI_BATCH_OPEN: tuple[str, ...] = (VALIDATING, IN_PROGRESS, FINALIZING, CANCELLING)
OPENAI_BATCH_ENDED: tuple[str, ...] = (COMPLETED, FAILED, EXPIRED, CANCELLED)
# An OpenAI file's purpose: what a client uploads for a batch, and what a batch writes.
FILE_PURPOSE_BATCH: Final = "batch"
FILE_PURPOSE_BATCH_OUTPUT: Final = "batch_output"
# Every stored file is ready when its upload returns (OpenAI's `status`).
FILE_PROCESSED: Final = "processed"
