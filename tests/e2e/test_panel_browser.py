"""The panel in headless Chromium against the real stack (gunicorn + Celery worker + tiny models).

One user story, in order: log in, drop three photos, pick a two-page PDF and a decompression
bomb, see the bomb refused with its reason while the other four complete live (no reload),
open a result, download its JSON, search for a word of it. Then: no CSRF token -> refused,
another user's job -> 404, and not a single request left the box.
"""

from __future__ import annotations

import base64
import io
import json
import re
import struct
import time
import zlib
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from PIL import Image, ImageDraw

from tests.conftest import synthetic_photo
from tests.e2e.conftest import PASSWORD, Box

pytestmark = [pytest.mark.browser, pytest.mark.slow]

# Tablet width: the panel must be usable on the ward's iPad.
VIEWPORT = {"width": 820, "height": 1180}
DONE_SECONDS = 150


def _jpeg(seed: int) -> bytes:
    out = io.BytesIO()
    synthetic_photo(seed, (480, 360)).save(out, "JPEG", quality=85)
    return out.getvalue()


def _pdf_two_pages() -> bytes:
    pages = []
    for i, colour in enumerate(((250, 250, 240), (220, 235, 255))):
        page = Image.new("RGB", (420, 595), colour)
        draw = ImageDraw.Draw(page)
        draw.text((40, 40), f"Invoice 2024-{i + 1:02d}", fill=(0, 0, 0))
        draw.rectangle([40, 120, 380, 300], outline=(0, 0, 0), width=3)
        pages.append(page)
    out = io.BytesIO()
    pages[0].save(out, "PDF", save_all=True, append_images=pages[1:])
    return out.getvalue()


