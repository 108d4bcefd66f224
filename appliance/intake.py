"""Untrusted bytes in, upright RGB pages out: the one door every upload and dropped file goes through.

Everything here treats the input as hostile. The type comes from the content, never the name;
sizes are checked from headers before any pixel is decoded; Pillow only gets the decoder the
content claims to need (`formats=`), so a crafted file cannot reach an obscure plugin; every
decoder failure surfaces as an `IntakeError` whose message is one line a user can act on.

Nothing here mutates module state: Pillow's globals (`MAX_IMAGE_PIXELS`,
`LOAD_TRUNCATED_IMAGES`) are left alone and our own limits come from `Limits`.
"""

from __future__ import annotations

import io
import math
import re
import threading
import warnings
from collections.abc import Sequence
from pathlib import Path

import pypdfium2 as pdfium
from PIL import Image, UnidentifiedImageError

from appliance.errors import (
    CorruptFile,
    DecompressionBomb,
    EmptyFile,
    IntakeError,
    TooLarge,
    TooManyPages,
    UnsupportedType,
)
from appliance.settings import Limits

__all__ = ["SUPPORTED_TYPES", "load_file", "load_pages", "page_count", "sniff", "thumbnail"]

SUPPORTED_TYPES = ("jpeg", "png", "webp", "bmp", "gif", "tiff", "pdf")

# The single Pillow plugin each sniffed type may use.
_PIL_FORMATS: dict[str, list[str]] = {
    "jpeg": ["JPEG"],
    "png": ["PNG"],
    "webp": ["WEBP"],
    "bmp": ["BMP"],
    "gif": ["GIF"],
    "tiff": ["TIFF"],
}

_LABELS = {
    "jpeg": "JPEG",
    "png": "PNG",
    "webp": "WebP",
    "bmp": "BMP",
    "gif": "GIF",
    "tiff": "TIFF",
    "pdf": "PDF",
}

# PDFium is not thread-safe (pypdfium2 docs): one document operation at a time per process.
_PDFIUM_LOCK = threading.Lock()

# EXIF orientation -> the transpose that makes the picture upright (same table as
# ImageOps.exif_transpose, applied by hand so TIFF frames use their own IFD's tag).
_ORIENTATION = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_EXIF_ORIENTATION_TAG = 0x0112

# BMP DIB header sizes (core, v2, v3, OS/2 v2, v4, v5): "BM" alone is too weak a signature.
_BMP_DIB_SIZES = {12, 16, 40, 52, 56, 64, 108, 124}

# ISO-BMFF brands (bytes 8..12 of an `ftyp` box) that users commonly upload by mistake.
_FTYP_BRANDS = {
    b"heic": "HEIC photo (iPhone/Android); export it as JPEG",
    b"heix": "HEIC photo (iPhone/Android); export it as JPEG",
    b"hevc": "HEIC photo (iPhone/Android); export it as JPEG",
    b"heim": "HEIC photo (iPhone/Android); export it as JPEG",
    b"heis": "HEIC photo (iPhone/Android); export it as JPEG",
    b"mif1": "HEIF image; export it as JPEG",
    b"msf1": "HEIF image sequence; export it as JPEG",
    b"avif": "AVIF image; export it as JPEG or PNG",
    b"avis": "AVIF image sequence; export it as JPEG or PNG",
    b"crx ": "Canon CR3 raw photo; export it as JPEG",
    b"qt  ": "QuickTime video, not an image",
}

