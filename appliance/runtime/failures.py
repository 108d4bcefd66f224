"""How a worker tells failures apart: out of memory, permanent (bad input, a model that cannot
answer it) or worth another attempt, and the one-line reason and code a job ends with."""

from __future__ import annotations

from appliance.errors import ApplianceError, ExtractionFailed, InvalidRequest, ModelError


def is_oom(exc: BaseException) -> bool:
    return type(exc).__name__ == "OutOfMemoryError" or "out of memory" in str(exc).lower()


def is_permanent(exc: BaseException) -> bool:
    """A problem with this job that another attempt would repeat."""
    if isinstance(exc, ApplianceError):
        return not exc.transient
    return isinstance(exc, ValueError | TypeError)


def error_code(exc: BaseException) -> str:
    if isinstance(exc, ExtractionFailed):
        return "extraction"
    if isinstance(exc, ModelError):
        return "model"
    if isinstance(exc, InvalidRequest):
        return "invalid_request"
    return "error"


def one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__
