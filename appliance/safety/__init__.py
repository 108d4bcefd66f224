"""The safety stage: Llama Guard 3 judges inputs and answers, per-source policy off|flag|block.

- `template`: the guards' prompt format (chat template, categories S1..S13).
- `verdicts`: strict parsing of a guard's answer, the `Check` a job keeps, what blocks.
- `stage`: which guard judges what, batched; one check per job and stage.
- `mode_for`: the policy of a door (panel, API, OpenAI endpoint, CLI) and API token.
"""

from __future__ import annotations

from typing import Literal

from appliance.settings import Settings

Door = Literal["panel", "api", "openai", "cli"]


def mode_for(settings: Settings, door: Door, token: str | None = None) -> str:
    """The safety policy for a request through `door`; an API token's own policy wins for
    the API and the OpenAI endpoint. (Drop folders: `DropFolder.safety`.)"""
    conf = settings.safety
    if door in ("api", "openai") and token and token in conf.tokens:
        return conf.tokens[token]
    return str(getattr(conf, door))
