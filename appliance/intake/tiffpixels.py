"""A decoded tifffile page (any bit depth, sample layout or colour space) as 8-bit RGB."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import tifffile
from PIL import Image

from appliance.errors import UnsupportedType
from appliance.intake.images import to_rgb

# Rows converted at a time: a 60 Mpx 16-bit RGB page never needs a float copy of itself.
_ROWS = 512

_MINISWHITE, _MINISBLACK, _RGB, _PALETTE, _SEPARATED, _YCBCR = 0, 1, 2, 3, 5, 6
_JPEG_COMPRESSIONS = {6, 7}  # old- and new-style: libjpeg hands back RGB already
_ASSOCIATED_ALPHA, _UNASSOCIATED_ALPHA = 1, 2


def page_to_rgb(pixels: np.ndarray, page: tifffile.TiffPage, where: str) -> Image.Image:
    """`pixels` (as `page.asarray()` returned them) as an 8-bit RGB image."""
    samples = _samples_last(pixels, page.axes, where)
    photometric = int(page.photometric)
    if photometric == _PALETTE:
        return Image.fromarray(_palette(samples[..., 0], page), "RGB")
    u8 = _to_uint8(samples, page.bitspersample)
    count = u8.shape[-1]
    alpha = _alpha_mode(page)
    if photometric in (_MINISWHITE, _MINISBLACK):
        grey = u8[..., 0] if photometric == _MINISBLACK else 255 - u8[..., 0]
        if count >= 2 and alpha:
            return to_rgb(Image.fromarray(np.dstack([grey, u8[..., 1]]), "LA"))
        return Image.fromarray(np.ascontiguousarray(grey), "L").convert("RGB")
    if photometric == _RGB or (photometric == _YCBCR and page.compression in _JPEG_COMPRESSIONS):
        if count >= 4 and alpha:
            return to_rgb(Image.fromarray(np.ascontiguousarray(u8[..., :4]), alpha))
        if count >= 3:
            return Image.fromarray(np.ascontiguousarray(u8[..., :3]), "RGB")
    elif photometric == _YCBCR and count >= 3:
        return Image.fromarray(np.ascontiguousarray(u8[..., :3]), "YCbCr").convert("RGB")
    elif photometric == _SEPARATED and count >= 4 and getattr(page, "inkset", 1) == 1:
        # Pillow's CMYK->RGB, as for CMYK JPEGs; other ink sets have no defined RGB.
        return Image.fromarray(np.ascontiguousarray(u8[..., :4]), "CMYK").convert("RGB")
    raise UnsupportedType(
        f"unsupported TIFF layout: {where} is {_photometric_name(photometric)} "
        f"with {count} samples per pixel"
    )


def _samples_last(pixels: np.ndarray, axes: str, where: str) -> np.ndarray:
    """`pixels` as rows x columns x samples, whatever the planar configuration."""
    if set(axes) - set("YXS") or pixels.ndim != len(axes):
        raise UnsupportedType(f"unsupported TIFF layout: {where} has axes {axes}")
    if "S" not in axes:
        return pixels[..., np.newaxis]
    # Planar (separate) data comes as SYX: the planes become the last axis.
    return np.moveaxis(pixels, axes.index("S"), -1) if axes != "YXS" else pixels


def _to_uint8(samples: np.ndarray, bits: int) -> np.ndarray:
    """Samples scaled to 0..255: unsigned integers by their bit depth, others by their range."""
    if samples.dtype == np.bool_:
        return samples.astype(np.uint8) * 255
    kind = samples.dtype.kind
    if kind == "u":
        # Absolute scale (0..2**bits-1 -> 0..255) as for 16-bit PNGs, so a dim scan stays dim;
        # 2-, 4- and 12-bit samples arrive unpacked into 8 or 16 bits.
        top = (1 << min(bits, samples.dtype.itemsize * 8)) - 1
        if top == 255:
            return samples.astype(np.uint8, copy=False)
        return _rows(samples, lambda part: np.minimum(part, top) * (255.0 / top))
    if kind not in "if":
        raise UnsupportedType(f"unsupported TIFF layout: {samples.dtype} samples")
    low, high = float(np.nanmin(samples)), float(np.nanmax(samples))
    if kind == "f" and low >= 0.0 and high <= 1.0:
        return _rows(samples, lambda part: np.nan_to_num(part) * 255.0)
    # Signed or out-of-range float data has no absolute scale: stretch its range.
    span = (high - low) or 1.0
    return _rows(samples, lambda part: (np.nan_to_num(part, nan=low) - low) * (255.0 / span))


def _rows(samples: np.ndarray, scale: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """`scale` applied a band of rows at a time, rounded into a uint8 array."""
    out = np.empty(samples.shape, np.uint8)
    for top in range(0, samples.shape[0], _ROWS):
        part = samples[top : top + _ROWS].astype(np.float32)
        out[top : top + _ROWS] = np.clip(scale(part) + 0.5, 0, 255)
    return out


def _palette(indices: np.ndarray, page: tifffile.TiffPage) -> np.ndarray:
    colormap = page.colormap
    if colormap is None or colormap.ndim != 2 or colormap.shape[0] != 3:
        raise UnsupportedType("unsupported TIFF layout: a palette image without a colour map")
    colormap = np.asarray(colormap)
    # The spec says 16-bit entries; some writers store 8-bit values there.
    table = colormap if colormap.max() < 256 else colormap / 257.0
    table = np.clip(table + 0.5, 0, 255).astype(np.uint8).T
    return table[np.minimum(indices.astype(np.intp), len(table) - 1)]


def _alpha_mode(page: tifffile.TiffPage) -> str | None:
    """The Pillow mode of colour + alpha when the first extra sample is alpha, else None."""
    extra = tuple(page.extrasamples or ())
    if not extra:
        return None
    return {_ASSOCIATED_ALPHA: "RGBa", _UNASSOCIATED_ALPHA: "RGBA"}.get(int(extra[0]))


def _photometric_name(code: int) -> str:
    try:
        return tifffile.PHOTOMETRIC(code).name
    except ValueError:
        return f"photometric {code}"
