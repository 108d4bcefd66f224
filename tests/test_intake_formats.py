"""Scanner and phone formats: real files made in the test by the libraries people use (tifffile,
pillow-heif, Pillow's AVIF encoder), each read back as upright RGB pages, and honest errors."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import pillow_heif
import pytest
import tifffile
from PIL import Image

from appliance.errors import CorruptFile, DecompressionBomb, TooManyPages, UnsupportedType
from appliance.intake import load_pages, page_count, precheck, sniff
from appliance.settings import Limits
from tests.api_fixtures import *  # noqa: F403
from tests.api_fixtures import auth

LIMITS = Limits()
ROOT = Path(__file__).resolve().parent.parent

RED = (255, 0, 0)
BLUE = (0, 0, 255)
GREEN = (0, 160, 0)
ORIENTATION = 0x0112

# Stored (as the sensor wrote it) 96 wide x 64 high: a red block at the top-left corner, a blue
# one at the bottom-right, green elsewhere. Blocks are large so lossy codecs keep their colour.
W, H, BLOCK = 96, 64, 24


def stored_rgb() -> np.ndarray:
    pixels = np.empty((H, W, 3), np.uint8)
    pixels[:] = GREEN
    pixels[:BLOCK, :BLOCK] = RED
    pixels[-BLOCK:, -BLOCK:] = BLUE
    return pixels


def close_to(actual: tuple[int, ...], expected: tuple[int, ...], tolerance: int = 40) -> bool:
    return all(abs(a - e) <= tolerance for a, e in zip(actual, expected, strict=True))


def corners(page: Image.Image) -> dict[str, tuple[int, ...]]:
    """The colour well inside each corner (away from lossy edges)."""
    w, h = page.size
    inset = 6
    return {
        "top-left": page.getpixel((inset, inset)),
        "top-right": page.getpixel((w - 1 - inset, inset)),
        "bottom-left": page.getpixel((inset, h - 1 - inset)),
        "bottom-right": page.getpixel((w - 1 - inset, h - 1 - inset)),
    }


def assert_upright_portrait_rotated_90_cw(page: Image.Image) -> None:
    """EXIF orientation 6: the stored landscape is shown turned 90 degrees clockwise."""
    assert page.mode == "RGB" and page.size == (H, W)
    seen = corners(page)
    assert close_to(seen["top-right"], RED), seen
    assert close_to(seen["bottom-left"], BLUE), seen
    assert close_to(seen["top-left"], GREEN), seen


def tiff(pages: list[np.ndarray], **options: Any) -> bytes:
    out = io.BytesIO()
    with tifffile.TiffWriter(out) as writer:
        for pixels in pages:
            writer.write(pixels, **options)
    return out.getvalue()


def planar_16_bit(pixels: np.ndarray) -> np.ndarray:
    """8-bit HxWx3 as the 16-bit planes (3xHxW) a scientific imaging pipeline holds."""
    return np.moveaxis(pixels.astype(np.uint16) * 257, -1, 0)


def exif(orientation: int) -> bytes:
    data = Image.Exif()
    data[ORIENTATION] = orientation
    return data.tobytes()


def heic_photo(orientation: int = 6) -> bytes:
    out = io.BytesIO()
    image = Image.fromarray(stored_rgb(), "RGB")
    pillow_heif.from_pillow(image).save(out, quality=90, exif=exif(orientation))
    return out.getvalue()


def avif_photo(orientation: int = 6) -> bytes:
    out = io.BytesIO()
    Image.fromarray(stored_rgb(), "RGB").save(out, "AVIF", quality=90, exif=exif(orientation))
    return out.getvalue()


# --- TIFF through tifffile ---------------------------------------------------------------------


def test_planar_rgb_multi_page_tiff_from_tifffile_gives_every_page_in_colour() -> None:
    second = stored_rgb()[::-1, ::-1].copy()  # page 2: red at the bottom-right instead
    data = tiff(
        [planar_16_bit(stored_rgb()), planar_16_bit(second)],
        photometric="rgb",
        planarconfig="separate",
    )
    assert sniff(data) == "tiff" and page_count(data) == 2
    first, last = load_pages(data, LIMITS)
    for page in (first, last):
        assert page.mode == "RGB" and page.size == (W, H)
    assert close_to(corners(first)["top-left"], RED, 0), corners(first)
    assert close_to(corners(first)["bottom-right"], BLUE, 0), corners(first)
    assert close_to(corners(last)["bottom-right"], RED, 0), corners(last)
    assert close_to(corners(last)["top-left"], BLUE, 0), corners(last)
    checked = precheck(data, LIMITS)
    assert (checked.kind, checked.pages) == ("tiff", 2)


def test_tiled_16_bit_rgb_tiff_is_scaled_and_turned_upright() -> None:
    pixels = stored_rgb().astype(np.uint16) * 257
    pixels[H // 2, W // 2] = (32896, 16448, 65535)  # 128, 64, 255 in 8 bits
    data = tiff(
        [np.moveaxis(pixels, -1, 0)],
        photometric="rgb",
        planarconfig="separate",
        tile=(32, 32),
        extratags=[(274, "H", 1, 6, True)],  # TIFF Orientation: rotate 90 clockwise to show
    )
    (page,) = load_pages(data, LIMITS)
    assert_upright_portrait_rotated_90_cw(page)
    # Stored (x, y) -> shown (H - 1 - y, x) under orientation 6.
    assert page.getpixel((H - 1 - H // 2, W // 2)) == (128, 64, 255)


@pytest.mark.parametrize(
    ("pixels", "options"),
    [
        (stored_rgb().astype(np.float32) / 255, {}),
        ((stored_rgb().astype(np.uint16) * 257) >> 4, {"bitspersample": 12}),
        (stored_rgb(), {"compression": "webp"}),
    ],
    ids=["float32", "12-bit", "webp-compressed"],
)
def test_tiff_layouts_pillow_cannot_read_come_out_in_colour(
    pixels: np.ndarray, options: dict[str, Any]
) -> None:
    (page,) = load_pages(tiff([pixels], photometric="rgb", **options), LIMITS)
    assert page.mode == "RGB" and page.size == (W, H)
    assert close_to(corners(page)["top-left"], RED, 2), corners(page)
    assert close_to(corners(page)["bottom-right"], BLUE, 2), corners(page)


def test_tifffile_pages_are_guarded_from_the_header_before_decoding(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def never(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("decoded before the limits were checked")

    monkeypatch.setattr(tifffile.TiffPage, "asarray", never)
    planar = planar_16_bit(stored_rgb())
    data = tiff([planar] * 3, photometric="rgb", planarconfig="separate")
    with pytest.raises(TooManyPages, match="TIFF has 3 pages; the limit is 2"):
        load_pages(data, Limits(max_pages=2))
    with pytest.raises(DecompressionBomb, match="96x64"):
        load_pages(data, Limits(max_pixels=5000))
    tiled = tiff([planar], photometric="rgb", planarconfig="separate", tile=(256, 256))
    with pytest.raises(DecompressionBomb, match="tile is 256x256"):
        load_pages(tiled, Limits(max_pixels=50_000))


def test_truncated_tiff_is_damaged() -> None:
    data = tiff([planar_16_bit(stored_rgb())] * 2, photometric="rgb", planarconfig="separate")
    # Cut inside page 2's pixels, and right after page 1 (page 2's directory is gone).
    with pytest.raises(CorruptFile, match="truncated TIFF"):
        load_pages(data[: len(data) - 200], LIMITS)
    one_page = len(tiff([planar_16_bit(stored_rgb())], photometric="rgb", planarconfig="separate"))
    with pytest.raises(CorruptFile, match="truncated TIFF: page 2 is missing"):
        load_pages(data[:one_page], LIMITS)
    with pytest.raises(CorruptFile, match="damaged TIFF"):
        load_pages(data[:60], LIMITS)


@pytest.mark.timeout(20)
def test_tiff_whose_page_chain_loops_back_ends_with_each_page_once() -> None:
    data = bytearray(
        tiff([planar_16_bit(stored_rgb())] * 2, photometric="rgb", planarconfig="separate")
    )
    with tifffile.TiffFile(io.BytesIO(bytes(data))) as tif:
        first, second = (page.offset for page in tif.pages[:2])
    # Page 2's next-directory pointer (after its tag count and tags) back to page 1.
    tags = int.from_bytes(data[second : second + 2], "little")
    pointer = second + 2 + 12 * tags
    data[pointer : pointer + 4] = first.to_bytes(4, "little")
    assert page_count(bytes(data)) == 2
    assert len(load_pages(bytes(data), LIMITS)) == 2


def test_tiff_layouts_nobody_can_read_are_unsupported_not_damaged() -> None:
    with pytest.raises(UnsupportedType, match="unsupported TIFF layout: TIFF is CIELAB"):
        load_pages(tiff([stored_rgb()], photometric="cielab"), LIMITS)
    # A real compression scheme (JBIG, from fax software) with no decoder on this box.
    data = bytearray(tiff([stored_rgb()], photometric="rgb"))
    with tifffile.TiffFile(io.BytesIO(bytes(data))) as tif:
        tag = tif.pages[0].tags[259]
        data[tag.valueoffset : tag.valueoffset + 2] = (34661).to_bytes(2, "little")
    with pytest.raises(
        UnsupportedType, match=r"unsupported TIFF layout: TIFF uses compression JBIG \(34661\)"
    ):
        load_pages(bytes(data), LIMITS)


# --- HEIC and AVIF -----------------------------------------------------------------------------


def test_heic_photo_with_exif_rotation_comes_out_upright() -> None:
    data = heic_photo(orientation=6)
    assert sniff(data) == "heic" and page_count(data) == 1
    (page,) = load_pages(data, LIMITS)
    assert_upright_portrait_rotated_90_cw(page)
    checked = precheck(data, LIMITS)
    assert (checked.kind, checked.pages, checked.mime) == ("heic", 1, "image/heic")


def test_avif_photo_with_exif_rotation_comes_out_upright() -> None:
    data = avif_photo(orientation=6)
    assert sniff(data) == "avif"
    (page,) = load_pages(data, LIMITS)
    assert_upright_portrait_rotated_90_cw(page)
    assert precheck(data, LIMITS).mime == "image/avif"


@pytest.mark.parametrize("make", [heic_photo, avif_photo], ids=["heic", "avif"])
def test_phone_photo_over_the_pixel_limit_is_a_bomb(make: Any) -> None:
    with pytest.raises(DecompressionBomb, match="96x64|64x96"):
        load_pages(make(), Limits(max_pixels=5000))


@pytest.mark.parametrize(("make", "label"), [(heic_photo, "HEIC"), (avif_photo, "AVIF")])
def test_truncated_phone_photo_is_damaged(make: Any, label: str) -> None:
    data = make()
    for cut in (len(data) // 2, len(data) - 10):
        with pytest.raises(CorruptFile, match=f"damaged {label}|truncated {label}"):
            load_pages(data[:cut], LIMITS)


def heif_with_av1_inside() -> bytes:
    """A valid HEIF still image whose codec (AV1) libheif here was built without: only the
    generic HEIF brands, so it is not taken for AVIF."""
    data = avif_photo()
    size = int.from_bytes(data[:4], "big")
    brands = b"mif1" + b"\x00" * 4 + b"mif1miaf" + b"mif1" * ((size - 24) // 4)
    return data[:8] + brands[: size - 8] + data[size:]


def test_heif_with_a_codec_this_box_lacks_is_unsupported_not_damaged() -> None:
    data = heif_with_av1_inside()
    assert sniff(data) == "heic"
    with pytest.raises(UnsupportedType, match="unsupported image type: HEIC compressed with AV1"):
        load_pages(data, LIMITS)


@pytest.mark.parametrize(
    ("data", "brand"),
    [
        (b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic", "heic"),
        (b"\x00\x00\x00\x18ftypmif1\x00\x00\x00\x00mif1heix", "heic"),
        (b"\x00\x00\x00\x18ftypmsf1\x00\x00\x00\x00msf1hevc", "heic"),
        (b"\x00\x00\x00\x1cftypmif1\x00\x00\x00\x00mif1miafavif", "avif"),
        (b"\x00\x00\x00\x18ftypavis\x00\x00\x00\x00avismsf1", "avif"),
    ],
)
def test_sniff_knows_heif_and_avif_by_their_brands(data: bytes, brand: str) -> None:
    assert sniff(data) == brand


# --- through the API: 422 for damaged, 415 for unsupported ------------------------------------


def test_api_answers_422_for_a_damaged_photo_and_415_for_an_unsupported_one(
    client: Any, tokens: dict[str, str]
) -> None:
    def post(data: bytes, name: str) -> Any:
        files = {"file": (io.BytesIO(data), name)}
        return client.post("/api/v1/jobs", headers=auth(tokens["submit"]), data=files)

    heic = heic_photo()
    damaged = post(heic[: len(heic) // 2], "IMG_0001.HEIC")
    assert damaged.status_code == 422, damaged.json
    assert "damaged HEIC" in damaged.json["detail"]
    unsupported = post(heif_with_av1_inside(), "photo.heif")
    assert unsupported.status_code == 415, unsupported.json
    assert "unsupported image type" in unsupported.json["detail"]
    assert post(heic, "IMG_0002.HEIC").status_code == 201
    assert post(avif_photo(), "photo.avif").status_code == 201


# --- the lists people read follow the code -----------------------------------------------------


def test_readme_lists_every_accepted_type() -> None:
    from appliance.intake import ACCEPTED_TEXT, LABELS

    readme = (ROOT / "README.md").read_text()
    assert ACCEPTED_TEXT in readme
    assert all(label in ACCEPTED_TEXT for label in LABELS.values())
