"""Typed errors with a one-line, human reason: what the user sees in the CLI, API and panel."""

from __future__ import annotations


class ApplianceError(Exception):
    """Base of every error we report to a user. `str(err)` is the one-line reason."""

    #: Whether retrying the same input can succeed (a full disk can; a corrupt file cannot).
    transient: bool = False


class IntakeError(ApplianceError):
    """The file itself is unusable. Never retried; the file is kept."""


class EmptyFile(IntakeError):
    pass


class UnsupportedType(IntakeError):
    pass


class CorruptFile(IntakeError):
    pass


class TooLarge(IntakeError):
    pass


class DecompressionBomb(IntakeError):
    pass


class TooManyPages(IntakeError):
    pass


class ModelError(ApplianceError):
    """A model is missing, corrupt or cannot be loaded from its local directory."""


class ExtractionFailed(ApplianceError):
    """The model's structured output did not validate, even after the repair retry."""


class InvalidRequest(ApplianceError):
    """A task request is incomplete or inconsistent (e.g. `classify` without labels)."""


class JobNotFound(ApplianceError):
    """No job (or batch) with that id in the job store."""


class JobStateConflict(ApplianceError):
    """The job is not in a state that allows the action (e.g. retrying a succeeded job)."""


class Cancelled(ApplianceError):
    """The job was cancelled while its generation ran; the partial output is thrown away."""


class SafetyBlocked(ApplianceError):
    """The safety stage withheld the job (policy `block`): `checks` say which verdicts did.
    Not retried: the same input gets the same verdict; the file is kept."""

    def __init__(self, reason: str, checks: list[dict[str, object]]) -> None:
        super().__init__(reason)
        self.checks = checks


class TransientError(ApplianceError):
    """Worth trying again later: a broker hiccup, a full disk, CUDA out of memory."""

    transient = True


class WebhookNotFound(JobNotFound):
    """No webhook subscription or delivery with that id (a 404, like an unknown job)."""


class TargetRefused(InvalidRequest):
    """A webhook target is not a plain http(s) URL on an allowed host or network."""


class OpenAINotFound(JobNotFound):
    """No OpenAI file or batch with that id that this caller may see (a 404, like a job)."""
