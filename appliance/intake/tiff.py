"""TIFFs: Pillow for the layouts it reads right, tifffile (with imagecodecs) for the rest.

Scanners and imaging software write TIFF layouts Pillow cannot open (float samples, 12-bit,
codecs its libtiff lacks) and some it opens but decodes wrongly without a word (uncompressed
planar 16-bit RGB comes out in the wrong colours). So the header is read first, with tifffile, and a file goes to Pillow only
when every page is a layout Pillow is known to get right; a file Pillow refuses anyway gets a
second try here. tifffile exposes each page's shape from its header, so the same limits (pages,
pixels, tile sizes) are checked before a single strip is decoded.
"""

from __future__ import annotations

import io
import struct
from collections.abc import Iterator
from contextlib import contextmanager

import tifffile
from PIL import Image

from appliance.errors import (
    CorruptFile,
    DecompressionBomb,
    IntakeError,
    TooManyPages,
    UnsupportedType,
)
from appliance.intake.guards import check_pixels
from appliance.intake.images import ORIENTATION, downscale, load_raster, tiff_pillow_page_count
from appliance.intake.tiffpixels import page_to_rgb
from appliance.settings import Limits

# Pillow's libtiff reads these right: none, CCITT RLE/G3/G4, LZW, JPEG, deflate, PackBits.
# Old-style JPEG (6), zstd, WebP, JPEG 2000/XL, LERC... go to tifffile.
_PILLOW_COMPRESSIONS = {1, 2, 3, 4, 5, 7, 8, 32773, 32946}
# MinIsWhite, MinIsBlack, RGB, palette, CMYK, YCbCr (checked further in `_pillow_reads`).
_PILLOW_PHOTOMETRICS = {0, 1, 2, 3, 5, 6}


def load_tiff(data: bytes, limits: Limits, *, first_only: bool) -> list[Image.Image]:
    """Every page (or just the first) of a TIFF as upright 8-bit RGB, under `limits`."""
    try:
        tif = _open(data)
    except CorruptFile:
        # tifffile is stricter about some headers than libtiff: let Pillow have the last word.
        return load_raster(data, "tiff", limits, first_only=first_only)
    with tif:
        pages = _pages(tif, data)
        if len(pages) > limits.max_pages:
            raise TooManyPages(f"TIFF has {len(pages)} pages; the limit is {limits.max_pages}")
        if all(_pillow_reads(page) for page in pages):
            try:
                return load_raster(data, "tiff", limits, first_only=first_only)
            except (CorruptFile, UnsupportedType):
                pass  # tifffile's verdict below is the one the user gets
        wanted = pages[:1] if first_only else pages
        return [
            _decode(page, _where(i, len(pages)), limits, len(data)) for i, page in enumerate(wanted)
        ]


def tiff_page_count(data: bytes) -> int:
    """A TIFF's pages, read from its directory without decoding a pixel."""
    try:
        return tiff_pillow_page_count(data)
    except (CorruptFile, UnsupportedType):
        with _open(data) as tif:
            return len(_pages(tif, data))


def _open(data: bytes) -> tifffile.TiffFile:
    try:
        with _tifffile_errors("TIFF"):
            # Only this file's bytes: never follow an OME/ImageJ reference to other files.
            return tifffile.TiffFile(io.BytesIO(data), _multifile=False)
    except CorruptFile as exc:
        raise CorruptFile("damaged TIFF: the header is not valid TIFF") from exc


def _pages(tif: tifffile.TiffFile, data: bytes) -> list[tifffile.TiffPage]:
    with _tifffile_errors("TIFF"):
        # By index up to len(), which stops at a directory loop; iterating `tif.pages` instead
        # never ends on some looped chains (seen fuzzing).
        count = len(tif.pages)
        pages = [tif.pages[i] for i in range(count)]
        pages = [page for page in pages if isinstance(page, tifffile.TiffPage)]
        if not pages:
            raise CorruptFile("damaged TIFF: it has no pages")
        if not _chain_ends(pages, tif.tiff, data):
            # tifffile only logs a broken page chain and returns the pages before it: a file cut
            # after its first page would otherwise pass as a shorter, "good" one.
            raise CorruptFile(f"truncated TIFF: page {len(pages) + 1} is missing or damaged")
    return pages


