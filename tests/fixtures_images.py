"""Test inputs built in code, so the repository carries no binary fixtures.

Each helper returns the bytes of one file; hostile ones (bombs, encrypted PDFs) are written by
hand at the byte level because no well-behaved encoder will produce them.
"""

from __future__ import annotations

import io
import struct
import zlib

from PIL import Image

Colour = tuple[int, int, int]


def encode(image: Image.Image, fmt: str, **params: object) -> bytes:
    out = io.BytesIO()
    image.save(out, fmt, **params)
    return out.getvalue()


def noise(size: tuple[int, int], seed: int = 0) -> Image.Image:
    """Deterministic incompressible RGB content: JPEG data for it spans the whole file."""
    width, height = size
    data = bytearray()
    state = seed or 1
    for _ in range(width * height * 3):
        # xorshift: cheap, deterministic, no global random state touched.
        state ^= (state << 13) & 0xFFFFFFFF
        state ^= state >> 17
        state ^= (state << 5) & 0xFFFFFFFF
        data.append(state & 0xFF)
    return Image.frombytes("RGB", size, bytes(data))


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return (
        struct.pack(">I", len(body))
        + kind
        + body
        + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)
    )


def png_claiming(width: int, height: int) -> bytes:
    """A valid-looking 1-bit greyscale PNG header claiming `width`x`height`, with a tiny IDAT.

    The file is a few dozen bytes; decoding it for real would need width*height bytes.
    """
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", idat)
        + _png_chunk(b"IEND", b"")
    )


def minimal_pdf(
    pages: list[tuple[float, float, Colour]],
    *,
    encrypt: bool = False,
) -> bytes:
    """A hand-written PDF: one page per (width_pt, height_pt, fill colour), each filled solid.

    With `encrypt`, a Standard security handler whose /U entry matches no password, so a reader
    cannot open it without one.
    """
    objects: list[bytes] = []
    kids = []
    for index, (width, height, colour) in enumerate(pages):
        page_no = 3 + 2 * index
        kids.append(f"{page_no} 0 R")
        r, g, b = (c / 255 for c in colour)
        stream = f"{r:.3f} {g:.3f} {b:.3f} rg 0 0 {width} {height} re f".encode()
        objects.append(
            f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 {width} {height}] "
            f"/Contents {page_no + 1} 0 R >>".encode()
        )
        objects.append(b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream")
    objects.insert(0, f"<< /Type /Pages /Kids [{' '.join(kids)}] /Count {len(pages)} >>".encode())
    objects.insert(0, b"<< /Type /Catalog /Pages 2 0 R >>")
    trailer_extra = b""
    if encrypt:
        objects.append(
            b"<< /Filter /Standard /V 1 /R 2 /P -4 /O <"
            + b"11" * 32
            + b"> /U <"
            + b"22" * 32
            + b"> >>"
        )
        trailer_extra = b" /Encrypt %d 0 R /ID [<%s> <%s>]" % (
            len(objects),
            b"33" * 16,
            b"33" * 16,
        )

    out = io.BytesIO()
    out.write(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(out.tell())
        out.write(b"%d 0 obj\n" % number + body + b"\nendobj\n")
    xref_at = out.tell()
    out.write(b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1))
    for offset in offsets:
        out.write(b"%010d 00000 n \n" % offset)
    out.write(
        b"trailer\n<< /Size %d /Root 1 0 R" % (len(objects) + 1)
        + trailer_extra
        + b" >>\nstartxref\n%d\n%%%%EOF\n" % xref_at
    )
    return out.getvalue()


def blank_pdf(page_count: int, size: tuple[float, float] = (200, 300)) -> bytes:
    """A PDF of `page_count` empty pages, made by PDFium itself (cheap even for 900 pages)."""
    import pypdfium2 as pdfium

    doc = pdfium.PdfDocument.new()
    try:
        for _ in range(page_count):
            doc.new_page(*size).close()
        out = io.BytesIO()
        doc.save(out)
        return out.getvalue()
    finally:
        doc.close()
