"""What a file is, from its content alone: the supported types, their labels and MIME types, and
a one-line description of the things people upload by mistake."""

from __future__ import annotations

from dataclasses import dataclass

from appliance.errors import EmptyFile, UnsupportedType


@dataclass(frozen=True)
class FileType:
    """One accepted type: how users call it, what it is served as, the names it goes by."""

    kind: str
    label: str
    mime: str
    extensions: tuple[str, ...]


# The one list of what intake accepts: sniffing, messages, the panel's file picker and hint, and
# (checked by a test) README all follow it.
FILE_TYPES = (
    FileType("jpeg", "JPEG", "image/jpeg", (".jpg", ".jpeg")),
    FileType("png", "PNG", "image/png", (".png",)),
    FileType("webp", "WebP", "image/webp", (".webp",)),
    FileType("bmp", "BMP", "image/bmp", (".bmp",)),
    FileType("gif", "GIF", "image/gif", (".gif",)),
    FileType("tiff", "TIFF", "image/tiff", (".tif", ".tiff")),
    FileType("heic", "HEIC", "image/heic", (".heic", ".heif")),
    FileType("avif", "AVIF", "image/avif", (".avif",)),
    FileType("pdf", "PDF", "application/pdf", (".pdf",)),
)

SUPPORTED_TYPES = tuple(t.kind for t in FILE_TYPES)

# How a type is named in messages a user reads.
LABELS = {t.kind: t.label for t in FILE_TYPES}

# What a stored file is served as (the API's original download, the panel's accept list).
MIME_TYPES = {t.kind: t.mime for t in FILE_TYPES}

# The accepted types in words, for hints and messages: "JPEG, PNG, ... or PDF".
ACCEPTED_TEXT = ", ".join(t.label for t in FILE_TYPES[:-1]) + " or " + FILE_TYPES[-1].label

# An `<input type=file accept=...>` value. The extensions too: some systems report no MIME type
# for HEIC or TIFF, and the picker would then grey those files out.
ACCEPT = ",".join(
    [t.mime for t in FILE_TYPES] + ["image/heif"] + [e for t in FILE_TYPES for e in t.extensions]
)

# BMP DIB header sizes (core, v2, v3, OS/2 v2, v4, v5): "BM" alone is too weak a signature.
_BMP_DIB_SIZES = {12, 16, 40, 52, 56, 64, 108, 124}

# ISO-BMFF (`ftyp`) brands. A file lists a major brand and compatible ones; AVIF files often
# carry the generic HEIF brands (mif1, msf1) too, so the AVIF brands are looked for first.
_AVIF_BRANDS = {b"avif", b"avis", b"MA1A", b"MA1B"}
_HEIF_BRANDS = {b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"hevm", b"hevs"}
# Generic HEIF still images / sequences: the codec inside is whatever libheif finds.
_GENERIC_HEIF_BRANDS = {b"mif1", b"msf1"}

# ISO-BMFF major brands that are not images we take.
_OTHER_FTYP = {
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
    if head[4:8] == b"ftyp":
        brands = _ftyp_brands(data)
        if brands & _AVIF_BRANDS:
            return "avif"
        if brands & (_HEIF_BRANDS | _GENERIC_HEIF_BRANDS):
            return "heic"
    # The PDF spec lets readers accept junk before the header, and real scanners emit some.
    if b"%PDF-" in data[:1024]:
        return "pdf"
    raise UnsupportedType(f"unsupported file type: {_describe_unsupported(data)}")


def _describe_unsupported(data: bytes) -> str:
    head = data[:32]
    if head[4:8] == b"ftyp":
        return _OTHER_FTYP.get(head[8:12], "MP4/MOV video, not an image")
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
    return f"not a {ACCEPTED_TEXT} file"


def _ftyp_brands(data: bytes) -> set[bytes]:
    """The major and compatible brands of a leading `ftyp` box (its size bounds the list)."""
    size = int.from_bytes(data[:4], "big")
    # A box size of 0 or 1 means "to the end" / "64-bit size": only ever seen on media files;
    # read a bounded prefix either way so a bogus size costs nothing.
    end = min(size if size >= 16 else 64, 256, len(data))
    brands = {data[8:12]}
    brands.update(data[i : i + 4] for i in range(16, end - 3, 4))
    return brands


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
