"""The in-flight batch (issue 14) on the tiny Mllama: rows join and leave at every step and
each row still gives what it gives alone."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from PIL import Image

from appliance.engines.compare import divergence
from appliance.engines.inflight import Finished, InflightBatch, RowRequest, _estimate_tokens
from appliance.engines.vision import GenParams, VisionEngine
from appliance.errors import Cancelled

# (width, height) -> tiles on the tiny model (56 px tiles, up to 4): 1, 2, 3 and 4 tiles.
TILED = {1: (50, 50), 2: (112, 56), 3: (168, 56), 4: (112, 112)}


def _photo(make_photo: Any, tiles: int, seed: int) -> Image.Image:
    return make_photo(seed=seed, size=TILED[tiles])


def _drive(batch: InflightBatch, arrivals: dict[int, list[RowRequest]]) -> dict[Any, Finished]:
    """Step the batch, adding `arrivals[n]` before step n; returns every row's end by key."""
    done: dict[Any, Finished] = {}
    step = 0
    while batch.busy or any(n >= step for n in arrivals):
        for row in arrivals.get(step, []):
            batch.add(row)
        for end in batch.step():
            done[end.key] = end
        step += 1
    return done


@pytest.fixture(scope="module")
def rows(make_photo_module: Any) -> list[tuple[Image.Image | None, str, int]]:
    photo = make_photo_module
    return [
        (_photo(photo, 1, 0), "Caption this.", 6),
        (_photo(photo, 4, 1), "Transcribe all text on this page, line by line.", 24),
        (None, "Write a short poem about the sea.", 16),
        (_photo(photo, 2, 2), "What colour is the sky?", 10),
        (_photo(photo, 3, 3), "Describe it for a screen reader user.", 20),
        (None, "Hello!", 4),
        (_photo(photo, 4, 4), "Caption this.", 12),
    ]


@pytest.fixture(scope="module")
def make_photo_module() -> Any:
    from tests.conftest import synthetic_photo

    return synthetic_photo


def test_tiny_images_cover_one_to_four_tiles(vision_engine: VisionEngine, rows: list) -> None:
    tiles = [
        int(vision_engine.row_inputs(image, "x")["aspect_ratio_mask"].sum())
        for image, _, _ in rows
        if image is not None
    ]
    assert sorted(set(tiles)) == [1, 2, 3, 4]


def test_alone_in_the_loop_equals_generate(vision_engine: VisionEngine, rows: list) -> None:
    """The loop itself is right: one row alone gives `generate`'s greedy tokens."""
    for image, prompt, limit in (rows[1], rows[2]):
        inputs = vision_engine.row_inputs(image, prompt)
        with torch.inference_mode():
            out = vision_engine.model.generate(
                **inputs, max_new_tokens=limit, do_sample=False, temperature=None, top_p=None
            )
        reference = out[0, inputs["input_ids"].shape[1] :].tolist()
        alone = vision_engine.generate(image, prompt, GenParams(max_new_tokens=limit))
        assert reference[: len(alone.token_ids)] == alone.token_ids
        assert len(alone.token_ids) == limit or reference[len(alone.token_ids)] in (
            vision_engine.end_ids
        )


def test_rows_joining_and_leaving_give_each_row_its_alone_tokens(
    vision_engine: VisionEngine, rows: list
) -> None:
    def request(i: int) -> RowRequest:
        image, prompt, limit = rows[i]
        return RowRequest(image, prompt, GenParams(max_new_tokens=limit, return_logits=True), i)

    alone = {i: vision_engine.generate_rows([request(i)])[0] for i in range(len(rows))}
    batch = vision_engine.inflight(max_rows=3)
    widths: list[int] = []
    step = batch.step

    def watched() -> list[Finished]:  # the real step, noting the batch's padded length
        ends = step()
        if batch.mask is not None:
            widths.append(batch.mask.shape[1] - max(r.length for r in batch.rows))
        return ends

    batch.step = watched  # type: ignore[method-assign]
    # Rows arrive over time: two at once, one after 2 steps, the rest while others decode.
    done = _drive(batch, {0: [request(0), request(1)], 2: [request(2)], 5: [request(3),
                  request(4)], 9: [request(5), request(6)]})  # fmt: skip
    assert sorted(done) == list(range(len(rows)))
    for i, end in done.items():
        assert end.error is None and end.generation is not None
        gen = end.generation
        assert divergence(gen, alone[i]) is None, f"row {i}: {divergence(gen, alone[i])}"
        assert len(gen.token_ids) <= rows[i][2]
    shared = [i for i, end in done.items() if end.generation.timings["batch_size"] > 1]
    assert len(shared) >= 5  # they really shared the batch
    assert widths and max(widths) == 0  # no column of padding outlives the rows that needed it


