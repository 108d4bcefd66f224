"""The live queue fits its card on a laptop (1280 px) and on a phone (390 px): no column cut off,
no sideways scrolling, every value of every row on screen. Real stack, headless Chromium."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import synthetic_photo
from tests.e2e.conftest import Box
from tests.e2e.test_panel_browser import _login

pytestmark = [pytest.mark.browser, pytest.mark.slow]

# Long names, as scanners and phones write them: the file column must give way, not the rest.
NAMES = [
    f"ward-3-scanner-{i:04d}-2026-12-01T08-15-{i:02d}-patient-intake-form.jpg" for i in range(4)
]

OVERFLOW = """() => {
  const card = document.querySelector('#queue').closest('.card').getBoundingClientRect();
  const outside = [];
  for (const el of document.querySelectorAll('#queue th, #queue td, #queue td *')) {
    const box = el.getBoundingClientRect();
    if (box.width <= 1 || box.height <= 1) continue;  // not shown (e.g. the stacked header)
    if (box.left < card.left - 0.5 || box.right > card.right + 0.5) {
      outside.push(`${el.tagName}.${el.className} ${Math.round(box.left)}..${Math.round(box.right)}`);
    }
  }
  const wrap = document.querySelector('#queue').closest('.table-wrap');
  return {
    outside,
    card: [Math.round(card.left), Math.round(card.right)],
    wrapScroll: wrap.scrollWidth - wrap.clientWidth,
    pageScroll: document.documentElement.scrollWidth - window.innerWidth,
  };
}"""

SHOWN = """(cls) => Array.from(document.querySelectorAll('#queue tbody tr')).map((row) => {
  const cell = row.querySelector('td.' + cls);
  const box = cell.getBoundingClientRect();
  return box.width > 1 && box.height > 1 && cell.textContent.trim().length > 0;
})"""


def _jpeg(seed: int) -> bytes:
    out = io.BytesIO()
    synthetic_photo(seed, (320, 240)).save(out, "JPEG", quality=80)
    return out.getvalue()


@pytest.mark.parametrize(
    ("width", "height"), [(1280, 800), (390, 844)], ids=["laptop-1280", "phone-390"]
)
def test_queue_fits_its_card(
    box: Box, browser: Any, artifacts: Path, width: int, height: int
) -> None:
    from playwright.sync_api import expect

    context = browser.new_context(viewport={"width": width, "height": height})
    context.set_default_timeout(30_000)
    page = context.new_page()
    _login(page, box, "bob")
    page.set_input_files(
        "#files",
        [
            {"name": n, "mimeType": "image/jpeg", "buffer": _jpeg(40 + i)}
            for i, n in enumerate(NAMES)
        ],
    )
    expect(page.locator("#uploads li.accepted")).to_have_count(len(NAMES))
    rows = page.locator("#queue tbody tr")
    expect(rows).not_to_have_count(0)
    page.locator("#queue").scroll_into_view_if_needed()
    # While jobs are queued and running (Cancel buttons), and once they have all finished.
    for moment in ("live", "done"):
        if moment == "done":
            expect(page.locator('#queue tbody tr[data-state="succeeded"]')).to_have_count(
                rows.count(), timeout=150_000
            )
        page.screenshot(path=str(artifacts / f"panel-queue-{width}-{moment}.png"), full_page=True)
        found = page.evaluate(OVERFLOW)
        assert found["outside"] == [], found
        assert found["wrapScroll"] <= 0, found
        assert found["pageScroll"] <= 0, found
        for column in ("c-file", "c-task", "c-state"):
            assert all(page.evaluate(SHOWN, column)), f"{column} not shown in every row"
    context.close()
