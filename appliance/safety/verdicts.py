"""A guard's answer, read strictly, and the record one check leaves on a job.

Llama Guard 3 answers `safe`, or `unsafe` and on the next line the violated codes
comma-separated (`S2`, `S1,S10`). Anything else (an empty answer, a third line, an unknown or
excluded code, `unsafe` without codes) is UNPARSABLE: the configured fail mode decides what it
means, so a broken guard can never read as safe.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Any

from appliance.vocab import BLOCK, CLOSED, FLAG, OFF, SAFE, UNPARSABLE, UNSAFE

_CODE = re.compile(r"^S[1-9][0-9]*$")


@dataclass(frozen=True)
class Check:
    """One guard call: which stage, the verdict, the violated codes, which model, how long."""

    stage: str
    verdict: str
    categories: list[str] = field(default_factory=list)
    model: str = ""
    ms: float = 0.0
    # The guard's raw answer, cut short: kept so an unparsable verdict can be looked at.
    raw: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Check:
        return cls(
            stage=str(data["stage"]),
            verdict=str(data["verdict"]),
            categories=[str(c) for c in data.get("categories") or []],
            model=str(data.get("model") or ""),
            ms=float(data.get("ms") or 0.0),
            raw=str(data.get("raw") or ""),
        )


def parse_verdict(text: str, known: set[str] | frozenset[str]) -> tuple[str, list[str]]:
    """(verdict, categories) from a guard's answer; `known` are the codes it was shown."""
    lines = [line.strip() for line in text.strip().splitlines()]
    if lines == [SAFE]:
        return SAFE, []
    if len(lines) == 2 and lines[0] == UNSAFE:
        codes = [c.strip() for c in lines[1].split(",")]
        if codes and all(_CODE.match(c) and c in known for c in codes):
            return UNSAFE, list(dict.fromkeys(codes))
    return UNPARSABLE, []


def counts_as_unsafe(verdict: str, fail_mode: str) -> bool:
    """Whether a verdict stops a `block` job: unsafe always, unparsable when failing closed."""
    return verdict == UNSAFE or (verdict == UNPARSABLE and fail_mode == CLOSED)


def blocking(checks: list[Check], mode: str, fail_mode: str) -> Check | None:
    """The first check that ends a job under `mode`, or None (flag and off never block)."""
    if mode != BLOCK:
        return None
    return next((c for c in checks if counts_as_unsafe(c.verdict, fail_mode)), None)


def reason(check: Check, names: dict[str, str]) -> str:
    """The one line a blocked job shows: the stage and the categories with their names."""
    if check.verdict == UNPARSABLE:
        return f"blocked by the safety check ({check.stage}): the guard's verdict was unparsable"
    listed = ", ".join(f"{c} {names.get(c, '').rstrip('.')}".strip() for c in check.categories)
    return f"blocked by the safety check ({check.stage}): unsafe: {listed}"


def summary(checks: list[dict[str, Any]] | None) -> dict[str, Any] | None:
    """A job's `safety` object as the API, sidecars and the panel show it: the deciding check
    (the first that found something, else the last) and every check; None when unchecked."""
    if not checks:
        return None
    decisive = next((c for c in checks if c.get("verdict") != SAFE), checks[-1])
    keys = ("stage", "verdict", "categories", "model", "ms")
    public = [{k: c.get(k) for k in keys} for c in checks]
    return {**{k: decisive.get(k) for k in keys}, "checks": public}


def badge(checks: list[dict[str, Any]] | None, names: dict[str, str]) -> str | None:
    """The panel's badge: the verdict and the category names when a check found something
    ("unsafe: S2 Non-Violent Crimes"), else None."""
    found = summary(checks)
    if found is None or found["verdict"] == SAFE:
        return None
    codes = found["categories"] or []
    listed = ", ".join(f"{c} {names.get(c, '').rstrip('.')}".strip() for c in codes)
    return f"{found['verdict']}: {listed}" if listed else str(found["verdict"])


def flagged(checks: list[Check]) -> bool:
    """Whether any check found something (unsafe or unparsable): the panel's badge."""
    return any(c.verdict != SAFE for c in checks)


__all__ = [
    "BLOCK",
    "FLAG",
    "OFF",
    "Check",
    "blocking",
    "counts_as_unsafe",
    "flagged",
    "parse_verdict",
    "reason",
]
