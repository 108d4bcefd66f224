"""SummarizerEngine: ONNX (onnxruntime) and PyTorch backends of the tiny Llama agree."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from appliance.build.tiny import SUMMARIZER_NAME
from appliance.engines.common import GenParams
from appliance.engines.compare import divergence
from appliance.engines.summarizer import SummarizerEngine
from appliance.errors import ModelError
from appliance.registry import ModelRegistry, read_manifest, verify
from cli import cli

TEXTS = [
    "Invoice A-1023 from ACME GmbH dated 2024-05-01, total 99.50 EUR, two items: apple, bread.",
    "A red square, a blue circle and a green triangle on a white background.",
    "Page 1 of 3. The quick brown fox jumps over the lazy dog near the sea.",
]


@pytest.fixture(scope="module")
def torch_summarizer(tiny_models_dir: Path) -> SummarizerEngine:
    return SummarizerEngine.load(tiny_models_dir / SUMMARIZER_NAME, device="cpu", backend="torch")


def test_onnx_backend_is_preferred(summarizer_engine: SummarizerEngine) -> None:
    assert summarizer_engine.backend == "onnx"
    assert summarizer_engine.name == SUMMARIZER_NAME
    assert type(summarizer_engine.model).__name__ == "ORTModelForCausalLM"


@pytest.mark.parametrize("text", TEXTS)
def test_onnx_greedy_matches_pytorch(summarizer_engine, torch_summarizer, text: str) -> None:
    assert torch_summarizer.backend == "torch"
    params = GenParams(max_new_tokens=24, return_logits=True)
    ort = summarizer_engine.summarize(text, params=params)
    pt = torch_summarizer.summarize(text, params=params)
    assert len(ort.token_ids) > 0 and len(set(ort.token_ids)) > 1
    assert divergence(ort, pt) is None, divergence(ort, pt)


def test_summary_and_digest_follow_the_inputs(summarizer_engine: SummarizerEngine) -> None:
    one = summarizer_engine.summarize(TEXTS[0], language="de", max_new_tokens=12)
    assert one.text and {"prefill_ms", "decode_ms", "tokens_per_s"} <= set(one.timings)
    other = summarizer_engine.summarize(TEXTS[1], language="de", max_new_tokens=12)
    assert one.token_ids != other.token_ids
    digest = summarizer_engine.digest(TEXTS, language="fr", max_new_tokens=12)
    assert digest.text and 0 < len(digest.token_ids) <= 12
    with pytest.raises(ModelError, match="unknown language"):
        summarizer_engine.summarize("x", language="xx")


def test_torch_fallback_without_onnx_export(tiny_models_dir: Path, tmp_path: Path) -> None:
    folder = tmp_path / "plain"
    shutil.copytree(
        tiny_models_dir / SUMMARIZER_NAME, folder, ignore=shutil.ignore_patterns("onnx")
    )
    engine = SummarizerEngine.load(folder, device="cpu")
    assert engine.backend == "torch"
    with pytest.raises(ModelError, match="no ONNX export"):
        SummarizerEngine.load(folder, device="cpu", backend="onnx")


def test_export_onnx_command_writes_a_verified_model(tiny_models_dir: Path, tmp_path: Path) -> None:
    src = tmp_path / "models" / "sum"
    shutil.copytree(tiny_models_dir / SUMMARIZER_NAME, src, ignore=shutil.ignore_patterns("onnx"))
    # Inside the source folder: the source manifest is rewritten to list the export.
    result = CliRunner().invoke(cli, ["models", "export-onnx", str(src), str(src / "onnx")])
    assert result.exit_code == 0, result.output
    info = read_manifest(src)
    assert "onnx/model.onnx" in info.files and verify(info) == []
    assert SummarizerEngine.load(src, device="cpu").backend == "onnx"
    # Elsewhere: a model folder of its own.
    dst = tmp_path / "models" / "sum-onnx"
    result = CliRunner().invoke(cli, ["models", "export-onnx", str(src), str(dst)])
    assert result.exit_code == 0, result.output
    exported = ModelRegistry(tmp_path / "models").get(f"{SUMMARIZER_NAME}-onnx")
    assert exported.role == "summarizer" and verify(exported) == []
    assert SummarizerEngine.load(dst, device="cpu").backend == "onnx"


def test_export_onnx_rejects_a_non_model(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["models", "export-onnx", str(tmp_path), str(tmp_path / "o")])
    assert result.exit_code == 2
    assert (
        result.output.strip()
        == f"error: export-onnx: {tmp_path} is not a model folder (no config.json)"
    )


def test_cpu_threads_size_the_onnxruntime_pool(tiny_models_dir: Path) -> None:
    engine = SummarizerEngine.load(tiny_models_dir / SUMMARIZER_NAME, device="cpu", cpu_threads=1)
    assert engine.model.session.get_session_options().intra_op_num_threads == 1
    assert engine.summarize("one thread is enough", max_new_tokens=4).token_ids
