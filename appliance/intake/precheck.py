"""The upload pre-check: what the API and the panel refuse at the door, before a job exists."""

from __future__ import annotations

from dataclasses import dataclass

from appliance.errors import TooManyPages
from appliance.intake.filetypes import MIME_TYPES, sniff
from appliance.intake.guards import check_size
from appliance.intake.load import load, page_count
from appliance.settings import Limits


@dataclass(frozen=True)
class Checked:
    """What the pre-check learnt about an accepted file."""

    kind: str  # one of SUPPORTED_TYPES
    pages: int

    @property
    def mime(self) -> str:
        return MIME_TYPES[self.kind]


def precheck(data: bytes, limits: Limits) -> Checked:
    """Refuse what a worker would fail on: too large, wrong type, damaged, bomb, too many pages.

    Raises an `IntakeError` subclass with a one-line reason. Counts pages without rendering and
    decodes only the first page (JPEGs at reduced scale), so a good 200 KB photo costs a few
    milliseconds and a 900-page PDF is refused on the spot rather than as a failed job minutes
    later; the worker still loads every page under the same limits.
    """
    check_size(len(data), limits)
    kind = sniff(data)
    pages = page_count(data)
    if pages > limits.max_pages:
        raise TooManyPages(f"the file has {pages} pages; the limit is {limits.max_pages}")
    load(data, limits, first_only=True)
    return Checked(kind, pages)
