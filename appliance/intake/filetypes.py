"""What a file is, from its content alone: the supported types, their labels and MIME types, and
a one-line description of the things people upload by mistake."""

from __future__ import annotations

from appliance.errors import EmptyFile, UnsupportedType

SUPPORTED_TYPES = ("jpeg", "png", "webp", "bmp", "gif", "tiff", "pdf")

# How a type is named in messages a user reads.
LABELS = {
    "jpeg": "JPEG",
    "png": "PNG",
    "webp": "WebP",
    "bmp": "BMP",
    "gif": "GIF",
    "tiff": "TIFF",
    "pdf": "PDF",
}

# What a stored file is served as (the API's original download, the panel's accept list).
MIME_TYPES = {
    "jpeg": "image/jpeg",
    "png": "image/png",
    "webp": "image/webp",
    "bmp": "image/bmp",
    "gif": "image/gif",
    "tiff": "image/tiff",
    "pdf": "application/pdf",
}

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
