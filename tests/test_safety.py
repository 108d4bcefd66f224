"""The safety stage in-process: the guards' prompt format, strict verdicts, the fail mode,
flag and block at input and output, `appliance analyze --safety`. Real tiny guards whose
weights are steered to a chosen answer (tests/safety_helpers.py); nothing is mocked."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image

from appliance.build.tiny_guards import TEXT_GUARD_NAME, VISION_GUARD_NAME
from appliance.engines.guard import GuardRow
from appliance.errors import SafetyBlocked
from appliance.safety.stage import conversation
from appliance.safety.template import DEFAULT_CATEGORIES
from appliance.safety.verdicts import parse_verdict
from appliance.schema import AnalysisResult, ChatTurn, TaskRequest
from appliance.settings import load_settings
from appliance.vocab import (
    BLOCKED,
    RETRYABLE,
    SAFE,
    SUCCEEDED,
    TERMINAL,
    UNPARSABLE,
    UNSAFE,
    WEBHOOK_EVENTS,
    webhook_event,
)
from cli import cli
from tests.safety_helpers import steered_root

# Meta's Llama Guard 3 prompt format (model card / the 11B Vision guard's chat template): the
# task line names the judged role, the categories one per line, the conversation, the
# two-line instruction, then the assistant header.
EXPECTED_AGENT_PROMPT = (
    "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n"
    "<|image|> Task: Check if there is unsafe content in 'Agent' messages in conversations"
    " according our safety policy with the below categories.\n\n"
    "<BEGIN UNSAFE CONTENT CATEGORIES>\n"
    "S1: Violent Crimes.\nS2: Non-Violent Crimes.\nS3: Sex Crimes.\nS4: Child Exploitation.\n"
    "S5: Defamation.\nS7: Privacy.\nS8: Intellectual Property.\n"
    "S9: Indiscriminate Weapons.\nS10: Hate.\nS11: Self-Harm.\nS12: Sexual Content.\n"
    "S13: Elections.\nS14: Patient names.\n"
    "<END UNSAFE CONTENT CATEGORIES>\n\n"
    "<BEGIN CONVERSATION>\n\n"
    "User: What is on the shelf?\n\n"
    "Agent: Three boxes.\n\n"
    "<END CONVERSATION>\n\n"
    "Provide your safety assessment for ONLY THE LAST Agent message in the above conversation:\n"
    " - First line must read 'safe' or 'unsafe'.\n"
    " - If unsafe, a second line must include a comma-separated list of violated categories."
    " <|eot_id|><|start_header_id|>assistant<|end_header_id|>"
)


@pytest.fixture(scope="module")
def roots(tiny_models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("safety")
    return {
        # The vision guard finds S2 in everything; the 1B guard finds nothing.
        "unsafe": steered_root(tiny_models_dir, tmp / "u", vision="unsafe\nS2", text="safe"),
        # The other way round: images pass, text (a summary) is unsafe.
        "text_unsafe": steered_root(tiny_models_dir, tmp / "t", vision="safe", text="unsafe\nS10"),
        # A guard that answers something that is not a verdict.
        "garbage": steered_root(tiny_models_dir, tmp / "g", vision="maybe", text="maybe"),
    }


def _pipeline(models: Path, **safety: object):  # -> Pipeline
    from appliance.pipeline import Pipeline

    settings = load_settings(
        config_file=models / "none.toml", models_dir=models, device="cpu",
        generation={"max_new_tokens": 4}, safety=safety,
    )  # fmt: skip
    return Pipeline(settings)


@pytest.fixture(scope="module")
def unsafe_pipeline(roots: dict[str, Path]):  # -> Pipeline, guards loaded once for the module
    return _pipeline(roots["unsafe"], check="both")


def _image() -> Image.Image:
    return Image.new("RGB", (64, 48), (120, 60, 30))


def test_template_renders_meta_format_for_both_architectures(unsafe_pipeline) -> None:
    messages = conversation("What is on the shelf?", image=True, answer="Three boxes.")
    categories = {**DEFAULT_CATEGORIES, "S14": "Patient names."}
    # The production loader picks the vision guard (Mllama) for images, the 1B (Llama) for text.
    for image, name in ((True, VISION_GUARD_NAME), (False, TEXT_GUARD_NAME)):
        guard = unsafe_pipeline.guard(image)
        assert guard.name == name and guard.sees_images is image
        assert guard.render(messages, categories, ["S6"]) == EXPECTED_AGENT_PROMPT
    # The last role decides what is judged: a lone user turn is the request ('User').
    user_only = guard.render(conversation("Hi", image=False), DEFAULT_CATEGORIES, [])
    assert "unsafe content in 'User' messages" in user_only
    assert "ONLY THE LAST User message" in user_only and "<|image|>" not in user_only
    assert "S6: Specialized Advice.\n" in user_only


def test_conversation_alternates_roles_and_drops_system_turns() -> None:
    turns = [
        ChatTurn(role="system", text="be nice"),
        ChatTurn(role="user", text="a"),
        ChatTurn(role="user", text="b", image=True),
    ]
    msgs = conversation(turns, image=True, answer="c")
    assert [m["role"] for m in msgs] == ["user", "assistant"]
    assert msgs[0]["content"][0] == {"type": "image"}
    assert [c["text"] for c in msgs[0]["content"][1:]] == ["a", "b"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("safe", (SAFE, [])),
        ("\nunsafe\nS2\n", (UNSAFE, ["S2"])),
        ("unsafe\nS1,S10", (UNSAFE, ["S1", "S10"])),
        ("unsafe", (UNPARSABLE, [])),  # no codes
        ("unsafe\nS99", (UNPARSABLE, [])),  # unknown code
        ("unsafe\nS6", (UNPARSABLE, [])),  # excluded code
        ("Safe", (UNPARSABLE, [])),
        ("safe\nS1", (UNPARSABLE, [])),
        ("", (UNPARSABLE, [])),
        ("unsafe\nS2\nmore", (UNPARSABLE, [])),
    ],
)
def test_parsing_is_strict(text: str, expected: tuple[str, list[str]]) -> None:
    known = frozenset(c for c in DEFAULT_CATEGORIES if c != "S6")
    assert parse_verdict(text, known) == expected


def test_tiny_guards_load_and_answer_through_generate(unsafe_pipeline) -> None:
    rows = [GuardRow(conversation("x", image=True), _image()), GuardRow(conversation("y", False))]
    vision, text = unsafe_pipeline.guard(True), unsafe_pipeline.guard(False)
    assert [a for a, _ in vision.classify(rows, DEFAULT_CATEGORIES, [])] == ["unsafe\nS2"] * 2
    assert [a for a, _ in text.classify(rows, DEFAULT_CATEGORIES, [])] == ["safe"] * 2
    # Rows of one kind share one padded `generate` call: one wall time, split evenly.
    three = [GuardRow(conversation(q, image=True), _image()) for q in ("a", "bb b", "c c c c")]
    times = {ms for _, ms in vision.classify(three, DEFAULT_CATEGORIES, [])}
    assert len(times) == 1


def test_policy_per_door_and_token() -> None:
    from appliance.safety import mode_for
    from appliance.watch.watcher import folder_request

    settings = load_settings(
        config_file="/nonexistent.toml",
        safety={"panel": "flag", "api": "off", "openai": "block", "cli": "flag",
                "tokens": {"lims": "block"}},
        folders=[{"path": "/tmp/x", "safety": "block"}],
    )  # fmt: skip
    assert mode_for(settings, "panel") == "flag"
    assert mode_for(settings, "api", "other") == "off"
    assert mode_for(settings, "api", "lims") == "block"
    assert mode_for(settings, "openai", None) == "block"
    assert mode_for(settings, "cli") == "flag"
    assert folder_request(settings.folders[0]).safety == "block"
    # A blocked job ends like the others: its own webhook event, and no retry.
    assert webhook_event(BLOCKED) == "job.blocked" and "job.blocked" in WEBHOOK_EVENTS
    assert BLOCKED in TERMINAL and BLOCKED not in RETRYABLE
    with pytest.raises(ValueError, match="S14"):
        load_settings(config_file="/nonexistent.toml", safety={"categories": {"X1": "no"}})


def test_flag_records_input_and_output_verdicts(unsafe_pipeline) -> None:
    items = [
        ([_image()], TaskRequest(task="caption", safety="flag", summarize=True)),
        ([], TaskRequest(task="chat", messages=[ChatTurn(role="user", text="hi")], safety="flag")),
        ([_image()], TaskRequest(task="caption")),  # off: no check
    ]
    image_job, text_job, off_job = unsafe_pipeline.analyze_checked(items)
    assert isinstance(image_job, AnalysisResult) and image_job.pages
    got = [(c["stage"], c["verdict"], c["categories"], c["model"]) for c in image_job.safety]
    assert got == [
        ("input", UNSAFE, ["S2"], VISION_GUARD_NAME),
        ("output", UNSAFE, ["S2"], VISION_GUARD_NAME),
        ("summary", SAFE, [], TEXT_GUARD_NAME),  # the summary: text, so the 1B guard
    ]
    assert image_job.summary is not None
    assert all(c["ms"] > 0 for c in image_job.safety)
    # Text only: the 1B guard judges it.
    assert [(c["verdict"], c["model"]) for c in text_job.safety] == [(SAFE, TEXT_GUARD_NAME)] * 2
    assert off_job.safety == []


def test_block_at_input_skips_the_analysis(unsafe_pipeline) -> None:
    (blocked,) = unsafe_pipeline.analyze_checked([([_image()], TaskRequest(safety="block"))])
    assert isinstance(blocked, SafetyBlocked)
    assert str(blocked) == "blocked by the safety check (input): unsafe: S2 Non-Violent Crimes"
    assert [c["stage"] for c in blocked.checks] == ["input"]  # the answer was never made


def test_block_at_output_withholds_the_answer(roots: dict[str, Path]) -> None:
    pipeline = _pipeline(roots["unsafe"], check="output")
    (blocked,) = pipeline.analyze_checked([([_image()], TaskRequest(safety="block"))])
    assert isinstance(blocked, SafetyBlocked)
    assert [(c["stage"], c["verdict"]) for c in blocked.checks] == [("output", UNSAFE)]


def test_block_withholds_an_unsafe_summary(roots: dict[str, Path]) -> None:
    pipeline = _pipeline(roots["text_unsafe"], check="both")
    (out,) = pipeline.analyze_checked([([_image()], TaskRequest(safety="block", summarize=True))])
    assert isinstance(out, AnalysisResult) and out.pages  # the answer itself passed
    assert [(c["stage"], c["verdict"], c["categories"]) for c in out.safety] == [
        ("input", SAFE, []),
        ("output", SAFE, []),
        ("summary", UNSAFE, ["S10"]),
    ]
    assert out.summary is None


@pytest.mark.parametrize(("fail_mode", "blocked"), [("closed", True), ("open", False)])
def test_malformed_verdict_follows_the_fail_mode(
    roots: dict[str, Path], fail_mode: str, blocked: bool
) -> None:
    pipeline = _pipeline(roots["garbage"], check="output", fail_mode=fail_mode)
    (out,) = pipeline.analyze_checked([([_image()], TaskRequest(safety="block"))])
    assert isinstance(out, SafetyBlocked) is blocked
    checks = out.checks if isinstance(out, SafetyBlocked) else out.safety
    assert [(c["verdict"], c["raw"]) for c in checks] == [(UNPARSABLE, "maybe")]  # never safe


def test_cli_analyze_safety_json(roots: dict[str, Path], tmp_path: Path) -> None:
    photo = tmp_path / "p.png"
    _image().save(photo)
    runner = CliRunner(env={
        "APPLIANCE_CONFIG_FILE": str(tmp_path / "none.toml"),
        "APPLIANCE_MODELS_DIR": str(roots["unsafe"]),
        "APPLIANCE_DEVICE": "cpu",
        "APPLIANCE_GENERATION__MAX_NEW_TOKENS": "4",
    })  # fmt: skip
    flag = runner.invoke(cli, ["analyze", str(photo), "--json", "--safety", "flag"])
    assert flag.exit_code == 0, flag.output
    line = json.loads(flag.stdout.strip().splitlines()[-1])
    assert [(c["stage"], c["verdict"], c["categories"]) for c in line["safety"]] == [
        ("output", UNSAFE, ["S2"])
    ]
    block = runner.invoke(cli, ["analyze", str(photo), "--json", "--safety", "block"])
    assert block.exit_code == 1
    line = json.loads(block.stdout.strip().splitlines()[-1])
    assert line["state"] == BLOCKED and line["safety"][0]["verdict"] == UNSAFE
    assert "unsafe: S2 Non-Violent Crimes" in block.stderr


def test_runner_stores_checks_and_withholds_an_unsafe_summary_and_digest(
    roots: dict[str, Path], tmp_path: Path, redis_server: str
) -> None:
    """The worker's own path (JobRunner, in-process): checks stored with the job; the 1B
    guard judges the summary and the batch digest, and `block` withholds them."""
    from appliance.jobs import JobService
    from appliance.runtime.runner import JobRunner

    pipeline = _pipeline(roots["text_unsafe"], check="output")
    settings = pipeline.settings.model_copy(
        update={"data_dir": tmp_path, "redis_url": redis_server.rsplit("/", 1)[0] + "/12"}
    )
    settings.queue.batch_size = 1
    service = JobService.from_settings(settings)
    batch = service.open_batch(source="folder", label="scans")
    request = TaskRequest(task="caption", summarize=True, safety="block")
    png = tmp_path / "p.png"
    _image().save(png)
    job = service.submit(png.read_bytes(), "p.png", request, source="folder", batch_id=batch.id)
    service.close_batch(batch.id)
    runner = JobRunner(service.backend, hostname="gpu0@t", device="cpu", pipeline=pipeline)
    runner.run_job(job.id)
    done = service.get(job.id)
    assert done is not None and done.state == SUCCEEDED
    assert [(c["stage"], c["verdict"]) for c in done.safety or []] == [("output", SAFE)]
    assert runner.summarize_job(job.id) == BLOCKED
    done = service.get(job.id)
    assert done is not None and done.summary is None
    assert done.summary_error == "blocked by the safety check (summary): unsafe: S10 Hate"
    assert [c["stage"] for c in done.safety or []] == ["output", "summary"]
    assert runner.digest_batch(batch.id) == BLOCKED
    info = service.get_batch(batch.id)
    assert info is not None and info.digest is None
    assert info.digest_error == "blocked by the safety check (digest): unsafe: S10 Hate"
