"""Run task requests through a vision engine: batching, parsing, the one repair retry."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, Protocol, overload

from PIL import Image

from appliance.engines.common import Generation, GenParams
from appliance.errors import ApplianceError, ExtractionFailed
from appliance.presets import STRUCTURED_TASKS, build_prompt, parse_output, repair_prompt
from appliance.schema import PageResult, Prompt, TaskRequest
from appliance.settings import Generation as GenerationDefaults

DEFAULT_MAX_BATCH = 8


class BatchEngine(Protocol):
    def generate_batch(
        self, images: list[Image.Image | None], prompts: list[Prompt], params: GenParams
    ) -> list[Generation]: ...


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
    """Many requests at once: every page goes through `generate_batch` in chunks of `max_batch`.

    A structured answer (classify, extract) that fails to parse gets one repair retry; if it
    still fails, the item's ExtractionFailed is raised (`errors="raise"`), or put in that item's
    place (`errors="return"`, for the queue: one bad item must not fail its batch mates).
    `should_stop` ends the generation early with `Cancelled` (see GenParams).
    """
    pages = [
        _Page(i, p, image, _prompt(req), params_for(req, defaults, should_stop))
        for i, (images, req) in enumerate(items)
        for p, image in enumerate(_inputs(images, req))
    ]
    _generate(engine, pages, max_batch)
    retry = []
    for page in pages:
        _parse(page, items[page.item][1])
        if page.error is not None and items[page.item][1].task in STRUCTURED_TASKS:
            req = items[page.item][1]
            assert page.gen is not None
            page.prompt = repair_prompt(req, page.gen.text, page.error)
            retry.append(page)
    first_timings = {id(p): dict(p.gen.timings) for p in retry if p.gen}
    _generate(engine, retry, max_batch)
    for page in retry:
        _parse(page, items[page.item][1])
        assert page.gen is not None
        page.gen.timings = _add(first_timings[id(page)], page.gen.timings)

    out: list[list[PageResult] | ApplianceError] = []
    for i, (_images, req) in enumerate(items):
        mine = [p for p in pages if p.item == i]
        failed = next((p for p in mine if p.error is not None), None)
        if failed is not None:
            where = f"page {failed.page + 1}: " if len(mine) > 1 else ""
            error = ExtractionFailed(
                f"{req.task} failed after {failed.attempts - 1} repair retry: {where}{failed.error}"
            )
            if errors == "raise":
                raise error
            out.append(error)
            continue
        out.append([_result(p) for p in mine])
    return out


def _prompt(req: TaskRequest) -> Prompt:
    # A conversation goes to the model as it came: its turns are the prompt, no preset wraps it.
    return list(req.messages) if req.task == "chat" else build_prompt(req)


def _inputs(images: list[Image.Image], req: TaskRequest) -> list[Image.Image | None]:
    """One row per page; a text-only chat has no page and is one row without an image."""
    return list(images) if req.has_image else [None]


def _generate(engine: BatchEngine, pages: list[_Page], max_batch: int) -> None:
    # Only rows with equal generation parameters can share one padded `generate` call.
    groups: dict[tuple, list[_Page]] = defaultdict(list)
    for page in pages:
        p = page.params
        groups[(p.max_new_tokens, p.temperature, p.seed)].append(page)
    for group in groups.values():
        for start in range(0, len(group), max(1, max_batch)):
            chunk = group[start : start + max_batch]
            gens = engine.generate_batch(
                [p.image for p in chunk], [p.prompt for p in chunk], chunk[0].params
            )
            for page, gen in zip(chunk, gens, strict=True):
                page.gen = gen
                page.attempts += 1


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
