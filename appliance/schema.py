"""What a user asks for (`TaskRequest`) and what the appliance answers (`AnalysisResult`).

Shared by the CLI, the job store, the Celery tasks, the REST API and the watcher, so that a job
means the same thing wherever it came from.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

from pydantic import BaseModel, Field, ValidationError, model_validator

from appliance.errors import InvalidRequest
from appliance.vocab import OFF, FinishReason, SafetyMode

Task = Literal["caption", "describe", "question", "ocr", "table", "classify", "extract", "chat"]
# What forms and the CLI offer. `chat` is not among them: it is the OpenAI endpoint's task, a
# conversation (`TaskRequest.messages`) rather than one instruction about a file.
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

# A longer prompt is cut: it would only crowd the image out of the model's context.
MAX_PROMPT_CHARS = 4000
# A longer conversation (all turns' text) is refused: it is kept in the job's params, and
# Llama 3.2's 128k-token context would not hold much more anyway.
MAX_CHAT_CHARS = 200_000


class ChatTurn(BaseModel):
    """One turn of a conversation (task `chat`), in the order the client sent them."""

    role: Literal["system", "user", "assistant"]
    text: str = ""
    # This turn carried the job's image (its input file): the engine places the image here.
    image: bool = False


# What the engine is asked: one instruction (a user turn), or a whole conversation.
Prompt = str | Sequence[ChatTurn]


class TaskRequest(BaseModel):
    task: Task = "caption"
    # The question for `question`; an extra instruction for every other task.
    prompt: str | None = None
    labels: list[str] = Field(default_factory=list)
    fields: list[str] = Field(default_factory=list)
    # Task `chat` only: the conversation, earlier turns included; `prompt` holds its last
    # question, for listings and search.
    messages: list[ChatTurn] = Field(default_factory=list)
    language: str = "en"
    summarize: bool = False
    max_new_tokens: int | None = None
    temperature: float | None = None
    seed: int | None = None
    # The safety stage's policy for this job, set at submit from its source (settings.safety).
    safety: SafetyMode = OFF

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
        if self.task == "chat":
            _check_chat(self.messages)
        return self

    @property
    def has_image(self) -> bool:
        """Whether the job's input file is an image for the model: every task's is, but a
        text-only chat's input file is the conversation itself (see `JobService.submit_chat`)."""
        return self.task != "chat" or any(turn.image for turn in self.messages)

    def batch_key(self) -> tuple[Any, ...]:
        """Requests with equal keys can share one padded `generate_batch` call."""
        return (self.max_new_tokens, self.temperature, self.seed)


def _check_chat(turns: list[ChatTurn]) -> None:
    if not turns or turns[-1].role != "user":
        raise InvalidRequest("a chat must end with a user message")
    with_image = [turn for turn in turns if turn.image]
    if len(with_image) > 1 or any(turn.role != "user" for turn in with_image):
        raise InvalidRequest("a chat job places its one image in one user message")
    if sum(len(turn.text) for turn in turns) > MAX_CHAT_CHARS:
        raise InvalidRequest(f"the conversation is longer than {MAX_CHAT_CHARS} characters")


# Fields a form may set as they are; prompt, labels, fields and summarize are parsed.
_PLAIN_FIELDS = ("task", "language", "max_new_tokens", "temperature", "seed")


def request_from_fields(form: Mapping[str, Any]) -> TaskRequest:
    """A validated `TaskRequest` from flat form fields: a multipart form, the panel's form or
    CLI options, so every door reads a request the same way.

    `labels` and `fields` are comma-separated (a string, or several); `summarize` is a bool or
    "1"/"true"/"on"; the prompt is stripped, cut at `MAX_PROMPT_CHARS`, and blank means none;
    missing or None fields take the defaults. Raises `InvalidRequest` with one readable line.
    """
    values = {name: form[name] for name in _PLAIN_FIELDS if form.get(name) is not None}
    values["prompt"] = (form.get("prompt") or "").strip()[:MAX_PROMPT_CHARS] or None
    values["labels"] = split_csv(form.get("labels"))
    values["fields"] = split_csv(form.get("fields"))
    values["summarize"] = form.get("summarize") in (True, "1", "true", "on")
    try:
        return TaskRequest(**values)
    except ValidationError as exc:
        reasons = (str(e.get("ctx", {}).get("error") or e["msg"]) for e in exc.errors())
        raise InvalidRequest("; ".join(reasons)) from None


def split_csv(value: str | Sequence[str] | None) -> list[str]:
    """ "a, b" or ["a,b", "c"] -> ["a", "b", "c"]."""
    parts = [value] if isinstance(value, str) else list(value or ())
    return [v.strip() for part in parts for v in part.split(",") if v.strip()]


class PageResult(BaseModel):
    page: int  # 1-based
    text: str
    # Parsed output: the chosen label for classify, the validated object for extract.
    data: Any = None
    tokens: int = 0
    # Why the generation ended: "stop" (end-of-turn token) or "length" (cut at max_new_tokens);
    # None in results written before it was recorded.
    finish_reason: FinishReason | None = None
    # The prompt's length in tokens as the processor counts them (an image is its one
    # `<|image|>` token; its tiles reach the model through cross-attention, not the prompt).
    prompt_tokens: int = 0
    timings: dict[str, float] = Field(default_factory=dict)


class AnalysisResult(BaseModel):
    task: str
    model: str
    pages: list[PageResult]
    summary: str | None = None
    timings: dict[str, float] = Field(default_factory=dict)
    # The safety stage's checks ({stage, verdict, categories, model, ms, raw}), in order.
    safety: list[dict[str, Any]] = Field(default_factory=list)

    @property
    def text(self) -> str:
        if len(self.pages) == 1:
            return self.pages[0].text
        return "\n\n".join(f"[page {p.page}]\n{p.text}" for p in self.pages)
