"""The safety stage: which guard judges what, in batches, and one `Check` per item and stage.

An item is one job (all its pages). The input check judges each page's image with the prompt
as a user turn (vision guard); the output check judges the answer as the agent turn after it;
summaries and digests are text (1B guard). Pages of one item are judged in the same batch and
their verdicts combined: unsafe if any page is, with the union of codes; unparsable if any page
is and none is unsafe.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from PIL import Image

from appliance.engines.guard import GuardEngine, GuardRow
from appliance.safety.template import DEFAULT_CATEGORIES
from appliance.safety.verdicts import Check, parse_verdict
from appliance.schema import ChatTurn, Prompt
from appliance.settings import Safety
from appliance.vocab import INPUT, OUTPUT, SAFE, UNPARSABLE, UNSAFE

# A summary or digest has no request of its own: the guard judges it as the answer to this.
_FOLLOW_UP = "Summarize the results of the image analysis."
_RAW_CHARS = 200


class SafetyStage:
    """Runs checks with the guards `guard(image: bool)` returns (loaded once, kept warm)."""

    def __init__(self, settings: Safety, guard: Callable[[bool], GuardEngine]) -> None:
        self.settings = settings
        self.guard = guard
        self.categories = {**DEFAULT_CATEGORIES, **settings.categories}
        self.excluded = [c for c in settings.exclude if c in self.categories]
        self.known = frozenset(c for c in self.categories if c not in self.excluded)

    @property
    def checks_input(self) -> bool:
        return self.settings.check in (INPUT, "both")

    @property
    def checks_output(self) -> bool:
        return self.settings.check in (OUTPUT, "both")

    def check_input(
        self, items: Sequence[tuple[Sequence[Image.Image | None], Prompt]]
    ) -> list[Check]:
        """One INPUT check per item: (its pages, or [None] for text only; its prompt)."""
        rows = [[GuardRow(conversation(p, image=img is not None), img) for img in pages]
                for pages, p in items]  # fmt: skip
        return self._run(INPUT, rows)

    def check_output(
        self, items: Sequence[tuple[Sequence[Image.Image | None], Prompt, Sequence[str]]]
    ) -> list[Check]:
        """One OUTPUT check per item: its pages, its prompt and each page's answer."""
        rows = [
            [GuardRow(conversation(p, image=img is not None, answer=a), img)
             for img, a in zip(pages, answers, strict=True)]
            for pages, p, answers in items
        ]  # fmt: skip
        return self._run(OUTPUT, rows)

    def check_text(self, stage: str, texts: Sequence[str]) -> list[Check]:
        """One check per follow-up text (summary, digest), by the text guard."""
        return self._run(stage, [[GuardRow(conversation(_FOLLOW_UP, False, t))] for t in texts])

    def _run(self, stage: str, per_item: list[list[GuardRow]]) -> list[Check]:
        flat = [row for rows in per_item for row in rows]
        if not flat:
            return []
        answers: dict[int, tuple[str, float, str]] = {}
        # The vision guard for rows with an image, the text guard for the rest; one padded
        # batch per guard.
        for with_image in (True, False):
            idx = [i for i, r in enumerate(flat) if (r.image is not None) == with_image]
            if idx:
                guard = self.guard(with_image)
                got = guard.classify([flat[i] for i in idx], self.categories, self.excluded)
                for i, (text, ms) in zip(idx, got, strict=True):
                    answers[i] = (text, ms, guard.name)
        checks, at = [], 0
        for rows in per_item:
            mine = [answers[i] for i in range(at, at + len(rows))]
            at += len(rows)
            checks.append(self._combine(stage, mine))
        return checks

    def _combine(self, stage: str, answers: list[tuple[str, float, str]]) -> Check:
        verdicts = [parse_verdict(text, self.known) for text, _, _ in answers]
        codes = list(dict.fromkeys(c for v, cs in verdicts if v == UNSAFE for c in cs))
        kinds = {v for v, _ in verdicts}
        verdict = UNSAFE if UNSAFE in kinds else UNPARSABLE if UNPARSABLE in kinds else SAFE
        odd = next(
            (t for (v, _), (t, _, _) in zip(verdicts, answers, strict=True) if v == verdict), ""
        )
        return Check(
            stage=stage,
            verdict=verdict,
            categories=codes,
            model=", ".join(dict.fromkeys(name for _, _, name in answers)),
            ms=round(sum(ms for _, ms, _ in answers), 3),
            raw=odd[:_RAW_CHARS] if verdict != SAFE else "",
        )


def conversation(prompt: Prompt, image: bool, answer: str | None = None) -> list[dict[str, Any]]:
    """Guard-template messages: user and assistant turns alternating, starting with a user
    turn (the template insists); system turns left out; the image in the user turn that had
    it; `answer` appended as the agent turn."""
    turns = (
        [ChatTurn(role="user", text=prompt, image=image)]
        if isinstance(prompt, str)
        else list(prompt)
    )
    turns = [t for t in turns if t.role != "system"]
    if image and not any(t.image for t in turns):
        turns = [t.model_copy(update={"image": True}) if i == 0 else t for i, t in enumerate(turns)]
    if answer is not None:
        turns.append(ChatTurn(role="assistant", text=answer))
    merged: list[dict[str, Any]] = []
    for turn in turns:
        if not merged and turn.role != "user":
            continue
        parts = [{"type": "image"}] if image and turn.image else []
        text = {"type": "text", "text": turn.text}
        if merged and merged[-1]["role"] == turn.role:
            merged[-1]["content"] = parts + merged[-1]["content"] + [text]
        else:
            merged.append({"role": turn.role, "content": [*parts, text]})
    return merged
