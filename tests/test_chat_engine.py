"""The vision engine for chats on the tiny Mllama: text-only rows, conversations with the image
in an earlier turn, the prompt's token count, and why each row ended (`finish_reason`)."""

from __future__ import annotations

import pytest

from appliance.engines.run import run_tasks
from appliance.engines.vision import IMAGE_TOKEN, GenParams, VisionEngine
from appliance.errors import InvalidRequest
from appliance.schema import ChatTurn, TaskRequest
from appliance.settings import Generation as Defaults
from appliance.vocab import LENGTH, STOP

CONVERSATION = [
    ChatTurn(role="system", text="Answer in one word."),
    ChatTurn(role="user", text="What is in this photo?", image=True),
    ChatTurn(role="assistant", text="Houses."),
    ChatTurn(role="user", text="And what colour is the sky?"),
]


def _prompt_tokens(engine: VisionEngine, text: str, image=None) -> int:  # noqa: ANN001
    images = [[image]] if image is not None else None
    inputs = engine.processor(images=images, text=[text], add_special_tokens=False)
    return len(inputs["input_ids"][0])


def test_a_row_cut_by_max_new_tokens_says_length(vision_engine: VisionEngine, make_photo) -> None:
    gen = vision_engine.generate(make_photo(seed=4), "Describe this.", GenParams(max_new_tokens=6))
    # Random weights almost never pick an end-of-turn token in six steps: the budget cuts it.
    assert len(gen.token_ids) == 6 and gen.finish_reason == LENGTH


def test_a_row_that_ends_on_its_own_says_stop(vision_engine: VisionEngine, make_photo) -> None:
    photo = make_photo(seed=4)
    cut = vision_engine.generate(photo, "Describe this.", GenParams(max_new_tokens=6))
    # Steer the real model to end early: its own 4th token is made a stop token, as
    # <|eot_id|> is. The same greedy row then ends there, however large the budget.
    stop = cut.token_ids[3]
    ended = vision_engine.generate(
        photo, "Describe this.", GenParams(max_new_tokens=200, stop_token_ids=(stop,))
    )
    assert ended.finish_reason == STOP
    assert ended.token_ids == cut.token_ids[: cut.token_ids.index(stop)]
    assert stop not in ended.token_ids  # the end token is not part of the answer


def test_each_row_of_a_batch_says_why_it_ended(vision_engine: VisionEngine, make_photo) -> None:
    photos = [make_photo(seed=1), make_photo(seed=2), make_photo(seed=3)]
    prompts = ["Caption this.", "Transcribe all text.", "Describe this."]
    budget = GenParams(max_new_tokens=8)
    free = vision_engine.generate_batch(photos, prompts, budget)
    # A row that ended before its budget ended on an end-of-turn token (with today's tiny
    # weights the second row emits <|eot_id|> at once); a row that used it all was cut.
    for gen in free:
        assert (gen.finish_reason == LENGTH) == (len(gen.token_ids) == 8), gen
    cut = next(i for i, gen in enumerate(free) if gen.finish_reason == LENGTH)
    stop = free[cut].token_ids[2]
    rows = vision_engine.generate_batch(
        photos, prompts, GenParams(max_new_tokens=8, stop_token_ids=(stop,))
    )
    # The steered row now ends early and is padded while the others run on unchanged.
    assert rows[cut].finish_reason == STOP and len(rows[cut].token_ids) < 8
    for row, (gen, before) in enumerate(zip(rows, free, strict=True)):
        if row != cut and stop not in before.token_ids:
            assert (gen.token_ids, gen.finish_reason) == (before.token_ids, before.finish_reason)
    # Each row's prompt length without the batch's padding, image token included.
    for gen, photo, prompt in zip(rows, photos, prompts, strict=True):
        text = vision_engine.build_text(prompt)
        assert gen.prompt_tokens == _prompt_tokens(vision_engine, text, photo)


def test_a_text_only_prompt_is_answered(vision_engine: VisionEngine) -> None:
    text = vision_engine.build_text("Tell me about llamas.", image=False)
    assert IMAGE_TOKEN not in text and "Tell me about llamas." in text
    gen = vision_engine.generate(None, "Tell me about llamas.", GenParams(max_new_tokens=8))
    assert gen.text.strip() and len(set(gen.token_ids)) > 1
    assert gen.prompt_tokens == _prompt_tokens(vision_engine, text) > 0
    again = vision_engine.generate(None, "Tell me about camels.", GenParams(max_new_tokens=8))
    assert again.token_ids != gen.token_ids


def test_a_conversation_keeps_its_turns_and_places_the_image(vision_engine: VisionEngine) -> None:
    text = vision_engine.build_text(CONVERSATION)
    # The image goes into the turn that carried it; every earlier turn is part of the prompt.
    assert text.count(IMAGE_TOKEN) == 1
    order = [IMAGE_TOKEN, "What is in this photo?", "Houses.", "And what colour is the sky?"]
    assert [text.index(part) for part in order] == sorted(text.index(part) for part in order)
    # Llama 3.2 Vision's template refuses a system message beside an image: it joins the user.
    assert "<|start_header_id|>system" not in text and "Answer in one word." in text
    assert text.endswith("<|start_header_id|>assistant<|end_header_id|>\n\n")
    without = vision_engine.build_text(CONVERSATION, image=False)
    assert IMAGE_TOKEN not in without and "<|start_header_id|>system" in without


def test_a_batch_of_image_and_text_rows_equals_single_calls(
    vision_engine: VisionEngine, make_photo
) -> None:
    photo = make_photo(seed=3)
    images = [photo, None, photo]
    prompts = [CONVERSATION, "Hello there.", "Caption this."]
    params = GenParams(max_new_tokens=8)
    batch = vision_engine.generate_batch(images, prompts, params)
    singles = [vision_engine.generate(i, p, params) for i, p in zip(images, prompts, strict=True)]
    assert [g.token_ids for g in batch] == [g.token_ids for g in singles]
    assert [g.prompt_tokens for g in batch] == [g.prompt_tokens for g in singles]
    # The earlier turns count: the follow-up alone is a shorter prompt with another answer.
    alone = vision_engine.generate(photo, "And what colour is the sky?", params)
    assert batch[0].prompt_tokens > alone.prompt_tokens


def test_run_tasks_answers_chats_and_reports_each_page(
    vision_engine: VisionEngine, make_photo
) -> None:
    text_only = TaskRequest(
        task="chat", messages=[ChatTurn(role="user", text="Hello?")], max_new_tokens=3
    )
    with_image = TaskRequest(task="chat", messages=CONVERSATION, max_new_tokens=3)
    assert not text_only.has_image and with_image.has_image
    out = run_tasks(
        vision_engine, [([], text_only), ([make_photo(seed=5)], with_image)], Defaults()
    )
    for pages in out:
        assert len(pages) == 1 and pages[0].text
        assert pages[0].tokens == 3 and pages[0].finish_reason == LENGTH
        assert pages[0].prompt_tokens > 0


@pytest.mark.parametrize(
    ("turns", "reason"),
    [
        ([], "must end with a user message"),
        ([ChatTurn(role="user", text="Hi"), ChatTurn(role="assistant", text="Hello")], "end with"),
        ([ChatTurn(role="assistant", text="Hi", image=True), ChatTurn(role="user")], "one image"),
        ([ChatTurn(role="user", text="a", image=True)] * 2, "one image"),
    ],
)
def test_a_chat_request_is_checked(turns: list[ChatTurn], reason: str) -> None:
    with pytest.raises(InvalidRequest, match=reason):
        TaskRequest(task="chat", messages=turns)