def _png_bomb() -> bytes:
    """A PNG header claiming 40000 x 40000 pixels: refused before a pixel is decoded."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    ihdr = struct.pack(">IIBBBBB", 40_000, 40_000, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))


def _drop_files(page: Any, selector: str, files: list[tuple[str, str, bytes]]) -> None:
    """A real drop event carrying Files, as the OS would deliver from a file manager."""
    payload = [{"name": n, "type": t, "b64": base64.b64encode(d).decode()} for n, t, d in files]
    transfer = page.evaluate_handle(
        """(files) => {
            const dt = new DataTransfer();
            for (const f of files) {
                const bytes = Uint8Array.from(atob(f.b64), (c) => c.charCodeAt(0));
                dt.items.add(new File([bytes], f.name, { type: f.type }));
            }
            return dt;
        }""",
        payload,
    )
    page.dispatch_event(selector, "dragenter", {"dataTransfer": transfer})
    page.dispatch_event(selector, "drop", {"dataTransfer": transfer})


def _login(page: Any, box: Box, name: str) -> None:
    page.goto(f"{box.url}/panel/login")
    page.get_by_label("User name").fill(name)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url(f"{box.url}/panel/")


def test_upload_watch_open_download_search(
    box: Box, browser: Any, artifacts: Path, tmp_path: Path
) -> None:
    from playwright.sync_api import expect

    context = browser.new_context(viewport=VIEWPORT, accept_downloads=True)
    page = context.new_page()
    requested: list[str] = []
    page.on("request", lambda req: requested.append(req.url))
    context.set_default_timeout(20_000)

    _login(page, box, "alice")
    expect(page.locator("#live-status")).to_have_text("Live")

    # Three photos dropped together, then the PDF and the bomb through the file picker.
    _drop_files(page, "#dropzone", [(f"photo-{i}.jpg", "image/jpeg", _jpeg(i)) for i in range(3)])
    page.set_input_files(
        "#files",
        [
            {"name": "invoice.pdf", "mimeType": "application/pdf", "buffer": _pdf_two_pages()},
            {"name": "bomb.png", "mimeType": "image/png", "buffer": _png_bomb()},
        ],
    )
    bomb = page.locator('#uploads li[data-name="bomb.png"] .status')
    expect(bomb).to_have_text(re.compile(r"Rejected: bomb\.png: PNG is .*megapixels; the limit is"))
    expect(page.locator("#uploads li.accepted")).to_have_count(4)
    # Accepted files are in the queue at once, before any of them ran.
    rows = page.locator("#queue tbody tr")
    expect(rows).to_have_count(4)
    page.screenshot(path=str(artifacts / "panel-1-uploaded.png"), full_page=True)

    # Live: every row reaches "succeeded" over SSE, the page is never reloaded.
    page.evaluate("window.__notReloaded = true")
    expect(page.locator('#queue tbody tr[data-state="succeeded"]')).to_have_count(
        4, timeout=DONE_SECONDS * 1000
    )
    assert page.evaluate("window.__notReloaded") is True
    page.screenshot(path=str(artifacts / "panel-2-done.png"), full_page=True)

    # A photo of the three dropped together: its result, and the digest of all three.
    page.locator("#queue a", has_text="photo-0.jpg").click()
    expect(page.locator("#batch-h")).to_have_text("Uploaded together: 3 files")
    deadline = time.monotonic() + 60
    while not page.locator("#digest").count() and time.monotonic() < deadline:
        page.wait_for_timeout(500)  # the digest is written after the last job: re-read the page
        page.reload()
    expect(page.locator("#digest")).not_to_be_empty()
    page.screenshot(path=str(artifacts / "panel-3a-photo-and-digest.png"), full_page=True)
    page.go_back()

    # The PDF's result: both pages beside their results.
    page.locator("#queue a", has_text="invoice.pdf").click()
    expect(page.locator(".page-row")).to_have_count(2)
    expect(page.locator(".page-row img").first).to_have_js_property("complete", True)
    for img in page.locator(".page-row img").all():
        img.scroll_into_view_if_needed()
        expect(img).not_to_have_js_property("naturalWidth", 0)
    page.screenshot(path=str(artifacts / "panel-3-result.png"), full_page=True)

    with page.expect_download() as info:
        page.locator("#download-json").click()
    saved = tmp_path / "result.json"
    info.value.save_as(saved)
    body = json.loads(saved.read_text())
    assert body["job"]["filename"] == "invoice.pdf"
    assert [p["page"] for p in body["result"]["pages"]] == [1, 2]

    # Search the archive for a word the model wrote.
    text = " ".join(p["text"] for p in body["result"]["pages"])
    words = sorted(set(re.findall(r"[A-Za-z]{4,}", text)), key=len, reverse=True)
    assert words, f"no word to search for in {text!r}"
    word = words[0]
    page.get_by_role("link", name="History").click()
    page.get_by_label("Search results").fill(word)
    page.get_by_role("button", name="Search").click()
    expect(page.locator("#history tbody tr", has_text="invoice.pdf")).to_have_count(1)
    expect(page.locator("#history mark").first).to_have_text(re.compile(word, re.IGNORECASE))
    page.screenshot(path=str(artifacts / "panel-4-search.png"), full_page=True)

    page.get_by_role("link", name="System").click()
    expect(page.locator("#workers tbody tr")).not_to_have_count(0)
    expect(page.locator(".chart svg")).to_be_visible()
    page.screenshot(path=str(artifacts / "panel-5-system.png"), full_page=True)

    # A state-changing request without the CSRF token is refused (same cookies as the page).
    job_url = page.url
    refused = context.request.post(
        f"{box.url}/panel/upload",
        multipart={
            "task": "caption",
            "file": {"name": "x.jpg", "mimeType": "image/jpeg", "buffer": _jpeg(9)},
        },  # fmt: skip
        headers={"Accept": "application/json"},
    )
    assert refused.status == 400 and "CSRF" in refused.json()["detail"]

    # Only the box itself was ever contacted (data: URLs never leave the page).
    host = urlsplit(box.url).netloc
    foreign = [u for u in requested if not u.startswith("data:") and urlsplit(u).netloc != host]
    assert not foreign, foreign
    assert any("/panel/events" in u for u in requested)

    # Another user cannot open alice's job.
    alice_job = next(u for u in requested if re.search(r"/panel/jobs/[0-9a-f-]{36}$", u))
    other = browser.new_context(viewport=VIEWPORT)
    bob = other.new_page()
    _login(bob, box, "bob")
    response = bob.goto(alice_job)
    assert response is not None and response.status == 404
    expect(bob.locator("body")).to_contain_text("not yours")
    bob.goto(f"{box.url}/panel/history")
    expect(bob.locator("body")).to_contain_text("No jobs match")
    other.close()
    context.close()
    assert job_url  # the result page was reached
