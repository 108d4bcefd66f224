"""Run task requests through a vision engine: batching, parsing, the one repair retry."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, Protocol, overload

from PIL import Image

from appliance.engines.common import Generation, GenParams
from appliance.engines.inflight import InflightBatch, RowRequest
from appliance.errors import ApplianceError, Cancelled, ExtractionFailed
from appliance.presets import STRUCTURED_TASKS, build_prompt, parse_output, repair_prompt
from appliance.schema import PageResult, Prompt, TaskRequest
from appliance.settings import Generation as GenerationDefaults

DEFAULT_MAX_BATCH = 8


class BatchEngine(Protocol):
    def inflight(self, max_rows: int) -> InflightBatch: ...


@dataclass
class _Page:
    item: int
    page: int  # 0-based
    image: Image.Image | None  # None: a text-only chat
    prompt: Prompt
    params: GenParams
    gen: Generation | None = None
    data: object = None
    error: str | None = None
    attempts: int = 0


def params_for(
    req: TaskRequest,
    defaults: GenerationDefaults,
    should_stop: Callable[[], bool] | None = None,
) -> GenParams:
    return GenParams(
        max_new_tokens=req.max_new_tokens or defaults.max_new_tokens,
        temperature=req.temperature if req.temperature is not None else defaults.temperature,
        seed=req.seed if req.seed is not None else defaults.seed,
        should_stop=should_stop,
    )


def run_task(
    engine: BatchEngine,
    pages: list[Image.Image],
    req: TaskRequest,
    defaults: GenerationDefaults,
    max_batch: int = DEFAULT_MAX_BATCH,
) -> list[PageResult]:
    """All pages of one request. Raises ExtractionFailed if a page fails after its repair retry."""
    return run_tasks(engine, [(pages, req)], defaults, max_batch)[0]


@overload
def run_tasks(
    engine: BatchEngine,
    items: list[tuple[list[Image.Image], TaskRequest]],
    defaults: GenerationDefaults,
    max_batch: int = ...,
    *,
    errors: Literal["raise"] = ...,
    should_stop: Callable[[], bool] | None = ...,
) -> list[list[PageResult]]: ...


@overload
def run_tasks(
    engine: BatchEngine,
    items: list[tuple[list[Image.Image], TaskRequest]],
    defaults: GenerationDefaults,
    max_batch: int = ...,
    *,
    errors: Literal["return"],
    should_stop: Callable[[], bool] | None = ...,
) -> list[list[PageResult] | ApplianceError]: ...


def run_tasks(
    engine: BatchEngine,
    items: list[tuple[list[Image.Image], TaskRequest]],
    defaults: GenerationDefaults,
    max_batch: int = DEFAULT_MAX_BATCH,
    *,
    errors: Literal["raise", "return"] = "raise",
    should_stop: Callable[[], bool] | None = None,
) -> list[list[PageResult]] | list[list[PageResult] | ApplianceError]:
    """Many requests at once: every page is a row of one in-flight batch of up to `max_batch`
    rows (rows of any generation parameters share it; a row that ends frees its place).

    A structured answer (classify, extract) that fails to parse gets one repair retry, a row
    that joins the running batch; if it still fails, the item's ExtractionFailed is raised
    (`errors="raise"`), or put in that item's place (`errors="return"`, for the queue: one bad
    item must not fail its batch mates). `should_stop` ends the run early with `Cancelled`.
    """
    runs = [ItemRun(images, req, defaults, should_stop) for images, req in items]
    batch = engine.inflight(max_batch)
    for run in runs:
        for row in run.rows():
            batch.add(row)
    while batch.busy:
        if should_stop is not None and should_stop():
            batch.clear()
            raise Cancelled("cancelled while it ran")
        for done in batch.step():
            if done.error is not None:
                raise done.error
            run, page = done.key
            assert done.generation is not None
            for row in run.finish(page, done.generation):
                batch.add(row)
    out: list[list[PageResult] | ApplianceError] = []
    for run in runs:
        result = run.results()
        if isinstance(result, ApplianceError) and errors == "raise":
            raise result
        out.append(result)
    return out


class ItemRun:
    """One request's pages as rows of an in-flight batch: its rows, its parsing and its one
    repair retry. Keys its rows `(self, page index)`."""

    def __init__(
        self,
        images: list[Image.Image],
        req: TaskRequest,
        defaults: GenerationDefaults,
        should_stop: Callable[[], bool] | None = None,
        **row_options: Any,
    ) -> None:
        self.req = req
        self.row_options = row_options  # priority, deadline, on_text for RowRequest
        self.pages = [
            _Page(0, p, image, _prompt(req), params_for(req, defaults, should_stop))
            for p, image in enumerate(_inputs(images, req))
        ]
        self._first_timings: dict[int, dict[str, float]] = {}
        self.open = len(self.pages)

    @property
    def done(self) -> bool:
        return self.open == 0

    def rows(self) -> list[RowRequest]:
        return [self._row(page) for page in self.pages]

    def _row(self, page: _Page) -> RowRequest:
        return RowRequest(
            page.image, page.prompt, page.params, key=(self, page.page), **self.row_options
        )

    def finish(self, index: int, gen: Generation) -> list[RowRequest]:
        """Take a page's generation; returns its repair row if it needs one."""
        page = self.pages[index]
        if page.attempts and index in self._first_timings:
            gen.timings = _add(self._first_timings[index], gen.timings)
        page.gen = gen
        page.attempts += 1
        _parse(page, self.req)
        if page.error is not None and self.req.task in STRUCTURED_TASKS and page.attempts == 1:
            self._first_timings[index] = dict(gen.timings)
            page.prompt = repair_prompt(self.req, gen.text, page.error)
            return [self._row(page)]
        self.open -= 1
        return []

    def results(self) -> list[PageResult] | ApplianceError:
        failed = next((p for p in self.pages if p.error is not None), None)
        if failed is not None:
            where = f"page {failed.page + 1}: " if len(self.pages) > 1 else ""
            return ExtractionFailed(
                f"{self.req.task} failed after {failed.attempts - 1} repair retry: "
                f"{where}{failed.error}"
            )
        return [_result(p) for p in self.pages]


def _prompt(req: TaskRequest) -> Prompt:
    # A conversation goes to the model as it came: its turns are the prompt, no preset wraps it.
    return list(req.messages) if req.task == "chat" else build_prompt(req)


def _inputs(images: list[Image.Image], req: TaskRequest) -> list[Image.Image | None]:
    """One row per page; a text-only chat has no page and is one row without an image."""
    return list(images) if req.has_image else [None]


def _parse(page: _Page, req: TaskRequest) -> None:
    assert page.gen is not None
    try:
        page.data, page.error = parse_output(req, page.gen.text), None
    except ExtractionFailed as err:
        page.data, page.error = None, str(err)


def _add(first: dict[str, float], second: dict[str, float]) -> dict[str, float]:
    summed = {
        k: first.get(k, 0.0) + second.get(k, 0.0)
        for k in ("preprocess_ms", "prefill_ms", "decode_ms")
    }
    return {**second, **summed}


def _result(page: _Page) -> PageResult:
    assert page.gen is not None
    return PageResult(
        page=page.page + 1,
        text=page.gen.text,
        data=page.data,
        tokens=len(page.gen.token_ids),
        finish_reason=page.gen.finish_reason,
        prompt_tokens=page.gen.prompt_tokens,
        timings={**page.gen.timings, "attempts": float(page.attempts)},
    )