# Other things people upload by mistake, by leading bytes.
_OTHER_MAGIC: list[tuple[bytes, str]] = [
    (b"PK\x03\x04", "ZIP archive (or an Office document), not an image"),
    (b"PK\x05\x06", "empty ZIP archive, not an image"),
    (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1", "legacy Microsoft Office document, not an image"),
    (b"\x1f\x8b", "gzip archive, not an image"),
    (b"7z\xbc\xaf\x27\x1c", "7-Zip archive, not an image"),
    (b"Rar!\x1a\x07", "RAR archive, not an image"),
    (b"\x7fELF", "program (ELF executable), not an image"),
    (b"MZ", "Windows program, not an image"),
    (b"8BPS", "Photoshop document; export it as PNG or JPEG"),
    (b"\x00\x00\x01\x00", "Windows icon (.ico); export it as PNG"),
    (b"\x00\x00\x00\x0cjP  \r\n\x87\n", "JPEG 2000 image; export it as JPEG or PNG"),
    (b"\xff\x4f\xff\x51", "JPEG 2000 codestream; export it as JPEG or PNG"),
    (b"SIMPLE  =", "FITS astronomy image; not supported"),
    (b"OggS", "Ogg audio/video, not an image"),
    (b"ID3", "MP3 audio, not an image"),
    (b"fLaC", "FLAC audio, not an image"),
    (b"\x1aE\xdf\xa3", "Matroska/WebM video, not an image"),
    (b"%!PS", "PostScript file; convert it to PDF"),
    (b"{\\rtf", "RTF document, not an image"),
]


# --- sniffing ---------------------------------------------------------------------------------


def sniff(data: bytes) -> str:
    """The file type from its content: one of `SUPPORTED_TYPES`.

    Raises `EmptyFile` for no bytes and `UnsupportedType` (naming what the content looks like
    where that is obvious) for anything else.
    """
    if not data:
        raise EmptyFile("file is empty (0 bytes)")
    head = data[:32]
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head.startswith((b"GIF87a", b"GIF89a")):
        return "gif"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    # Classic and BigTIFF, both byte orders.
    if head.startswith((b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")):
        return "tiff"
    if head.startswith(b"BM") and int.from_bytes(data[14:18], "little") in _BMP_DIB_SIZES:
        return "bmp"
    # The PDF spec lets readers accept junk before the header, and real scanners emit some.
    if b"%PDF-" in data[:1024]:
        return "pdf"
    raise UnsupportedType(f"unsupported file type: {_describe_unsupported(data)}")


def _describe_unsupported(data: bytes) -> str:
    head = data[:32]
    if head[4:8] == b"ftyp":
        brand = head[8:12]
        if brand in _FTYP_BRANDS:
            return _FTYP_BRANDS[brand]
        return "MP4/MOV video, not an image"
    if head[:4] == b"RIFF":
        kind = head[8:12]
        if kind == b"AVI ":
            return "AVI video, not an image"
        if kind == b"WAVE":
            return "WAV audio, not an image"
    for magic, what in _OTHER_MAGIC:
        if head.startswith(magic):
            return what
    text = _as_text(data[:4096])
    if text is not None:
        lowered = text.lstrip().lower()
        if "<svg" in lowered[:1024]:
            return "SVG drawing; export it as PNG"
        if lowered.startswith(("<!doctype html", "<html")):
            return "HTML page, not an image"
        if lowered.startswith("<?xml"):
            return "XML document, not an image"
        if lowered.startswith(("{", "[")):
            return "JSON/text file, not an image"
        return "text file, not an image"
    return "not a JPEG, PNG, WebP, BMP, GIF, TIFF or PDF file"


def _as_text(chunk: bytes) -> str | None:
    """`chunk` decoded if it reads as text (UTF-8/UTF-16 with BOM), else None."""
    if chunk.startswith((b"\xff\xfe", b"\xfe\xff")):
        return chunk.decode("utf-16", errors="replace")
    if b"\x00" in chunk:
        return None
    # The cut at 4096 bytes may split a multi-byte character: drop up to 3 trailing bytes.
    for trim in range(4):
        try:
            text = chunk[: len(chunk) - trim].decode("utf-8")
        except UnicodeDecodeError:
            continue
        printable = sum(ch.isprintable() or ch in "\r\n\t\f" for ch in text)
        return text if text and printable / len(text) > 0.95 else None
    return None


# --- public loading API -----------------------------------------------------------------------


def load_pages(data: bytes, limits: Limits) -> list[Image.Image]:
    """Every page of an image or PDF as an upright RGB image, longest side <= `limits.max_side`.

    Raises an `IntakeError` subclass (and nothing else) for any unusable input.
    """
    return _load(data, limits, first_only=False)


def load_file(path: Path, limits: Limits) -> list[Image.Image]:
    """`load_pages` for a file on disk. OS errors (missing file, permissions) propagate as-is."""
    path = Path(path)
    # Refuse before reading, so a 20 GB file dropped in a folder is never pulled into memory.
    size = path.stat().st_size
    if size > limits.max_bytes:
        raise TooLarge(_too_large_message(size, limits))
    with path.open("rb") as fh:
        # Read one byte past the limit: the file may have grown since stat().
        data = fh.read(limits.max_bytes + 1)
    return load_pages(data, limits)


def page_count(data: bytes) -> int:
    """How many pages `load_pages` would return (before limits), without decoding pixels."""
    kind = sniff(data)
    if kind == "pdf":
        with _PDFIUM_LOCK:
            doc = _open_pdf(data)
            try:
                return len(doc)
            finally:
                doc.close()
    if kind != "tiff":
        # GIF and WebP animations count as one page: only their first frame is used.
        return 1
    try:
        with _bomb_guard(), _open_image(data, kind) as im:
            return int(getattr(im, "n_frames", 1))
    except IntakeError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise DecompressionBomb("TIFF is too large to decode safely") from exc
    except Exception as exc:
        raise _decode_error(kind, exc) from exc


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
        first = _load(bytes(source), limits or Limits(), first_only=True)[0]
    else:
        if not source:
            raise ValueError("thumbnail() needs at least one page")
        first = source[0]
    preview = _to_rgb(first) if first.mode != "RGB" else first.copy()
    preview.thumbnail((size, size), Image.Resampling.LANCZOS)
    out = io.BytesIO()
    preview.save(out, "JPEG", quality=quality, optimize=True)
    return out.getvalue()


# --- internals --------------------------------------------------------------------------------


def _load(data: bytes, limits: Limits, *, first_only: bool) -> list[Image.Image]:
    if not data:
        raise EmptyFile("file is empty (0 bytes)")
    if len(data) > limits.max_bytes:
        raise TooLarge(_too_large_message(len(data), limits))
    kind = sniff(data)
    if kind == "pdf":
        return _load_pdf(data, limits, first_only=first_only)
    return _load_raster(data, kind, limits, first_only=first_only)


def _load_raster(data: bytes, kind: str, limits: Limits, *, first_only: bool) -> list[Image.Image]:
    label = _LABELS[kind]
    try:
        with _bomb_guard(), _open_image(data, kind) as im:
            # Only TIFF pages are pages; GIF/WebP/APNG frames are animation, and MPO's extra
            # frames are stereo/depth views of the same shot.
            frames = int(getattr(im, "n_frames", 1)) if kind == "tiff" else 1
            if frames > limits.max_pages:
                raise TooManyPages(f"{label} has {frames} pages; the limit is {limits.max_pages}")
            pages = []
            for index in range(1 if first_only else frames):
                if index:
                    im.seek(index)
                where = f"{label} page {index + 1}" if frames > 1 else label
                pages.append(_decode_frame(im, kind, where, limits))
            return pages
    except IntakeError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise DecompressionBomb(_pillow_bomb_message(label, exc, limits)) from exc
    except MemoryError as exc:
        raise DecompressionBomb(f"{label} needs more memory to decode than is allowed") from exc
    except Exception as exc:
        # Decoders report malformed input as OSError, ValueError, SyntaxError, EOFError,
        # struct.error, IndexError, ...: for an untrusted file every one of them means "damaged".
        raise _decode_error(kind, exc) from exc


class _bomb_guard(warnings.catch_warnings):
    """Pillow's DecompressionBombWarning as an exception, for this block only.

    `catch_warnings` swaps process-wide state and is not thread-safe before Python 3.14; the
    explicit header check in `_check_pixels` is what actually enforces `Limits.max_pixels`, so
    a thread racing on the filter list can only lose this second line of defence, not the first.
    """

    def __enter__(self) -> None:
        super().__enter__()
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        # Decoder chatter about damage it recovered from ("Corrupt EXIF data"): the decode
        # either succeeds or raises, so these only fill worker logs.
        warnings.filterwarnings("ignore", category=UserWarning, module=r"PIL\.")


def _open_image(data: bytes, kind: str) -> Image.Image:
    try:
        return Image.open(io.BytesIO(data), formats=_PIL_FORMATS[kind])
    except UnidentifiedImageError as exc:
        raise CorruptFile(
            f"damaged {_LABELS[kind]}: the header is not valid {_LABELS[kind]}"
        ) from exc


def _decode_frame(im: Image.Image, kind: str, where: str, limits: Limits) -> Image.Image:
    width, height = im.size
    _check_pixels(width, height, where, limits)
    if kind == "jpeg":
        # libjpeg can decode at 1/2, 1/4 or 1/8 scale for free; ask for no less than the
        # size we will downscale to anyway, so a 24 Mpx photo never decodes at full size.
        target = _fit(width, height, limits.max_side)
        if target != (width, height):
            im.draft(None, target)
    # Force the full decode here, inside the error mapping; without it Pillow decodes lazily
    # and a truncated file would fail later, somewhere that does not expect it.
    im.load()
    # Read after load(): PNG only parses a trailing eXIf chunk once the data is decoded.
    orientation = _orientation(im, kind)
    page = _to_rgb(im)
    page = _downscale(page, limits.max_side)
    if orientation in _ORIENTATION:
        page = page.transpose(_ORIENTATION[orientation])
    return page


def _check_pixels(width: int, height: int, where: str, limits: Limits) -> None:
    if width <= 0 or height <= 0:
        raise CorruptFile(f"damaged {where}: image size is {width}x{height}")
    if width * height > limits.max_pixels:
        raise DecompressionBomb(
            f"{where} is {width}x{height} pixels ({_mpx(width * height)}); "
            f"the limit is {_mpx(limits.max_pixels)}"
        )


def _orientation(im: Image.Image, kind: str) -> int:
    try:
        if kind == "tiff":
            # Per-IFD tag: each TIFF page carries its own orientation.
            value = im.tag_v2.get(_EXIF_ORIENTATION_TAG, 1)  # type: ignore[attr-defined]
        else:
            value = im.getexif().get(_EXIF_ORIENTATION_TAG, 1)
        return int(value)
    except Exception:
        # A mangled EXIF block is common in edited photos; it should cost the rotation, not
        # the upload.
        return 1


def _to_rgb(im: Image.Image) -> Image.Image:
    mode = im.mode
    if mode == "RGB" and "transparency" not in im.info:
        return im.copy()
    if mode.startswith("I;16") or mode in ("I", "F"):
        return _high_bit_depth_to_l(im).convert("RGB")
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in im.info:
        rgba = im.convert("RGBA")
        # Transparent areas become white, as they look in a browser or a document viewer,
        # rather than whatever colour the encoder left under alpha=0 (often black).
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        background.alpha_composite(rgba)
        return background.convert("RGB")
    try:
        # Pillow's CMYK->RGB undoes Adobe's inverted CMYK itself (rawmode "CMYK;I").
        return im.convert("RGB")
    except ValueError as exc:
        raise UnsupportedType(f"unsupported colour mode {mode}; convert it to RGB") from exc


def _high_bit_depth_to_l(im: Image.Image) -> Image.Image:
    """16/32-bit integer or float greyscale to 8-bit by scaling, where `convert` would clip."""
    if im.mode.startswith("I;16"):
        im = im.convert("I")
    if im.mode == "I":
        low, high = im.getextrema()
        if low >= 0 and high <= 65535:
            # 16-bit data (PNG/TIFF): map 0..65535 to 0..255, keeping absolute brightness.
            return im.point(lambda v: v / 257 + 0.5).convert("L")
    elif im.mode == "F":
        low, high = im.getextrema()
        if low >= 0.0 and high <= 1.0:
            return im.point(lambda v: v * 255 + 0.5).convert("L")
    else:  # pragma: no cover - callers only pass I;16*, I and F
        return im.convert("L")
    # Anything else (signed or 32-bit ranges) has no absolute scale: stretch its range.
    span = float(high - low) or 1.0
    return im.convert("F").point(lambda v: (v - low) * 255 / span + 0.5).convert("L")


def _fit(width: int, height: int, max_side: int) -> tuple[int, int]:
    longest = max(width, height)
    if longest <= max_side:
        return width, height
    scale = max_side / longest
    return max(1, round(width * scale)), max(1, round(height * scale))


def _downscale(page: Image.Image, max_side: int) -> Image.Image:
    target = _fit(*page.size, max_side)
    if target == page.size:
        return page
    return page.resize(target, Image.Resampling.LANCZOS)


# --- PDF --------------------------------------------------------------------------------------


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


def _load_pdf(data: bytes, limits: Limits, *, first_only: bool) -> list[Image.Image]:
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
    return _downscale(image, limits.max_side)


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


# --- messages ---------------------------------------------------------------------------------


def _decode_error(kind: str, exc: BaseException) -> CorruptFile:
    label = _LABELS[kind]
    text = str(exc).lower()
    if isinstance(exc, EOFError) or "truncated" in text or "ends early" in text:
        return CorruptFile(f"truncated {label}: image data ends early")
    return CorruptFile(f"damaged {label}: the image data could not be decoded")


def _pillow_bomb_message(label: str, exc: BaseException, limits: Limits) -> str:
    match = re.search(r"\((\d+) pixels\)", str(exc))
    limit = _mpx(limits.max_pixels)
    if match:
        return f"{label} is {_mpx(int(match.group(1)))}; the limit is {limit}"
    return f"{label} is too large to decode safely; the limit is {limit}"


def _mpx(pixels: int) -> str:
    return f"{pixels / 1_000_000:.0f} megapixels" if pixels >= 10**6 else f"{pixels} pixels"


def _too_large_message(size: int, limits: Limits) -> str:
    return f"file is {_human_bytes(size)}; the limit is {_human_bytes(limits.max_bytes)}"


def _human_bytes(n: int) -> str:
    for unit, factor in (("GB", 1 << 30), ("MB", 1 << 20), ("KB", 1 << 10)):
        if n >= factor:
            return f"{n / factor:.1f} {unit}".replace(".0 ", " ")
    return f"{n} bytes"