def test_a_sampled_row_gives_the_same_text_alone_and_in_a_busy_batch(
    vision_engine: VisionEngine, rows: list
) -> None:
    image, prompt, _ = rows[4]
    sampled = GenParams(max_new_tokens=14, temperature=1.2, seed=11, return_logits=True)
    alone = vision_engine.generate_rows([RowRequest(image, prompt, sampled)])[0]
    other = vision_engine.generate_rows([RowRequest(image, prompt, GenParams(14, 1.2, seed=12))])
    assert alone.token_ids != other[0].token_ids  # the seed decides
    busy = vision_engine.inflight(max_rows=4)
    greedy = [RowRequest(img, p, GenParams(max_new_tokens=n), k) for k, (img, p, n) in
              enumerate(rows[:3])]  # fmt: skip
    mine = RowRequest(image, prompt, sampled, "mine")
    done = _drive(busy, {0: greedy[:2], 3: [mine], 4: [greedy[2]]})
    assert done["mine"].generation.text == alone.text
    assert done["mine"].generation.timings["batch_size"] > 1


def test_memory_budget_limits_the_rows_admitted(vision_engine: VisionEngine) -> None:
    def row(key: int) -> RowRequest:
        return RowRequest(None, "Tell me a story.", GenParams(max_new_tokens=6), key)

    probe = vision_engine.inflight(max_rows=4)
    prompt_tokens = vision_engine.generate_rows([row(0)])[0].prompt_tokens
    held = probe.row_bytes(prompt_tokens, 6)  # what an admitted row holds
    asked = probe.row_bytes(_estimate_tokens(row(0)), 6)  # what a waiting row may need
    batch = vision_engine.inflight(max_rows=4, budget_bytes=held + asked)  # two rows fit
    for i in range(4):
        batch.add(row(i))
    seen: list[int] = []
    done: dict[Any, Finished] = {}
    while batch.busy:
        done.update({e.key: e for e in batch.step()})
        seen.append(len(batch.rows))
    assert sorted(done) == [0, 1, 2, 3] and all(e.error is None for e in done.values())
    assert max(seen) == 2
    tiny = vision_engine.inflight(max_rows=4, budget_bytes=1)  # an empty batch takes one row
    tiny.add(row(9))
    assert tiny.run_all()[0].generation is not None


def test_static_mode_admits_only_into_an_empty_batch(vision_engine: VisionEngine) -> None:
    batch = vision_engine.inflight(max_rows=4, static=True)
    batch.add(RowRequest(None, "Tell a long story.", GenParams(max_new_tokens=12), "long"))
    batch.step()
    batch.add(RowRequest(None, "Hi", GenParams(max_new_tokens=2), "late"))
    steps_with_both = 0
    while batch.busy:
        batch.step()
        steps_with_both += len(batch.rows) > 1
    assert steps_with_both == 0


def test_cancel_and_deadline_end_only_their_row(vision_engine: VisionEngine) -> None:
    import time

    batch = vision_engine.inflight(max_rows=4)
    batch.add(RowRequest(None, "Tell a story.", GenParams(12, min_new_tokens=12), "keep"))
    batch.add(RowRequest(None, "Tell a story.", GenParams(max_new_tokens=12), "stop"))
    late = RowRequest(None, "Hi there.", GenParams(max_new_tokens=12), "late")
    late.deadline = time.monotonic() - 1
    batch.add(late)
    first = batch.step()
    batch.cancel("stop")
    done = {e.key: e for e in [*first, *batch.run_all()]}
    assert isinstance(done["stop"].error, Cancelled)
    assert isinstance(done["late"].error, TimeoutError)
    assert done["keep"].generation is not None and len(done["keep"].generation.token_ids) > 1
