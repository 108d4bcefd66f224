"""appliance.intake: every input is synthesised in code (tests/fixtures_images.py)."""

from __future__ import annotations

import io
import struct
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pillow_heif
import pypdfium2 as pdfium
import pytest
import tifffile
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image, ImageFile

from appliance.errors import (
    CorruptFile,
    DecompressionBomb,
    EmptyFile,
    IntakeError,
    TooLarge,
    TooManyPages,
    UnsupportedType,
)
from appliance.intake import load_file, load_pages, page_count, precheck, sniff, thumbnail
from appliance.settings import Limits
from tests.fixtures_images import blank_pdf, encode, minimal_pdf, noise, png_claiming

LIMITS = Limits()

RED = (255, 0, 0)
GREEN = (0, 255, 0)
BLUE = (0, 0, 255)
WHITE = (255, 255, 255)


def close_to(actual: tuple[int, ...], expected: tuple[int, ...], tolerance: int = 12) -> bool:
    return all(abs(a - e) <= tolerance for a, e in zip(actual, expected, strict=True))


def solid(colour: tuple[int, int, int], size: tuple[int, int] = (64, 48)) -> Image.Image:
    return Image.new("RGB", size, colour)


def only_page(data: bytes, limits: Limits = LIMITS) -> Image.Image:
    pages = load_pages(data, limits)
    assert len(pages) == 1
    assert pages[0].mode == "RGB"
    return pages[0]


# --- sniffing ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fmt", "expected"),
    [
        ("JPEG", "jpeg"),
        ("PNG", "png"),
        ("WEBP", "webp"),
        ("BMP", "bmp"),
        ("GIF", "gif"),
        ("TIFF", "tiff"),
    ],
)
def test_sniff_recognises_each_image_type_from_content(fmt: str, expected: str) -> None:
    assert sniff(encode(solid(RED), fmt)) == expected


def test_sniff_recognises_pdf_even_with_leading_junk() -> None:
    pdf = minimal_pdf([(100, 100, RED)])
    assert sniff(pdf) == "pdf"
    # Some scanners prepend bytes before %PDF-; readers accept it, so must we.
    assert sniff(b"\r\n\x00junk" + pdf) == "pdf"


