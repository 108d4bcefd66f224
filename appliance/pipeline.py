"""The in-process pipeline: file bytes in, `AnalysisResult` out. No Redis, no HTTP.

The CLI calls it directly; Celery tasks, the web app and the watcher reach it through the job
queue. Models are loaded lazily, once per process, and kept warm.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from functools import cached_property
from pathlib import Path

from PIL import Image

from appliance.engines.common import set_cpu_threads
from appliance.engines.model_thread import ModelThread
from appliance.engines.run import run_tasks
from appliance.engines.summarizer import SummarizerEngine
from appliance.engines.vision import VisionEngine
from appliance.intake import load_pages
from appliance.registry import ModelRegistry
from appliance.schema import AnalysisResult, PageResult, TaskRequest
from appliance.settings import Settings

# Pages pushed through one padded forward pass; larger batches gain little on one GPU.
DEFAULT_MAX_BATCH = 8


class Pipeline:
    def __init__(self, settings: Settings, max_batch: int = DEFAULT_MAX_BATCH) -> None:
        self.settings = settings
        self.max_batch = max_batch
        self.registry = ModelRegistry(settings.models_dir)
        set_cpu_threads(settings.cpu_threads)
        self.thread = ModelThread()

    @cached_property
    def vision(self) -> VisionEngine:
        info = self.registry.resolve("vision", self.settings.vision_model)
        return VisionEngine.load(
            info.path,
            device=self.settings.device,
            dtype=self.settings.dtype,
            quantization=self.settings.quantization,
        )

    @cached_property
    def summarizer(self) -> SummarizerEngine:
        info = self.registry.resolve("summarizer", self.settings.summarizer_model)
        return SummarizerEngine.load(
            info.path, device=self.settings.device, cpu_threads=self.settings.cpu_threads
        )

    def warm(self, vision: bool = True, summarizer: bool = True) -> None:
        """Load the models and run one tiny generation so the first job pays no start-up."""
        if vision:
            probe = Image.new("RGB", (64, 64), (128, 128, 128))
            self.analyze_pages([probe], TaskRequest(task="caption", max_new_tokens=2))
        if summarizer:
            self.thread.run(lambda: self.summarizer.summarize("warm-up", max_new_tokens=2))

    def load(self, data: bytes) -> list[Image.Image]:
        return load_pages(data, self.settings.limits)

    def analyze_pages(self, pages: list[Image.Image], req: TaskRequest) -> AnalysisResult:
        return self.analyze_many([(pages, req)])[0]

    def analyze_many(
        self,
        items: list[tuple[list[Image.Image], TaskRequest]],
        should_stop: Callable[[], bool] | None = None,
    ) -> list[AnalysisResult]:
        """Every page of every item through shared padded batches (dynamic batching).

        `should_stop()` returning True ends the generation early with `Cancelled`."""
        started = time.perf_counter()
        per_item = self.thread.run(
            lambda: run_tasks(
                self.vision,
                items,
                self.settings.generation,
                self.max_batch,
                should_stop=should_stop,
            )
        )
        elapsed_ms = (time.perf_counter() - started) * 1000
        results = []
        for (_pages, req), page_results in zip(items, per_item, strict=True):
            result = self.result_for(req, page_results, elapsed_ms)
            if req.summarize:
                result.summary = self.summarize(result, req.language)
            results.append(result)
        return results

    def result_for(
        self, req: TaskRequest, pages: list[PageResult], wall_ms: float
    ) -> AnalysisResult:
        """One request's result from its pages' results."""
        return AnalysisResult(
            task=req.task,
            model=self.vision.name,
            pages=pages,
            timings=_sum_timings(pages) | {"wall_ms": wall_ms},
        )

    def analyze_bytes(self, data: bytes, req: TaskRequest) -> AnalysisResult:
        started = time.perf_counter()
        pages = self.load(data)
        intake_ms = (time.perf_counter() - started) * 1000
        result = self.analyze_pages(pages, req)
        result.timings["intake_ms"] = intake_ms
        return result

    def analyze_file(self, path: Path, req: TaskRequest) -> AnalysisResult:
        return self.analyze_bytes(Path(path).read_bytes(), req)

    def summarize(self, result: AnalysisResult, language: str = "en") -> str:
        return self.thread.run(
            lambda: self.summarizer.summarize(result.text, language=language).text
        )

    def digest(self, texts: list[str], language: str = "en") -> str:
        return self.thread.run(lambda: self.summarizer.digest(texts, language=language).text)


def _sum_timings(pages: list[PageResult]) -> dict[str, float]:
    total: dict[str, float] = {}
    for page in pages:
        for key, value in page.timings.items():
            if key.endswith("_ms"):
                total[key] = total.get(key, 0.0) + value
    tokens = sum(p.tokens for p in pages)
    decode_s = total.get("decode_ms", 0.0) / 1000
    if decode_s > 0:
        total["tokens_per_s"] = tokens / decode_s
    return total
