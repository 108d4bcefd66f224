"""Limits and bombs: what a file may cost before and while it is decoded, and the one-line
messages that say why it was refused."""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

from PIL import Image

from appliance.errors import (
    CorruptFile,
    DecompressionBomb,
    IntakeError,
    TooLarge,
    UnsupportedType,
)
from appliance.intake.filetypes import LABELS
from appliance.settings import Limits


def check_size(size: int, limits: Limits) -> None:
    """Refuse more bytes than `limits.max_bytes` before any of them is decoded."""
    if size > limits.max_bytes:
        raise TooLarge(
            f"file is {_human_bytes(size)}; the limit is {_human_bytes(limits.max_bytes)}"
        )


def check_pixels(width: int, height: int, where: str, limits: Limits) -> None:
    """Refuse a page by the size its header claims, before a pixel is decoded."""
    if width <= 0 or height <= 0:
        raise CorruptFile(f"damaged {where}: image size is {width}x{height}")
    if width * height > limits.max_pixels:
        raise DecompressionBomb(
            f"{where} is {width}x{height} pixels ({_mpx(width * height)}); "
            f"the limit is {_mpx(limits.max_pixels)}"
        )


class bomb_guard(warnings.catch_warnings):
    """Pillow's DecompressionBombWarning as an exception, for this block only.

    `catch_warnings` swaps process-wide state and is not thread-safe before Python 3.14; the
    explicit header check in `check_pixels` is what actually enforces `Limits.max_pixels`, so
    a thread racing on the filter list can only lose this second line of defence, not the first.
    """

    def __enter__(self) -> None:
        super().__enter__()
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        # Decoder chatter about damage it recovered from ("Corrupt EXIF data"): the decode
        # either succeeds or raises, so these only fill worker logs.
        warnings.filterwarnings("ignore", category=UserWarning, module=r"PIL\.")


@contextmanager
def decoding(kind: str, limits: Limits | None = None) -> Iterator[None]:
    """Run Pillow on untrusted `kind` bytes: bombs and decoder failures become `IntakeError`s.

    Decoders report malformed input as OSError, ValueError, SyntaxError, EOFError,
    struct.error, IndexError, ...: for an untrusted file every one of them means "damaged".
    """
    label = LABELS[kind]
    try:
        with bomb_guard():
            yield
    except IntakeError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise DecompressionBomb(_pillow_bomb_message(label, exc, limits)) from exc
    except MemoryError as exc:
        raise DecompressionBomb(f"{label} needs more memory to decode than is allowed") from exc
    except Exception as exc:
        raise _decode_error(label, exc) from exc


def _decode_error(label: str, exc: BaseException) -> IntakeError:
    text = str(exc).lower()
    # libheif names a codec it was built without ("Support for this compression format has not
    # been built in: AV1 ..."): the file is fine, this box cannot read it.
    if "not been built in" in text or "unsupported feature" in text:
        codec = str(exc).split("built in:", 1)[-1].split("(", 1)[0].strip(" .:")
        what = f"{label} compressed with {codec}" if "built in:" in str(exc) else label
        return UnsupportedType(f"unsupported image type: {what}, which this box cannot decode")
    if isinstance(exc, EOFError) or "truncated" in text or "ends early" in text:
        return CorruptFile(f"truncated {label}: image data ends early")
    return CorruptFile(f"damaged {label}: the image data could not be decoded")


def _pillow_bomb_message(label: str, exc: BaseException, limits: Limits | None) -> str:
    if limits is None:  # only counting pages: no pixel limit to name
        return f"{label} is too large to decode safely"
    match = re.search(r"\((\d+) pixels\)", str(exc))
    limit = _mpx(limits.max_pixels)
    if match:
        return f"{label} is {_mpx(int(match.group(1)))}; the limit is {limit}"
    return f"{label} is too large to decode safely; the limit is {limit}"


def _mpx(pixels: int) -> str:
    return f"{pixels / 1_000_000:.0f} megapixels" if pixels >= 10**6 else f"{pixels} pixels"


def _human_bytes(n: int) -> str:
    for unit, factor in (("GB", 1 << 30), ("MB", 1 << 20), ("KB", 1 << 10)):
        if n >= factor:
            return f"{n / factor:.1f} {unit}".replace(".0 ", " ")
    return f"{n} bytes"
