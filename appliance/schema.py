"""What a user asks for (`TaskRequest`) and what the appliance answers (`AnalysisResult`).

Shared by the CLI, the job store, the Celery tasks, the REST API and the watcher, so that a job
means the same thing wherever it came from.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field, model_validator

from appliance.errors import InvalidRequest

Task = Literal["caption", "describe", "question", "ocr", "table", "classify", "extract"]
TASKS: tuple[str, ...] = ("caption", "describe", "question", "ocr", "table", "classify", "extract")

# The eight languages Llama 3.2 is officially tuned for.
LANGUAGES: dict[str, str] = {
    "en": "English",
    "de": "German",
    "fr": "French",
    "it": "Italian",
    "pt": "Portuguese",
    "hi": "Hindi",
    "es": "Spanish",
    "th": "Thai",
}


class TaskRequest(BaseModel):
    task: Task = "caption"
    # The question for `question`; an extra instruction for every other task.
    prompt: str | None = None
    labels: list[str] = Field(default_factory=list)
    fields: list[str] = Field(default_factory=list)
    language: str = "en"
    summarize: bool = False
    max_new_tokens: int | None = None
    temperature: float | None = None
    seed: int | None = None

    @model_validator(mode="after")
    def _check(self) -> TaskRequest:
        if self.language not in LANGUAGES:
            raise InvalidRequest(
                f"unknown language {self.language!r}; choose one of {', '.join(LANGUAGES)}"
            )
        if self.task == "question" and not (self.prompt or "").strip():
            raise InvalidRequest("task 'question' needs a prompt (the question)")
        if self.task == "classify" and len(self.labels) < 2:
            raise InvalidRequest("task 'classify' needs at least two labels")
        if self.task == "extract" and not self.fields:
            raise InvalidRequest("task 'extract' needs at least one field name")
        return self

    def batch_key(self) -> tuple[Any, ...]:
        """Requests with equal keys can share one padded `generate_batch` call."""
        return (self.max_new_tokens, self.temperature, self.seed)


class PageResult(BaseModel):
    page: int  # 1-based
    text: str
    # Parsed output: the chosen label for classify, the validated object for extract.
    data: Any = None
    tokens: int = 0
    timings: dict[str, float] = Field(default_factory=dict)


class AnalysisResult(BaseModel):
    task: str
    model: str
    pages: list[PageResult]
    summary: str | None = None
    timings: dict[str, float] = Field(default_factory=dict)

    @property
    def text(self) -> str:
        if len(self.pages) == 1:
            return self.pages[0].text
        return "\n\n".join(f"[page {p.page}]\n{p.text}" for p in self.pages)
