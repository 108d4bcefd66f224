"""Model registry, manifests, verification, `appliance models ...` and the tiny-model builder."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from appliance.build.tiny import SUMMARIZER_NAME, VISION_NAME, make_tiny
from appliance.build.tiny_guards import TEXT_GUARD_NAME, VISION_GUARD_NAME
from appliance.errors import ModelError
from appliance.registry import ModelRegistry, load_local, read_manifest, verify, write_manifest
from cli import cli


@pytest.fixture
def models_copy(tiny_models_dir: Path, tmp_path: Path) -> Path:
    """A private copy that a test may damage (the session models are shared)."""
    root = tmp_path / "models"
    shutil.copytree(tiny_models_dir, root)
    return root


def _run(*args: str):
    return CliRunner().invoke(cli, list(args))


def test_registry_lists_and_resolves_by_role(tiny_models_dir: Path) -> None:
    registry = ModelRegistry(tiny_models_dir)
    assert [(m.name, m.role, m.architecture) for m in registry.list()] == [
        (TEXT_GUARD_NAME, "safety", "LlamaForCausalLM"),
        (SUMMARIZER_NAME, "summarizer", "LlamaForCausalLM"),
        (VISION_GUARD_NAME, "safety", "MllamaForConditionalGeneration"),
        (VISION_NAME, "vision", "MllamaForConditionalGeneration"),
    ]
    assert registry.first("vision").name == VISION_NAME
    assert registry.resolve("vision", "").name == VISION_NAME
    assert registry.resolve("summarizer", SUMMARIZER_NAME).path == tiny_models_dir / SUMMARIZER_NAME
    vision = registry.get(VISION_NAME)
    assert vision.architecture == "MllamaForConditionalGeneration"
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= set(vision.files)
    assert "onnx/model.onnx" in registry.get(SUMMARIZER_NAME).files


@pytest.mark.parametrize(
    ("call", "expected"),
    [
        (lambda r: r.get("nope"), "model 'nope' not found"),
        (lambda r: r.resolve("summarizer", VISION_NAME), "is a vision model, not a summarizer"),
        (lambda r: r.resolve("safety", VISION_NAME), "is a vision model, not a safety model"),
    ],
)
def test_registry_errors_are_one_line(tiny_models_dir: Path, call, expected: str) -> None:
    with pytest.raises(ModelError, match=expected) as info:
        call(ModelRegistry(tiny_models_dir))
    assert "\n" not in str(info.value)


def test_missing_models_root_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(ModelError) as info:
        ModelRegistry(tmp_path / "absent").list()
    assert str(info.value) == f"models directory {tmp_path / 'absent'} does not exist"


def test_verify_names_missing_corrupt_and_unlisted_files(models_copy: Path) -> None:
    registry = ModelRegistry(models_copy)
    assert verify(registry.get(VISION_NAME)) == []
    vision = models_copy / VISION_NAME
    data = bytearray((vision / "model.safetensors").read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped bit inside the weights
    (vision / "model.safetensors").write_bytes(bytes(data))
    (vision / "tokenizer.json").unlink()
    (vision / "stray.bin").write_bytes(b"x")
    assert verify(registry.get(VISION_NAME), progress=True) == [
        f"{VISION_NAME}: missing file tokenizer.json",
        f"{VISION_NAME}: unlisted file stray.bin",
        f"{VISION_NAME}: checksum mismatch in model.safetensors",
    ]
    assert verify(registry.get(SUMMARIZER_NAME)) == []


def test_write_manifest_round_trips_and_rejects_unknown_roles(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "a.txt").write_text("a")
    (tmp_path / "b.txt").write_text("b")
    write_manifest(tmp_path, "m", "safety", "Whatever")
    info = read_manifest(tmp_path)
    assert (info.name, info.role, sorted(info.files)) == ("m", "safety", ["b.txt", "sub/a.txt"])
    assert verify(info) == []
    with pytest.raises(ModelError, match="unknown role"):
        write_manifest(tmp_path, "m", "painter", "X")


def test_cli_list_and_verify_ok(tiny_models_dir: Path) -> None:
    listed = _run("models", "list", "--models-dir", str(tiny_models_dir))
    assert listed.exit_code == 0, listed.output
    assert VISION_NAME in listed.output and "summarizer" in listed.output
    guards = [line for line in listed.output.splitlines() if line.split("\t")[1] == "safety"]
    assert len(guards) == 2, listed.output  # both tiny guards, under role safety
    checked = _run("models", "verify", "--no-progress", "--models-dir", str(tiny_models_dir))
    assert checked.exit_code == 0, checked.output
    assert f"ok   {VISION_NAME}" in checked.output


def test_cli_verify_names_the_corrupt_file_and_fails(models_copy: Path) -> None:
    onnx = models_copy / SUMMARIZER_NAME / "onnx" / "model.onnx"
    onnx.write_bytes(onnx.read_bytes()[:-10])  # truncated copy
    result = _run("models", "verify", "--models-dir", str(models_copy))
    assert result.exit_code != 0
    assert f"{SUMMARIZER_NAME}: checksum mismatch in onnx/model.onnx" in result.output
    assert "Traceback" not in result.output
    # Naming the healthy model checks only that one.
    only = _run("models", "verify", VISION_NAME, "--models-dir", str(models_copy))
    assert only.exit_code == 0, only.output


def test_cli_verify_reports_a_missing_file(models_copy: Path) -> None:
    (models_copy / VISION_NAME / "config.json").unlink()
    result = _run("models", "verify", VISION_NAME, "--models-dir", str(models_copy))
    assert result.exit_code != 0
    assert f"{VISION_NAME}: missing file config.json" in result.output


def test_cli_errors_are_one_line_exit_2(tmp_path: Path) -> None:
    result = _run("models", "list", "--models-dir", str(tmp_path / "nowhere"))
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [
        f"error: models directory {tmp_path / 'nowhere'} does not exist"
    ]


def test_load_failure_is_a_one_line_model_error(models_copy: Path) -> None:
    from transformers import MllamaForConditionalGeneration

    folder = models_copy / VISION_NAME
    (folder / "model.safetensors").unlink()
    with pytest.raises(ModelError) as info:
        load_local("vision model tiny", folder, MllamaForConditionalGeneration.from_pretrained)
    message = str(info.value)
    assert message.startswith("vision model tiny: cannot load from")
    assert "\n" not in message and "huggingface.co" not in message


def test_truncated_weights_are_a_one_line_model_error(models_copy: Path) -> None:
    from appliance.engines.summarizer import SummarizerEngine
    from appliance.engines.vision import VisionEngine

    weights = models_copy / VISION_NAME / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100_000])
    with pytest.raises(ModelError, match=f"^vision model {VISION_NAME}: cannot load from"):
        VisionEngine.load(models_copy / VISION_NAME, device="cpu")
    (models_copy / SUMMARIZER_NAME / "onnx" / "model.onnx").write_bytes(b"garbage")
    with pytest.raises(ModelError, match=f"^summarizer model {SUMMARIZER_NAME}: cannot load"):
        SummarizerEngine.load(models_copy / SUMMARIZER_NAME, device="cpu")


def test_make_tiny_is_deterministic_per_seed(tiny_models_dir: Path, tmp_path: Path) -> None:
    # The cached session models were built with seed 0 by the same code.
    again = make_tiny(tmp_path / "again", seed=0)
    for folder in again:
        assert read_manifest(folder).files == read_manifest(tiny_models_dir / folder.name).files
        assert verify(read_manifest(folder)) == []
    other = make_tiny(tmp_path / "other", seed=1)
    for folder in other:
        files = read_manifest(folder).files
        assert (
            files["model.safetensors"]
            != read_manifest(tiny_models_dir / folder.name).files["model.safetensors"]
        )
    size = sum(p.stat().st_size for p in (tmp_path / "again").rglob("*") if p.is_file())
    assert size < 50e6


def test_tiny_vision_tokenizer_matches_the_real_layout(tiny_models_dir: Path) -> None:
    config = json.loads((tiny_models_dir / VISION_NAME / "config.json").read_text())
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(tiny_models_dir / VISION_NAME, local_files_only=True)
    tokenizer = processor.tokenizer
    image_id = tokenizer.convert_tokens_to_ids("<|image|>")
    assert image_id == config["text_config"]["vocab_size"] == config["image_token_index"]
    assert image_id == len(tokenizer) - 1
    assert tokenizer.model_input_names == ["input_ids", "attention_mask"]
    for token in ("<|begin_of_text|>", "<|eot_id|>", "<|start_header_id|>", "<|python_tag|>"):
        assert token in tokenizer.get_vocab()
    size = processor.image_processor.size
    assert size["height"] == config["vision_config"]["image_size"]
    assert processor.image_processor.max_image_tiles == config["vision_config"]["max_num_tiles"]
