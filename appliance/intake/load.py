"""The loading API: bytes (or a file) in, upright RGB pages out, and JPEG previews of them."""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

from PIL import Image

from appliance.errors import EmptyFile
from appliance.intake.filetypes import sniff
from appliance.intake.guards import check_size
from appliance.intake.images import load_raster, to_rgb
from appliance.intake.pdf import load_pdf, pdf_page_count
from appliance.intake.tiff import load_tiff, tiff_page_count
from appliance.settings import Limits


def load_pages(data: bytes, limits: Limits) -> list[Image.Image]:
    """Every page of an image or PDF as an upright RGB image, longest side <= `limits.max_side`.

    Raises an `IntakeError` subclass (and nothing else) for any unusable input.
    """
    return load(data, limits, first_only=False)


def load_file(path: Path, limits: Limits) -> list[Image.Image]:
    """`load_pages` for a file on disk. OS errors (missing file, permissions) propagate as-is."""
    path = Path(path)
    # Refuse before reading, so a 20 GB file dropped in a folder is never pulled into memory.
    check_size(path.stat().st_size, limits)
    with path.open("rb") as fh:
        # Read one byte past the limit: the file may have grown since stat().
        data = fh.read(limits.max_bytes + 1)
    return load_pages(data, limits)


def page_count(data: bytes) -> int:
    """How many pages `load_pages` would return (before limits), without decoding pixels."""
    kind = sniff(data)
    if kind == "pdf":
        return pdf_page_count(data)
    if kind == "tiff":
        return tiff_page_count(data)
    # GIF and WebP animations count as one page: only their first frame is used.
    return 1


def thumbnail(
    source: bytes | Sequence[Image.Image],
    size: int = 256,
    *,
    limits: Limits | None = None,
    quality: int = 80,
) -> bytes:
    """A JPEG preview (longest side <= `size`) of the first page of `source`.

    `source` is either raw upload bytes (only the first page is decoded, under `limits`) or
    pages already returned by `load_pages`.
    """
    if isinstance(source, bytes | bytearray | memoryview):
        first = load(bytes(source), limits or Limits(), first_only=True)[0]
    else:
        if not source:
            raise ValueError("thumbnail() needs at least one page")
        first = source[0]
    preview = to_rgb(first) if first.mode != "RGB" else first.copy()
    preview.thumbnail((size, size), Image.Resampling.LANCZOS)
    out = io.BytesIO()
    preview.save(out, "JPEG", quality=quality, optimize=True)
    return out.getvalue()


def load(data: bytes, limits: Limits, *, first_only: bool) -> list[Image.Image]:
    """All pages, or with `first_only` just the first (what a preview or a pre-check needs)."""
    if not data:
        raise EmptyFile("file is empty (0 bytes)")
    check_size(len(data), limits)
    kind = sniff(data)
    if kind == "pdf":
        return load_pdf(data, limits, first_only=first_only)
    if kind == "tiff":
        return load_tiff(data, limits, first_only=first_only)
    return load_raster(data, kind, limits, first_only=first_only)
