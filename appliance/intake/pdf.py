"""PDFs through PDFium (pypdfium2): pages counted before any is rendered, each rendered straight
at the size the model gets, one document operation at a time."""

from __future__ import annotations

import math
import threading

import pypdfium2 as pdfium
from PIL import Image

from appliance.errors import CorruptFile, DecompressionBomb, IntakeError, TooManyPages
from appliance.intake.images import downscale
from appliance.settings import Limits

# PDFium is not thread-safe (pypdfium2 docs): one document operation at a time per process.
_PDFIUM_LOCK = threading.Lock()


def pdf_page_count(data: bytes) -> int:
    """The PDF's pages, without rendering one."""
    with _PDFIUM_LOCK:
        doc = _open_pdf(data)
        try:
            return len(doc)
        finally:
            doc.close()


def _open_pdf(data: bytes) -> pdfium.PdfDocument:
    """Open under `_PDFIUM_LOCK` (the caller holds it)."""
    try:
        return pdfium.PdfDocument(data)
    except pdfium.PdfiumError as exc:
        if "password" in str(exc).lower():
            raise CorruptFile(
                "PDF is password-protected; remove the password and upload it again"
            ) from exc
        raise CorruptFile("damaged PDF: it could not be opened") from exc
    except Exception as exc:
        raise CorruptFile("damaged PDF: it could not be opened") from exc


def load_pdf(data: bytes, limits: Limits, *, first_only: bool) -> list[Image.Image]:
    with _PDFIUM_LOCK:
        doc = _open_pdf(data)
        try:
            count = len(doc)
            if count == 0:
                raise CorruptFile("PDF has no pages")
            # Checked before a single page is rendered: a 900-page PDF costs nothing here.
            if count > limits.max_pages:
                raise TooManyPages(f"PDF has {count} pages; the limit is {limits.max_pages}")
            return [_render_pdf_page(doc, i, limits) for i in range(1 if first_only else count)]
        except IntakeError:
            raise
        except MemoryError as exc:
            raise DecompressionBomb("PDF page needs more memory to render than is allowed") from exc
        except Exception as exc:
            raise CorruptFile("damaged PDF: a page could not be rendered") from exc
        finally:
            doc.close()


def _render_pdf_page(doc: pdfium.PdfDocument, index: int, limits: Limits) -> Image.Image:
    page = doc[index]
    try:
        width_pt, height_pt = page.get_size()
        if not (
            math.isfinite(width_pt) and math.isfinite(height_pt) and width_pt > 0 and height_pt > 0
        ):
            raise CorruptFile(f"damaged PDF: page {index + 1} has no usable size")
        scale = _pdf_scale(width_pt, height_pt, limits)
        bitmap = page.render(scale=scale)
        try:
            # convert() copies out of PDFium's buffer, which dies with the bitmap.
            image = bitmap.to_pil().convert("RGB")
        finally:
            bitmap.close()
    finally:
        page.close()
    return downscale(image, limits.max_side)


def _pdf_scale(width_pt: float, height_pt: float, limits: Limits) -> float:
    """Points -> pixels at `pdf_dpi`, lowered so the bitmap fits `max_side` and `max_pixels`.

    Rendering straight at the final size is cheaper and sharper than rendering large and
    resampling, and a poster-sized page (or a bogus /MediaBox) cannot allocate gigabytes.
    """
    scale = limits.pdf_dpi / 72
    scale = min(scale, limits.max_side / max(width_pt, height_pt))
    scale = min(scale, math.sqrt(limits.max_pixels / (width_pt * height_pt)))
    # Keep a degenerate sliver page at least one pixel wide.
    return max(scale, 1 / min(width_pt, height_pt))
