"""Raster images through Pillow: one plugin per sniffed type, pages checked by their header
size, JPEGs drafted at reduced scale, EXIF orientation applied, every mode made RGB."""

from __future__ import annotations

import io

import pillow_heif
from PIL import Image, UnidentifiedImageError

from appliance.errors import CorruptFile, TooManyPages, UnsupportedType
from appliance.intake.filetypes import LABELS
from appliance.intake.guards import check_pixels, decoding
from appliance.settings import Limits

# The single Pillow plugin each sniffed type may use.
_PIL_FORMATS: dict[str, list[str]] = {
    "jpeg": ["JPEG"],
    "png": ["PNG"],
    "webp": ["WEBP"],
    "bmp": ["BMP"],
    "gif": ["GIF"],
    "tiff": ["TIFF"],
    "heic": ["HEIF"],
    "avif": ["AVIF"],
}

# HEIC through libheif, as a Pillow plugin: reachable only where `formats=["HEIF"]` asks for it.
# Thumbnails, depth maps and auxiliary images are never used, so they are never decoded either.
# libheif applies the container's rotation (irot/imir) itself and resets the EXIF orientation
# to 1, so `_orientation` below cannot turn a HEIC twice. (AVIF is Pillow's own plugin: it
# reports the container's rotation as EXIF orientation and leaves the turning to us.)
pillow_heif.register_heif_opener(thumbnails=False, depth_images=False, aux_images=False)

# EXIF orientation -> the transpose that makes the picture upright (same table as
# ImageOps.exif_transpose, applied by hand so TIFF frames use their own IFD's tag).
ORIENTATION = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_EXIF_ORIENTATION_TAG = 0x0112


def load_raster(data: bytes, kind: str, limits: Limits, *, first_only: bool) -> list[Image.Image]:
    """The pages of a sniffed raster image through Pillow (only TIFFs have more than one),
    upright RGB. `intake.tiff` decides which TIFFs come here."""
    label = LABELS[kind]
    with decoding(kind, limits), _open_image(data, kind) as im:
        # Only TIFF pages are pages; GIF/WebP/APNG/AVIF frames are animation, MPO's extra
        # frames are stereo/depth views of the same shot, a HEIC's are a burst around its
        # primary image.
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


def tiff_pillow_page_count(data: bytes) -> int:
    """A TIFF's pages as Pillow counts them, from its directory without decoding a pixel."""
    with decoding("tiff"), _open_image(data, "tiff") as im:
        return int(getattr(im, "n_frames", 1))


def _open_image(data: bytes, kind: str) -> Image.Image:
    try:
        return Image.open(io.BytesIO(data), formats=_PIL_FORMATS[kind])
    except UnidentifiedImageError as exc:
        label = LABELS[kind]
        if kind in ("heic", "avif"):
            # Their plugins refuse a cut file at open (the boxes that describe the image are
            # missing), so this is as likely a truncation as a bad header.
            raise CorruptFile(
                f"damaged {label}: the file is truncated or not valid {label}"
            ) from exc
        raise CorruptFile(f"damaged {label}: the header is not valid {label}") from exc


def _decode_frame(im: Image.Image, kind: str, where: str, limits: Limits) -> Image.Image:
    width, height = im.size
    check_pixels(width, height, where, limits)
    if kind == "jpeg":
        # libjpeg can decode at 1/2, 1/4 or 1/8 scale for free; ask for no less than the
        # size we will downscale to anyway, so a 24 Mpx photo never decodes at full size.
        target = fit(width, height, limits.max_side)
        if target != (width, height):
            im.draft(None, target)
    # Force the full decode here, inside the error mapping; without it Pillow decodes lazily
    # and a truncated file would fail later, somewhere that does not expect it.
    im.load()
    # Read after load(): PNG only parses a trailing eXIf chunk once the data is decoded.
    orientation = _orientation(im, kind)
    page = to_rgb(im)
    page = downscale(page, limits.max_side)
    if orientation in ORIENTATION:
        page = page.transpose(ORIENTATION[orientation])
    return page


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


def to_rgb(im: Image.Image) -> Image.Image:
    """Any Pillow mode as 8-bit RGB: transparency on white, high bit depths scaled."""
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


def fit(width: int, height: int, max_side: int) -> tuple[int, int]:
    """The size with the longest side at most `max_side`, aspect kept."""
    longest = max(width, height)
    if longest <= max_side:
        return width, height
    scale = max_side / longest
    return max(1, round(width * scale)), max(1, round(height * scale))


def downscale(page: Image.Image, max_side: int) -> Image.Image:
    """`page` shrunk to fit `max_side` (never enlarged)."""
    target = fit(*page.size, max_side)
    if target == page.size:
        return page
    return page.resize(target, Image.Resampling.LANCZOS)
