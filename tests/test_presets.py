"""Task presets: prompts per task and language, parsing of structured answers, repair prompt."""

from __future__ import annotations

import pytest

from appliance.errors import ExtractionFailed
from appliance.presets import build_prompt, parse_output, repair_prompt
from appliance.schema import LANGUAGES, TASKS, TaskRequest


def _req(task: str, **kw: object) -> TaskRequest:
    defaults: dict[str, object] = {
        "question": {"prompt": "How many people?"},
        "classify": {"labels": ["invoice", "receipt", "other"]},
        "extract": {"fields": ["invoice number", "total"]},
    }.get(task, {})
    return TaskRequest(task=task, **{**defaults, **kw})


@pytest.mark.parametrize("task", TASKS)
def test_every_task_has_a_distinct_prompt(task: str) -> None:
    prompt = build_prompt(_req(task))
    assert prompt.strip()
    others = {build_prompt(_req(t)) for t in TASKS if t != task}
    assert prompt not in others


@pytest.mark.parametrize("code", list(LANGUAGES))
def test_language_instruction(code: str) -> None:
    assert f"Answer in {LANGUAGES[code]}." in build_prompt(_req("describe", language=code))
    # Structured answers keep labels and keys verbatim whatever the language.
    assert "exactly as given" in build_prompt(_req("classify", language=code))
    assert f"values in {LANGUAGES[code]}" in build_prompt(_req("extract", language=code))


def test_prompts_carry_the_task_specifics() -> None:
    assert build_prompt(_req("question")).startswith("How many people?")
    assert '"invoice", "receipt", "other"' in build_prompt(_req("classify"))
    assert '"invoice number", "total"' in build_prompt(_req("extract"))
    assert "JSON object" in build_prompt(_req("extract"))
    assert "Markdown table" in build_prompt(_req("table"))
    assert "screen reader" in build_prompt(_req("describe"))
    assert "Additional instruction: only the header" in build_prompt(
        _req("ocr", prompt="only the header")
    )


@pytest.mark.parametrize(
    ("text", "label"),
    [
        ("invoice", "invoice"),
        ("Receipt.", "receipt"),
        ("Label: other", "other"),
        ("'INVOICE'", "invoice"),
    ],
)
def test_classify_accepts_a_label(text: str, label: str) -> None:
    assert parse_output(_req("classify"), text) == label


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("a cat", "is not one of the labels"),
        ("invoice or receipt", "several labels"),
        ("", "(empty)"),
    ],
)
def test_classify_rejects(text: str, reason: str) -> None:
    with pytest.raises(ExtractionFailed, match=reason.replace("(", r"\(").replace(")", r"\)")):
        parse_output(_req("classify"), text)


def test_extract_validates_keys() -> None:
    req = _req("extract")
    fenced = '```json\n{"invoice number": "A-1", "total": null}\n```'
    assert parse_output(req, fenced) == {"invoice number": "A-1", "total": None}
    assert parse_output(req, 'Here: {"total": 3, "invoice number": 7} done') == {
        "invoice number": 7,
        "total": 3,
    }


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("no json here", "no JSON object"),
        ('{"invoice number": 1,}', "not valid JSON"),
        ('{"total": 1}', 'lacks keys "invoice number"'),
        ('{"invoice number": 1, "total": 2, "iban": 3}', 'unexpected keys "iban"'),
    ],
)
def test_extract_rejects_with_a_reason(text: str, reason: str) -> None:
    with pytest.raises(ExtractionFailed, match=reason):
        parse_output(_req("extract"), text)


def test_free_text_tasks_have_no_parsed_data() -> None:
    assert parse_output(_req("caption"), "anything") is None


def test_repair_prompt_shows_the_error_and_the_bad_answer() -> None:
    req = _req("extract")
    prompt = repair_prompt(req, "x" * 2000, "answer contains no JSON object")
    assert prompt.startswith(build_prompt(req))
    assert "It was rejected: answer contains no JSON object" in prompt
    assert "x" * 500 + "..." in prompt and "x" * 501 not in prompt