@pytest.mark.parametrize(
    ("data", "looks_like"),
    [
        (b"Dear customer,\nplease find attached...\n", "text file"),
        (b"<!DOCTYPE html><html><body>nope</body></html>", "HTML page"),
        (b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg"/>', "SVG"),
        (b"PK\x03\x04" + b"\x00" * 40, "ZIP archive"),
        (b"\x00\x00\x00\x18ftypcrx \x00\x00\x00\x01crx isom", "Canon CR3 raw photo"),
        (b"\x00\x00\x00\x18ftypisom\x00\x00\x02\x00isomiso2", "MP4/MOV video"),
        (b"\x00\x01\x02\x03\xfe\xfd\xfc" * 10, "not a JPEG, PNG"),
        (b"BM but actually a text file about BMW cars", "text file"),
    ],
)
def test_sniff_rejects_other_content_and_says_what_it_looks_like(
    data: bytes, looks_like: str
) -> None:
    with pytest.raises(UnsupportedType, match=looks_like):
        sniff(data)


def test_sniff_of_nothing_is_empty_file() -> None:
    with pytest.raises(EmptyFile):
        sniff(b"")


# --- size, type and corruption guards ---------------------------------------------------------


def test_zero_bytes_is_empty_file() -> None:
    with pytest.raises(EmptyFile, match="empty"):
        load_pages(b"", LIMITS)


def test_file_over_max_bytes_is_too_large_before_anything_is_decoded() -> None:
    data = encode(noise((64, 64)), "PNG")
    limits = Limits(max_bytes=len(data) - 1)
    with pytest.raises(TooLarge, match="the limit is"):
        load_pages(data, limits)
    assert len(load_pages(data, Limits(max_bytes=len(data)))) == 1


def test_load_file_refuses_oversized_file_from_its_size(tmp_path: Path) -> None:
    path = tmp_path / "big.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 5000)
    with pytest.raises(TooLarge, match="4.9 KB; the limit is 1000 bytes"):
        load_file(path, Limits(max_bytes=1000))


def test_text_renamed_to_jpg_is_sniffed_as_not_an_image(tmp_path: Path) -> None:
    path = tmp_path / "holiday.jpg"
    path.write_text("this is not a photo, just a note someone renamed\n")
    with pytest.raises(UnsupportedType, match="text file, not an image"):
        load_file(path, LIMITS)


def test_extension_is_ignored_when_content_is_a_real_image(tmp_path: Path) -> None:
    path = tmp_path / "scan.pdf"
    path.write_bytes(encode(solid(GREEN), "PNG"))
    (page,) = load_file(path, LIMITS)
    assert page.getpixel((5, 5)) == GREEN


def test_truncated_jpeg_is_corrupt_not_half_grey() -> None:
    full = encode(noise((256, 256)), "JPEG", quality=90)
    with pytest.raises(CorruptFile, match="truncated JPEG: image data ends early"):
        load_pages(full[: len(full) // 2], LIMITS)


def test_truncated_png_is_corrupt() -> None:
    full = encode(noise((128, 128)), "PNG")
    with pytest.raises(CorruptFile, match="PNG"):
        load_pages(full[: len(full) - 300], LIMITS)


def test_garbage_after_a_valid_magic_is_corrupt() -> None:
    with pytest.raises(CorruptFile, match="damaged GIF"):
        load_pages(b"GIF89a" + b"\xff" * 3, LIMITS)


def test_truncated_loading_stays_off_globally() -> None:
    # The fix for truncated files must never be Pillow's process-wide LOAD_TRUNCATED_IMAGES.
    full = encode(noise((64, 64)), "JPEG")
    with pytest.raises(CorruptFile):
        load_pages(full[: len(full) // 2], LIMITS)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


# --- decompression bombs ----------------------------------------------------------------------


def test_40000_square_png_bomb_is_rejected_from_the_header() -> None:
    bomb = png_claiming(40000, 40000)
    assert len(bomb) < 100  # a few bytes that would need 1.6 GB to decode
    with pytest.raises(DecompressionBomb, match="1600 megapixels; the limit is 60 megapixels"):
        load_pages(bomb, LIMITS)


def test_image_over_our_limit_but_under_pillows_is_still_a_bomb() -> None:
    # 81 Mpx: below Pillow's own 89 Mpx warning, above Limits.max_pixels.
    with pytest.raises(DecompressionBomb, match="9000x9000 pixels"):
        load_pages(png_claiming(9000, 9000), LIMITS)


def test_pillow_bomb_warning_becomes_an_error_and_filters_are_restored() -> None:
    before = list(warnings.filters)
    max_pixels_before = Image.MAX_IMAGE_PIXELS
    # 100 Mpx trips Pillow's DecompressionBombWarning at open(); the limit here is above
    # that, so only the warning-as-error can stop it before decoding.
    with pytest.raises(DecompressionBomb, match="100 megapixels"):
        load_pages(png_claiming(10000, 10000), Limits(max_pixels=500_000_000))
    assert warnings.filters == before
    assert max_pixels_before == Image.MAX_IMAGE_PIXELS


def test_tiff_page_over_pixel_limit_is_a_bomb() -> None:
    data = encode(solid(RED, (100, 100)), "TIFF")
    with pytest.raises(DecompressionBomb, match="100x100"):
        load_pages(data, Limits(max_pixels=5000))


# --- JPEG -------------------------------------------------------------------------------------


def test_cmyk_jpeg_comes_out_in_the_right_colours() -> None:
    # Left half pure magenta+yellow (red), right half cyan: Adobe-inverted CMYK on disk.
    cmyk = Image.new("CMYK", (64, 32), (0, 255, 255, 0))
    cmyk.paste((255, 0, 0, 0), (32, 0, 64, 32))
    data = encode(cmyk, "JPEG", quality=95)
    assert Image.open(io.BytesIO(data)).mode == "CMYK"
    page = only_page(data)
    assert close_to(page.getpixel((8, 16)), RED)
    assert close_to(page.getpixel((56, 16)), (0, 255, 255))


def test_progressive_jpeg_decodes() -> None:
    data = encode(solid(BLUE, (120, 80)), "JPEG", progressive=True, quality=95)
    assert Image.open(io.BytesIO(data)).info.get("progressive")
    page = only_page(data)
    assert page.size == (120, 80)
    assert close_to(page.getpixel((60, 40)), BLUE)


def test_exif_orientation_6_turns_landscape_storage_into_an_upright_portrait() -> None:
    # Stored 80x40 with a red mark in the stored top-left corner. Orientation 6 means "rotate
    # 90 degrees clockwise to display": the mark must end up in the top-right corner.
    stored = solid(WHITE, (80, 40))
    stored.paste(RED, (0, 0, 16, 16))
    exif = Image.Exif()
    exif[0x0112] = 6
    data = encode(stored, "JPEG", exif=exif.tobytes(), quality=95)

    page = only_page(data)
    assert page.size == (40, 80)
    assert close_to(page.getpixel((40 - 5, 5)), RED)  # top-right
    assert close_to(page.getpixel((5, 5)), WHITE)  # top-left
    assert close_to(page.getpixel((40 - 5, 80 - 5)), WHITE)  # bottom-right


def test_large_jpeg_is_downscaled_with_aspect_kept() -> None:
    data = encode(solid(GREEN, (4000, 2000)), "JPEG")
    page = only_page(data, Limits(max_side=1120))
    assert page.size == (1120, 560)
    assert close_to(page.getpixel((560, 280)), GREEN)


# --- PNG --------------------------------------------------------------------------------------


def test_16_bit_png_is_scaled_to_8_bit_not_clipped() -> None:
    # A horizontal ramp over the whole 16-bit range: column i holds i*257.
    ramp = Image.new("I;16", (256, 4))
    ramp.putdata([x * 257 for _ in range(4) for x in range(256)])
    data = encode(ramp, "PNG")
    assert Image.open(io.BytesIO(data)).mode.startswith("I;16")

    page = only_page(data)
    row = [page.getpixel((x, 2)) for x in range(256)]
    assert row[0] == (0, 0, 0)
    assert row[255] == (255, 255, 255)
    # Pillow's plain convert() would clip everything above 255/65535 to white.
    assert abs(row[128][0] - 128) <= 1
    assert all(abs(value[0] - x) <= 1 for x, value in enumerate(row))


def test_palette_png_with_transparency_is_composited_on_white() -> None:
    palette_image = Image.new("P", (40, 20), 0)
    palette_image.putpalette([0, 0, 0, 255, 0, 0] + [0] * (254 * 3))
    palette_image.paste(1, (20, 0, 40, 20))
    # Index 0 (black) is fully transparent: it must not come out black.
    data = encode(palette_image, "PNG", transparency=0)
    page = only_page(data)
    assert page.getpixel((5, 10)) == WHITE
    assert page.getpixel((30, 10)) == RED


def test_rgba_png_half_transparent_blends_towards_white() -> None:
    data = encode(Image.new("RGBA", (10, 10), (0, 0, 0, 128)), "PNG")
    value = only_page(data).getpixel((5, 5))
    assert close_to(value, (127, 127, 127), tolerance=2)


def test_big_png_is_downscaled_once_to_max_side() -> None:
    data = encode(solid(BLUE, (3000, 1500)), "PNG")
    page = only_page(data, Limits(max_side=1120))
    assert page.size == (1120, 560)
    small = only_page(encode(solid(BLUE, (300, 150)), "PNG"), Limits(max_side=1120))
    assert small.size == (300, 150)


# --- WebP, BMP, GIF, TIFF ---------------------------------------------------------------------


def test_webp_decodes() -> None:
    page = only_page(encode(solid(RED), "WEBP", lossless=True))
    assert page.size == (64, 48)
    assert page.getpixel((10, 10)) == RED


def test_bmp_decodes() -> None:
    page = only_page(encode(solid(GREEN), "BMP"))
    assert page.getpixel((10, 10)) == GREEN


def test_one_bit_bmp_becomes_rgb() -> None:
    page = only_page(encode(Image.new("1", (16, 16), 1), "BMP"))
    assert page.getpixel((3, 3)) == WHITE


def test_animated_gif_gives_only_its_first_frame() -> None:
    frames = [solid(colour) for colour in (RED, GREEN, BLUE)]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100)
    assert Image.open(io.BytesIO(data)).n_frames == 3
    page = only_page(data)
    assert page.getpixel((10, 10)) == RED
    assert page_count(data) == 1


def test_multi_page_tiff_gives_every_page_in_order() -> None:
    frames = [solid(RED, (40, 30)), solid(GREEN, (50, 20)), solid(BLUE, (30, 60))]
    data = encode(frames[0], "TIFF", save_all=True, append_images=frames[1:])
    pages = load_pages(data, LIMITS)
    assert [p.getpixel((5, 5)) for p in pages] == [RED, GREEN, BLUE]
    assert [p.size for p in pages] == [(40, 30), (50, 20), (30, 60)]
    assert all(p.mode == "RGB" for p in pages)
    assert page_count(data) == 3


def test_tiff_over_page_limit_is_too_many_pages() -> None:
    frames = [solid(c) for c in (RED, GREEN, BLUE)]
    data = encode(frames[0], "TIFF", save_all=True, append_images=frames[1:])
    with pytest.raises(TooManyPages, match="TIFF has 3 pages; the limit is 2"):
        load_pages(data, Limits(max_pages=2))


def test_16_bit_tiff_is_scaled_like_png() -> None:
    flat = Image.new("I;16", (8, 8), 32768)
    assert only_page(encode(flat, "TIFF")).getpixel((4, 4)) == (128, 128, 128)


# --- PDF --------------------------------------------------------------------------------------


def test_two_page_pdf_renders_two_rgb_pages_at_pdf_dpi() -> None:
    data = minimal_pdf([(144, 72, RED), (72, 144, BLUE)])
    pages = load_pages(data, Limits(pdf_dpi=100))
    assert len(pages) == 2
    assert all(p.mode == "RGB" for p in pages)
    # 144 pt = 2 in at 100 dpi.
    assert pages[0].size == (200, 100)
    assert pages[1].size == (100, 200)
    assert close_to(pages[0].getpixel((100, 50)), RED)
    assert close_to(pages[1].getpixel((50, 100)), BLUE)
    assert page_count(data) == 2


def test_pdf_over_page_limit_is_refused_without_rendering(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    data = blank_pdf(900)

    def no_render(*args: object, **kwargs: object) -> None:
        raise AssertionError("a page was rendered before the page count was checked")

    monkeypatch.setattr(pdfium.PdfPage, "render", no_render)
    with pytest.raises(TooManyPages, match="PDF has 900 pages; the limit is 50"):
        load_pages(data, LIMITS)


def test_huge_pdf_page_is_rendered_within_the_pixel_and_side_caps() -> None:
    # A 200x200 inch page at 150 dpi would be 900 Mpx.
    data = minimal_pdf([(14400, 14400, GREEN)])
    page = only_page(data, Limits(max_side=1120))
    assert page.size == (1120, 1120)
    tight = only_page(data, Limits(max_side=100_000, max_pixels=1_000_000))
    assert tight.width * tight.height <= 1_000_000
    assert close_to(tight.getpixel((10, 10)), GREEN)


def test_encrypted_pdf_is_corrupt_with_a_password_hint() -> None:
    data = minimal_pdf([(100, 100, RED)], encrypt=True)
    with pytest.raises(CorruptFile, match="password"):
        load_pages(data, LIMITS)


def test_damaged_pdf_is_corrupt() -> None:
    with pytest.raises(CorruptFile, match="damaged PDF"):
        load_pages(b"%PDF-1.7\n" + b"\x00garbage" * 20, LIMITS)


# --- helpers around load_pages ----------------------------------------------------------------


def test_thumbnail_from_bytes_decodes_only_what_it_needs() -> None:
    data = minimal_pdf([(600, 300, RED)] + [(300, 300, BLUE)] * 3)
    preview = Image.open(io.BytesIO(thumbnail(data, 128)))
    assert preview.format == "JPEG"
    assert preview.size == (128, 64)
    assert close_to(preview.getpixel((64, 32)), RED, tolerance=20)


def test_thumbnail_from_pages() -> None:
    pages = load_pages(encode(solid(GREEN, (400, 800)), "PNG"), LIMITS)
    preview = Image.open(io.BytesIO(thumbnail(pages, 100)))
    assert preview.size == (50, 100)
    with pytest.raises(ValueError):
        thumbnail([], 100)


def test_thumbnail_of_bad_bytes_raises_intake_error() -> None:
    with pytest.raises(EmptyFile):
        thumbnail(b"")


def test_page_count_of_a_tiff_bomb_is_a_bomb_not_corruption() -> None:
    # Classic TIFF header + one IFD claiming 20000x20000 (400 Mpx): Pillow refuses at open().
    ifd = b"".join(
        struct.pack("<HHII", tag, 4, 1, value)
        for tag, value in ((256, 20000), (257, 20000), (273, 0), (279, 1))
    )
    data = b"II*\x00" + struct.pack("<I", 8) + struct.pack("<H", 4) + ifd + b"\x00" * 4
    with pytest.raises(DecompressionBomb):
        page_count(data)
    with pytest.raises(DecompressionBomb):
        load_pages(data, LIMITS)


def test_page_count_of_single_images_and_junk() -> None:
    assert page_count(encode(solid(RED), "PNG")) == 1
    with pytest.raises(UnsupportedType):
        page_count(b"just text")
    with pytest.raises(CorruptFile):
        page_count(b"%PDF-1.4 not really")


def test_precheck_names_the_type_and_pages_and_refuses_at_the_door() -> None:
    checked = precheck(encode(solid(RED), "JPEG"), LIMITS)
    assert (checked.kind, checked.pages, checked.mime) == ("jpeg", 1, "image/jpeg")
    assert precheck(blank_pdf(3), LIMITS).pages == 3
    with pytest.raises(TooManyPages, match="the file has 3 pages; the limit is 2"):
        precheck(blank_pdf(3), Limits(max_pages=2))
    with pytest.raises(TooLarge):
        precheck(encode(noise((64, 64)), "PNG"), Limits(max_bytes=100))
    with pytest.raises(DecompressionBomb):
        precheck(png_claiming(20_000, 20_000), LIMITS)
    with pytest.raises(EmptyFile):
        precheck(b"", LIMITS)


def test_concurrent_loads_from_threads_agree() -> None:
    inputs = [
        minimal_pdf([(72, 72, RED), (72, 72, GREEN)]),
        encode(solid(BLUE), "JPEG", quality=95),
        encode(solid(GREEN), "PNG"),
        png_claiming(40000, 40000),
    ]
    start = threading.Barrier(8)

    def work(data: bytes) -> list[tuple[int, int, int]] | str:
        start.wait()
        try:
            return [p.getpixel((5, 5)) for p in load_pages(data, Limits(pdf_dpi=72))]
        except IntakeError as exc:
            return type(exc).__name__

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(work, inputs * 2))
    assert results[:4] == results[4:]
    assert close_to(results[0][0], RED) and close_to(results[0][1], GREEN)
    assert results[3] == "DecompressionBomb"


# --- fuzz -------------------------------------------------------------------------------------


def _heic(image: Image.Image) -> bytes:
    out = io.BytesIO()
    pillow_heif.from_pillow(image).save(out, quality=50)
    return out.getvalue()


def _planar_tiff(pages: int) -> bytes:
    out = io.BytesIO()
    planes = np.moveaxis(np.asarray(noise((24, 16)), np.uint16) * 257, -1, 0)
    tifffile.imwrite(out, np.stack([planes] * pages), photometric="rgb", planarconfig="separate")
    return out.getvalue()


# Small limits keep any mutated header that survives the checks cheap to decode.
FUZZ_LIMITS = Limits(max_pixels=2_000_000, max_side=256, max_pages=5)

SEEDS = [
    encode(noise((24, 16)), "JPEG"),
    encode(noise((24, 16)), "JPEG", progressive=True),
    encode(Image.new("CMYK", (16, 16), (10, 200, 30, 0)), "JPEG"),
    encode(noise((24, 16)), "PNG"),
    encode(Image.new("I;16", (16, 16), 40000), "PNG"),
    encode(noise((24, 16)), "WEBP"),
    encode(noise((24, 16)), "BMP"),
    encode(noise((24, 16)).convert("P"), "GIF", save_all=True, append_images=[solid(RED)]),
    encode(noise((24, 16)), "TIFF", save_all=True, append_images=[solid(BLUE, (8, 8))]),
    encode(noise((24, 16)), "TIFF", compression="tiff_lzw"),
    _planar_tiff(2),
    _heic(noise((24, 16))),
    encode(noise((24, 16)), "AVIF", quality=50),
    minimal_pdf([(50, 40, RED), (40, 50, GREEN)]),
]


@st.composite
def mutated_images(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 6))):
        action = draw(st.sampled_from(["flip", "truncate", "insert", "delete"]))
        # Keep the magic bytes mostly intact so the decoders, not the sniffer, get the damage.
        position = draw(st.integers(min_value=min(8, len(data)), max_value=max(len(data), 8)))
        if action == "flip" and position < len(data):
            data[position] = draw(st.integers(0, 255))
        elif action == "truncate":
            del data[position:]
        elif action == "insert":
            data[position:position] = draw(st.binary(min_size=1, max_size=16))
        elif action == "delete":
            del data[position : position + draw(st.integers(1, 64))]
    return bytes(data)


@settings(
    max_examples=200,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(st.one_of(st.binary(max_size=512), mutated_images()))
def test_fuzz_only_intake_errors_escape(data: bytes) -> None:
    try:
        pages = load_pages(data, FUZZ_LIMITS)
    except IntakeError as exc:
        # Each message is shown to a user as a single line.
        assert str(exc) and "\n" not in str(exc)
        return
    assert pages
    for page in pages:
        assert page.mode == "RGB"
        assert max(page.size) <= FUZZ_LIMITS.max_side
