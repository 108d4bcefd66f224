"""Models roots with steered tiny guards: the real model call answers a chosen verdict.

`steered_root(tiny, root, vision=..., text=...)` links the session's tiny vision model and
summarizer into `root` and adds the two tiny guards, steered by their weights
(`appliance.build.tiny_guards.steer_guard`) to always answer the given text. Nothing is mocked:
the guards load through the production loader and run `generate`.
"""

from __future__ import annotations

from pathlib import Path

from appliance.build.tiny import SUMMARIZER_NAME, VISION_NAME
from appliance.build.tiny_guards import TEXT_GUARD_NAME, VISION_GUARD_NAME, steer_guard


def steered_root(tiny: Path, root: Path, *, vision: str, text: str) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for name in (VISION_NAME, SUMMARIZER_NAME):
        (root / name).symlink_to(tiny / name, target_is_directory=True)
    steer_guard(tiny / VISION_GUARD_NAME, root / VISION_GUARD_NAME, vision, VISION_GUARD_NAME)
    steer_guard(tiny / TEXT_GUARD_NAME, root / TEXT_GUARD_NAME, text, TEXT_GUARD_NAME)
    return root
