"""Task presets: the prompt for each task, the parser for its answer, and the repair prompt."""

from __future__ import annotations

import json
import re
from typing import Any

from pydantic import ConfigDict, Field, ValidationError, create_model

from appliance.errors import ExtractionFailed
from appliance.schema import LANGUAGES, TaskRequest

STRUCTURED_TASKS = ("classify", "extract")

_INSTRUCTIONS = {
    "caption": "Write a one-sentence caption for this image.",
    "describe": (
        "Write alt text for this image for people who use a screen reader: describe what "
        "matters in two or three sentences (subject, setting, any visible text), without "
        "starting with 'image of'."
    ),
    "ocr": (
        "Transcribe all text in this image exactly as written, line by line, keeping the "
        "reading order. Output only the transcribed text."
    ),
    "table": (
        "Reproduce the table in this image as a Markdown table with a header row. "
        "Output only the Markdown table."
    ),
}


def _quoted(items: list[str]) -> str:
    return ", ".join(json.dumps(i, ensure_ascii=False) for i in items)


def _task_text(req: TaskRequest) -> str:
    if req.task == "question":
        return (req.prompt or "").strip()
    if req.task == "classify":
        return (
            "Classify this image. Answer with exactly one of these labels and nothing else: "
            f"{_quoted(req.labels)}."
        )
    if req.task == "extract":
        return (
            "Extract information from this image. Return only a JSON object with exactly these "
            f"keys: {_quoted(req.fields)}. Use null for a value that is not visible. "
            "No explanation, no Markdown."
        )
    return _INSTRUCTIONS[req.task]


def _language_line(req: TaskRequest) -> str:
    language = LANGUAGES[req.language]
    if req.task == "classify":
        return "Write the label exactly as given."
    if req.task == "extract":
        return f"Keep the keys exactly as given; write the values in {language}."
    return f"Answer in {language}."


def build_prompt(req: TaskRequest) -> str:
    """The user text for one page; the engine adds the image and the chat template."""
    parts = [_task_text(req)]
    if req.task != "question" and req.prompt and req.prompt.strip():
        parts.append(f"Additional instruction: {req.prompt.strip()}")
    parts.append(_language_line(req))
    return "\n".join(parts)


def parse_output(req: TaskRequest, text: str) -> Any:
    """Parsed answer: the label (classify), the validated object (extract), None otherwise.

    Raises ExtractionFailed with the reason when a structured answer does not validate.
    """
    if req.task == "classify":
        return _parse_label(req.labels, text)
    if req.task == "extract":
        return _parse_object(req.fields, text)
    return None


def repair_prompt(req: TaskRequest, bad_text: str, error: str) -> str:
    """The prompt for the one retry after a structured answer failed to validate."""
    shown = bad_text.strip()
    if len(shown) > 500:
        shown = shown[:500] + "..."
    return (
        f"{build_prompt(req)}\n\n"
        f"Your previous answer was:\n{shown}\n"
        f"It was rejected: {error}\n"
        "Answer again and follow the format exactly."
    )


def _normalise(label: str) -> str:
    return re.sub(r"\s+", " ", label.strip().strip("\"'`*.:;!").strip()).casefold()


def _parse_label(labels: list[str], text: str) -> str:
    answer = _normalise(text)
    for label in labels:
        if answer == _normalise(label):
            return label
    # Models often wrap the label ("Label: invoice."); accept it when exactly one label occurs.
    found = [
        label
        for label in labels
        if re.search(rf"(?<!\w){re.escape(_normalise(label))}(?!\w)", answer)
    ]
    if len(found) == 1:
        return found[0]
    shown = text.strip()[:80] or "(empty)"
    if found:
        raise ExtractionFailed(f"answer names several labels ({_quoted(found)}): {shown!r}")
    raise ExtractionFailed(f"answer {shown!r} is not one of the labels {_quoted(labels)}")


def _parse_object(fields: list[str], text: str) -> dict[str, Any]:
    body = re.sub(r"^```(?:json)?|```$", "", text.strip(), flags=re.MULTILINE).strip()
    start, end = body.find("{"), body.rfind("}")
    if start < 0 or end <= start:
        raise ExtractionFailed(f"answer contains no JSON object: {text.strip()[:80]!r}")
    try:
        data = json.loads(body[start : end + 1])
    except json.JSONDecodeError as err:
        raise ExtractionFailed(f"answer is not valid JSON ({err.msg} at char {err.pos})") from None
    if not isinstance(data, dict):
        raise ExtractionFailed("answer is JSON but not an object")
    # Field names are user text (spaces, dashes): aliases keep them off Python identifiers.
    model = create_model(  # type: ignore[call-overload]
        "Extracted",
        __config__=ConfigDict(extra="forbid"),
        **{f"f{i}": (Any, Field(..., alias=name)) for i, name in enumerate(fields)},
    )
    try:
        model.model_validate(data)
    except ValidationError as err:
        missing = [str(e["loc"][0]) for e in err.errors() if e["type"] == "missing"]
        extra = [str(e["loc"][0]) for e in err.errors() if e["type"] == "extra_forbidden"]
        reasons = []
        if missing:
            reasons.append(f"lacks keys {_quoted(missing)}")
        if extra:
            reasons.append(f"has unexpected keys {_quoted(extra)}")
        raise ExtractionFailed(f"JSON object {' and '.join(reasons) or 'is invalid'}") from None
    return {name: data[name] for name in fields}
