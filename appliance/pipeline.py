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
from appliance.engines.guard import TEXT_GUARD, VISION_GUARD, GuardEngine
from appliance.engines.model_thread import ModelThread
from appliance.engines.run import run_tasks
from appliance.engines.summarizer import SummarizerEngine
from appliance.engines.vision import VisionEngine
from appliance.errors import ModelError, SafetyBlocked
from appliance.intake import load_pages
from appliance.presets import build_prompt
from appliance.registry import ModelInfo, ModelRegistry
from appliance.safety.stage import SafetyStage
from appliance.safety.verdicts import Check, blocking, reason
from appliance.schema import AnalysisResult, PageResult, Prompt, TaskRequest
from appliance.settings import Settings
from appliance.vocab import OFF, SUMMARY

# Pages pushed through one padded forward pass; larger batches gain little on one GPU.
DEFAULT_MAX_BATCH = 8


class Pipeline:
    def __init__(self, settings: Settings, max_batch: int = DEFAULT_MAX_BATCH) -> None:
        self.settings = settings
        self.max_batch = max_batch
        self.registry = ModelRegistry(settings.models_dir)
        set_cpu_threads(settings.cpu_threads)
        self.thread = ModelThread()
        self._guards: dict[str, GuardEngine] = {}

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

    @cached_property
    def safety(self) -> SafetyStage:
        return SafetyStage(self.settings.safety, self.guard)

    def guard(self, image: bool) -> GuardEngine:
        """The guard for a check: the vision guard where there is an image, the 1B guard for
        text; either stands in for the other when only one is installed. Loaded once."""
        key = VISION_GUARD if image else TEXT_GUARD
        if key not in self._guards:
            info = self._guard_info(key)
            cached = next((g for g in self._guards.values() if g.name == info.name), None)
            self._guards[key] = cached or GuardEngine.load(
                info.path,
                device=self.settings.device,
                dtype=self.settings.dtype,
                quantization=self.settings.quantization,
            )
        return self._guards[key]

    def _guard_info(self, architecture: str) -> ModelInfo:
        conf = self.settings.safety
        named = conf.vision_model if architecture == VISION_GUARD else conf.text_model
        if named:
            return self.registry.resolve("safety", named)
        guards = [m for m in self.registry.list() if m.role == "safety"]
        for info in sorted(guards, key=lambda m: m.architecture != architecture):
            return info
        raise ModelError(f"no safety model installed in {self.registry.root}")

    def warm(self, vision: bool = True, summarizer: bool = True) -> None:
        """Load the models and run one tiny generation so the first job pays no start-up."""
        if vision:
            probe = Image.new("RGB", (64, 64), (128, 128, 128))
            self.analyze_pages([probe], TaskRequest(task="caption", max_new_tokens=2))
        if summarizer:
            self.thread.run(lambda: self.summarizer.summarize("warm-up", max_new_tokens=2))
        if vision and safety_wanted(self.settings):
            # The guards share this process (and its GPU) with the vision model: loaded once.
            probe = Image.new("RGB", (64, 64), (128, 128, 128))
            self.thread.run(lambda: self.safety.check_input([([probe], "warm-up"), ([None], "x")]))

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
            result = AnalysisResult(
                task=req.task,
                model=self.vision.name,
                pages=page_results,
                timings=_sum_timings(page_results) | {"wall_ms": elapsed_ms},
            )
            if req.summarize:
                result.summary = self.summarize(result, req.language)
            results.append(result)
        return results

    def analyze_checked(
        self,
        items: list[tuple[list[Image.Image], TaskRequest]],
        should_stop: Callable[[], bool] | None = None,
    ) -> list[AnalysisResult | SafetyBlocked]:
        """`analyze_many` with each item's safety policy (`req.safety`): the input check
        before analysis, the output check after it, as configured; a `block` item that a
        check stops comes back as `SafetyBlocked` in its place, its answer withheld."""
        stage = self.safety
        checks: list[list[Check]] = [[] for _ in items]
        guarded = [i for i, (_, req) in enumerate(items) if req.safety != OFF]
        stopped: dict[int, Check] = {}
        if guarded and stage.checks_input:
            asked = [(_rows(items[i]), _prompt(items[i][1])) for i in guarded]
            self._note(items, guarded, self.thread.run(stage.check_input, asked), checks, stopped)
        run = [i for i in range(len(items)) if i not in stopped]
        analysed = self.analyze_many([items[i] for i in run], should_stop)
        results = dict(zip(run, analysed, strict=True))
        guarded = [i for i in guarded if i in results]
        if guarded and stage.checks_output:
            answered = [
                (_rows(items[i]), _prompt(items[i][1]), [p.text for p in results[i].pages])
                for i in guarded
            ]
            got = self.thread.run(stage.check_output, answered)
            self._note(items, guarded, got, checks, stopped)
        out: list[AnalysisResult | SafetyBlocked] = []
        for i in range(len(items)):
            mine = [c.to_dict() for c in checks[i]]
            if i in stopped:
                names = stage.categories
                out.append(SafetyBlocked(reason(stopped[i], names), mine))
                continue
            results[i].safety = mine
            self._check_summary(results[i], items[i][1])
            out.append(results[i])
        return out

    def _note(
        self,
        items: list[tuple[list[Image.Image], TaskRequest]],
        guarded: list[int],
        got: list[Check],
        checks: list[list[Check]],
        stopped: dict[int, Check],
    ) -> None:
        fail_mode = self.settings.safety.fail_mode
        for i, check in zip(guarded, got, strict=True):
            checks[i].append(check)
            hit = blocking([check], items[i][1].safety, fail_mode)
            if hit is not None and i not in stopped:
                stopped[i] = hit

    def _check_summary(self, result: AnalysisResult, req: TaskRequest) -> None:
        """The text guard on an in-process summary; a `block` hit withholds the summary."""
        conf = self.settings.safety
        if result.summary is None or req.safety == OFF or not conf.check_summaries:
            return
        check = self.check_text(SUMMARY, result.summary)
        result.safety.append(check.to_dict())
        if blocking([check], req.safety, conf.fail_mode) is not None:
            result.summary = None

    def check_text(self, stage: str, text: str) -> Check:
        """One follow-up text (a summary, a digest) through the text guard."""
        return self.thread.run(lambda: self.safety.check_text(stage, [text])[0])

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


def safety_wanted(settings: Settings) -> bool:
    """Whether any source may ask for the safety stage (so a worker loads the guards)."""
    conf = settings.safety
    modes = [conf.panel, conf.api, conf.openai, conf.cli, *conf.tokens.values()]
    return any(mode != OFF for mode in [*modes, *(f.safety for f in settings.folders)])


def _rows(item: tuple[list[Image.Image], TaskRequest]) -> list[Image.Image | None]:
    pages, req = item
    return list(pages) if req.has_image else [None]


def _prompt(req: TaskRequest) -> Prompt:
    return list(req.messages) if req.task == "chat" else build_prompt(req)


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