def _chain_ends(pages: list[tifffile.TiffPage], fmt: tifffile.TiffFormat, data: bytes) -> bool:
    """Whether the last page's next-directory pointer ends the chain (0, or a loop back)."""
    position = pages[-1].offset
    (count,) = struct.unpack(fmt.tagnoformat, data[position : position + fmt.tagnosize])
    position += fmt.tagnosize + count * fmt.tagsize
    pointer = data[position : position + fmt.offsetsize]
    if len(pointer) < fmt.offsetsize:
        return False
    (offset,) = struct.unpack(fmt.offsetformat, pointer)
    return offset == 0 or offset in {page.offset for page in pages}


def _pillow_reads(page: tifffile.TiffPage) -> bool:
    """Whether `page` is a layout Pillow decodes correctly (anything else: tifffile)."""
    samples, bits = page.samplesperpixel, page.bitspersample
    if page.compression not in _PILLOW_COMPRESSIONS or page.photometric not in _PILLOW_PHOTOMETRICS:
        return False
    if page.sampleformat != 1 or page.predictor not in (1, 2) or page.imagedepth != 1:
        return False
    # Pillow's own planar 16-bit decoding mixes the planes up; tifffile reads every planar
    # layout right, so it gets them all.
    if samples > 1 and page.planarconfig != 1:
        return False
    if page.photometric == 5:  # CMYK: Pillow has 8-bit CMYK only
        return samples == 4 and bits == 8
    if page.photometric == 6:  # YCbCr: only inside JPEG, where libjpeg converts it
        return page.compression == 7
    return bits in (1, 2, 4, 8) or (bits == 16 and samples in (1, 3))


def _decode(page: tifffile.TiffPage, where: str, limits: Limits, size: int) -> Image.Image:
    _check_layout(page, where, limits, size)
    with _tifffile_errors(where):
        pixels = page.asarray(maxworkers=1)
    image = page_to_rgb(pixels, page, where)
    image = downscale(image, limits.max_side)
    orientation = _orientation(page)
    if orientation in ORIENTATION:
        image = image.transpose(ORIENTATION[orientation])
    return image


def _check_layout(page: tifffile.TiffPage, where: str, limits: Limits, size: int) -> None:
    """Everything the header tells, refused before a byte is decoded."""
    check_pixels(page.imagewidth, page.imagelength, where, limits)
    if page.is_tiled:
        # A 64k x 64k tile on a small image would still be allocated whole.
        check_pixels(page.tilewidth, page.tilelength, f"{where} tile", limits)
    if page.imagedepth != 1:
        raise UnsupportedType(f"unsupported TIFF layout: {where} is a volume (depth > 1)")
    if not 1 <= page.samplesperpixel <= 8:
        raise UnsupportedType(
            f"unsupported TIFF layout: {where} has {page.samplesperpixel} samples per pixel"
        )
    if page.compression not in tifffile.TIFF.DECOMPRESSORS:
        raise UnsupportedType(
            f"unsupported TIFF layout: {where} uses compression {_name(page.compression)}, "
            "which this box cannot decode"
        )
    end = max(
        (o + n for o, n in zip(page.dataoffsets, page.databytecounts, strict=False) if n),
        default=0,
    )
    if end > size:
        raise CorruptFile(f"truncated TIFF: {where} image data ends early")


def _orientation(page: tifffile.TiffPage) -> int:
    tag = page.tags.get(274)  # Orientation, per page
    try:
        return int(tag.value) if tag is not None else 1
    except (TypeError, ValueError):
        return 1  # a mangled tag costs the rotation, not the upload


@contextmanager
def _tifffile_errors(where: str) -> Iterator[None]:
    """tifffile and its codecs raise anything on a damaged file: one line a user can act on."""
    try:
        yield
    except IntakeError:
        raise
    except MemoryError as exc:
        raise DecompressionBomb(f"{where} needs more memory to decode than is allowed") from exc
    except NotImplementedError as exc:
        raise UnsupportedType(f"unsupported TIFF layout: {where}: {_first_line(exc)}") from exc
    except Exception as exc:
        text = str(exc).lower()
        if "truncated" in text or "ends early" in text or isinstance(exc, EOFError):
            raise CorruptFile(f"truncated TIFF: {where} image data ends early") from exc
        raise CorruptFile(f"damaged TIFF: {where} could not be decoded") from exc


def _where(index: int, count: int) -> str:
    return f"TIFF page {index + 1}" if count > 1 else "TIFF"


def _name(code: int) -> str:
    try:
        return f"{tifffile.COMPRESSION(code).name} ({code})"
    except ValueError:
        return str(code)


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
