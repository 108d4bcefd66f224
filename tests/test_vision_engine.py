"""VisionEngine on the tiny Mllama: the same loader as for the real 11B weights."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from appliance.build.tiny import VISION_NAME
from appliance.engines.common import Generation
from appliance.engines.compare import divergence
from appliance.engines.inflight import InflightBatch, RowRequest
from appliance.engines.run import run_task, run_tasks
from appliance.engines.vision import IMAGE_TOKEN, GenParams, VisionEngine
from appliance.errors import ApplianceError, Cancelled, ExtractionFailed, ModelError
from appliance.schema import TaskRequest
from appliance.settings import Generation as Defaults

TIMING_KEYS = {"preprocess_ms", "prefill_ms", "decode_ms", "tokens_per_s"}


class CountingEngine:
    """Gives out the real engine's in-flight batches and records the prompt of every row they
    are given (calls are not faked)."""

    def __init__(self, engine: VisionEngine) -> None:
        self.engine = engine
        self.prompts: list[str] = []

    def inflight(self, max_rows: int) -> InflightBatch:
        batch = self.engine.inflight(max_rows)
        add = batch.add

        def counted(row: RowRequest) -> None:
            self.prompts.append(str(row.prompt))
            add(row)

        batch.add = counted  # type: ignore[method-assign]
        return batch


def test_loads_through_the_production_loader(vision_engine: VisionEngine) -> None:
    assert vision_engine.name == VISION_NAME
    assert vision_engine.device == torch.device("cpu")
    assert vision_engine.model.dtype == torch.float32
    text = vision_engine.build_text("What is this?")
    assert text.startswith("<|begin_of_text|><|start_header_id|>user<|end_header_id|>")
    assert text.count(IMAGE_TOKEN) == 1 and "What is this?" in text
    assert text.endswith("<|start_header_id|>assistant<|end_header_id|>\n\n")


def test_generates_text_for_a_photograph(vision_engine: VisionEngine, make_photo) -> None:
    photo = make_photo(seed=1)
    assert photo.size == (640, 480)
    gen = vision_engine.generate(photo, "Describe this photo.", GenParams(max_new_tokens=16))
    assert gen.text.strip()
    assert 0 < len(gen.token_ids) <= 16
    assert len(set(gen.token_ids)) > 1  # a real forward pass, not one stuck token
    assert set(gen.timings) >= TIMING_KEYS
    assert gen.timings["prefill_ms"] > 0 and gen.timings["decode_ms"] > 0
    # Greedy decoding is deterministic.
    again = vision_engine.generate(photo, "Describe this photo.", GenParams(max_new_tokens=16))
    assert again.token_ids == gen.token_ids


def test_output_depends_on_image_and_prompt(vision_engine: VisionEngine, make_photo) -> None:
    params = GenParams(max_new_tokens=12)
    a = vision_engine.generate(make_photo(seed=0), "Caption this.", params)
    b = vision_engine.generate(make_photo(seed=3), "Caption this.", params)
    c = vision_engine.generate(make_photo(seed=0), "Transcribe the text.", params)
    assert a.token_ids != b.token_ids
    assert a.token_ids != c.token_ids


def test_batch_equals_single_calls(vision_engine: VisionEngine, make_photo) -> None:
    images = [
        make_photo(seed=0),
        make_photo(seed=1, size=(480, 640)),  # portrait: a different tile layout
        make_photo(seed=2, size=(1000, 300)),
        Image.new("L", (200, 200), 128),  # greyscale input is converted
    ]
    prompts = [
        "Caption this.",
        "What colour is the sky in this photograph? Answer in one word, please.",
        "Transcribe all text.",
        "Describe it for a screen reader user.",
    ]
    params = GenParams(max_new_tokens=20, return_logits=True)
    batch = vision_engine.generate_batch(images, prompts, params)
    singles = [vision_engine.generate(i, p, params) for i, p in zip(images, prompts, strict=True)]
    assert len(batch) == 4
    for row, (b, s) in enumerate(zip(batch, singles, strict=True)):
        assert divergence(b, s) is None, f"row {row}: {divergence(b, s)}"
        assert b.text == s.text or b.token_ids != s.token_ids
    assert len({tuple(g.token_ids) for g in batch}) == 4


def test_divergence_accepts_only_genuine_near_ties() -> None:
    logits = torch.zeros(3, 10)
    logits[:, 5] = 2.0
    logits[1, 7] = 2.0 - 3e-5  # run a: token 5 wins by a hair
    a = Generation("a", [5, 5, 5], logits=logits.clone())
    tied = logits.clone()
    tied[1, 7] = 2.0 + 3e-5  # run b: token 7 wins by a hair; both logits agree within 1e-4
    assert divergence(a, Generation("b", [5, 7, 5], logits=tied)) is None
    clear = logits.clone()
    clear[1, 7] = 3.0
    assert "no near tie" in (divergence(a, Generation("c", [5, 7, 5], logits=clear)) or "")
    assert "no logits" in (divergence(a, Generation("d", [5, 7, 5])) or "")


def test_seed_is_honoured_when_sampling(vision_engine: VisionEngine, make_photo) -> None:
    photo = make_photo(seed=4)
    sample = GenParams(max_new_tokens=12, temperature=1.5, seed=7)
    first = vision_engine.generate(photo, "Caption this.", sample)
    second = vision_engine.generate(photo, "Caption this.", sample)
    other = vision_engine.generate(photo, "Caption this.", GenParams(12, 1.5, seed=8))
    assert first.token_ids == second.token_ids
    assert first.token_ids != other.token_ids


def test_run_task_returns_one_result_per_page(vision_engine: VisionEngine, make_photo) -> None:
    pages = [make_photo(seed=s) for s in range(3)]
    counting = CountingEngine(vision_engine)
    results = run_task(
        counting, pages, TaskRequest(task="ocr", max_new_tokens=8), Defaults(), max_batch=2
    )
    assert [r.page for r in results] == [1, 2, 3]
    assert all(r.text and 0 < r.tokens <= 8 for r in results)
    assert all(set(r.timings) >= TIMING_KEYS for r in results)
    assert len(counting.prompts) == 3
    assert all(r.timings["batch_size"] <= 2 for r in results)  # never more rows than max_batch


def test_extract_fails_clearly_after_exactly_one_repair(vision_engine, make_photo) -> None:
    counting = CountingEngine(vision_engine)
    req = TaskRequest(task="extract", fields=["invoice_number", "total"], max_new_tokens=8)
    with pytest.raises(ExtractionFailed, match=r"^extract failed after 1 repair retry: ") as info:
        run_task(counting, [make_photo(seed=5)], req, Defaults())
    assert "\n" not in str(info.value)
    assert len(counting.prompts) == 2
    assert "Your previous answer was" in counting.prompts[1]


def test_run_tasks_batches_items_and_isolates_failures(vision_engine, make_photo) -> None:
    counting = CountingEngine(vision_engine)
    items = [
        ([make_photo(seed=0), make_photo(seed=1)], TaskRequest(task="caption", max_new_tokens=6)),
        ([make_photo(seed=2)], TaskRequest(task="classify", labels=["x1", "y2"], max_new_tokens=6)),
        ([make_photo(seed=3)], TaskRequest(task="question", prompt="Why?", max_new_tokens=6)),
    ]
    out = run_tasks(counting, items, Defaults(), 8, errors="return")
    assert len(counting.prompts) == 5  # all pages, then one repair row
    assert [len(r) for r in out if isinstance(r, list)] == [2, 1]
    assert isinstance(out[1], ApplianceError) and "classify failed" in str(out[1])
    with pytest.raises(ExtractionFailed):
        run_tasks(vision_engine, items, Defaults(), 8)


def test_int8_weight_only_quantization_on_cpu(tiny_models_dir: Path, make_photo) -> None:
    engine = VisionEngine.load(tiny_models_dir / VISION_NAME, device="cpu", quantization="int8")
    weight = engine.model.model.language_model.layers[0].self_attn.q_proj.weight
    assert "Int8" in type(weight).__name__
    gen = engine.generate(make_photo(seed=2), "Caption this.", GenParams(max_new_tokens=10))
    assert gen.text and len(gen.token_ids) > 0


def test_missing_model_dir_is_a_model_error(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match=r"folder .* does not exist"):
        VisionEngine.load(tmp_path / "nothing", device="cpu")
    with pytest.raises(ModelError, match="unknown quantization"):
        VisionEngine.load(tmp_path, device="cpu", quantization="int3")


def test_pipeline_sizes_the_torch_thread_pool(tiny_models_dir: Path, make_photo, tmp_path) -> None:
    from appliance.pipeline import Pipeline
    from appliance.settings import load_settings

    before = torch.get_num_threads()
    settings = load_settings(
        config_file=tmp_path / "none.toml",
        models_dir=tiny_models_dir,
        data_dir=tmp_path,
        device="cpu",
        cpu_threads=1,
    )
    try:
        pipeline = Pipeline(settings)
        assert torch.get_num_threads() == 1
        result = pipeline.analyze_pages([make_photo(1)], TaskRequest(max_new_tokens=4))
        assert result.pages[0].text
    finally:
        torch.set_num_threads(before)


def test_should_stop_ends_the_generation_early(vision_engine: VisionEngine, make_photo) -> None:
    asked: list[int] = []

    def should_stop() -> bool:
        asked.append(1)
        return len(asked) >= 5

    params = GenParams(max_new_tokens=60, min_new_tokens=60, should_stop=should_stop)
    with pytest.raises(Cancelled):
        vision_engine.generate_batch([make_photo(2)], ["Describe the image."], params)
    # Asked once per decoding step: it stopped at the 5th of 60 steps, not after the last.
    assert 5 <= len(asked) <= 7


def test_model_calls_cost_the_same_from_any_caller_stack_depth(
    tiny_models_dir: Path, tmp_path
) -> None:
    """The pipeline runs the model on its own thread: a caller's deep stack (Celery, the job
    runner) must not make CPython 3.11 map and unmap frame-stack chunks on every token."""
    import resource
    import sys

    from appliance.pipeline import Pipeline
    from appliance.settings import load_settings

    settings = load_settings(
        config_file=tmp_path / "none.toml", models_dir=tiny_models_dir, data_dir=tmp_path
    )
    pipeline = Pipeline(settings.model_copy(update={"device": "cpu"}))
    image = Image.new("RGB", (160, 120), (10, 200, 30))
    request = TaskRequest(task="caption", max_new_tokens=32)

    def at_depth(depth: int, call):  # noqa: ANN001, ANN202 - frames of a fixed size
        if depth == 0:
            return call()
        # ~300 bytes of frame each: 60 of them span more than one 16 KiB frame-stack chunk.
        a = b = c = d = e = f = g = h = i = j = k = m = n = o = p = q = r = s = t = u = depth  # noqa: F841
        return at_depth(depth - 1, call)

    def page_faults(call) -> list[int]:  # noqa: ANN001
        counts = []
        for depth in range(0, 60, 3):
            at_depth(depth, call)
            before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            at_depth(depth, call)
            counts.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
        return counts

    through_pipeline = page_faults(lambda: pipeline.analyze_pages([image], request))
    assert max(through_pipeline) < 150, through_pipeline
    if sys.version_info[:2] == (3, 11):  # the control: called directly, some depths thrash
        direct = page_faults(
            lambda: run_tasks(pipeline.vision, [([image], request)], settings.generation)
        )
        assert max(direct) > 2 * 150, direct  # twice the bound above (585 and more seen)
