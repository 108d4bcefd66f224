"""Untrusted bytes in, upright RGB pages out: the one door every upload and dropped file goes through.

Everything here treats the input as hostile. The type comes from the content, never the name;
sizes are checked from headers before any pixel is decoded; Pillow only gets the decoder the
content claims to need (`formats=`), so a crafted file cannot reach an obscure plugin; every
decoder failure surfaces as an `IntakeError` whose message is one line a user can act on.

Nothing here mutates module state: Pillow's globals (`MAX_IMAGE_PIXELS`,
`LOAD_TRUNCATED_IMAGES`) are left alone and our own limits come from `Limits`.

The package, by concern: `filetypes` (the accepted types, sniffing, labels, MIME types), `guards`
(size and pixel limits, bombs, decoder failures), `images` (Pillow, with HEIC and AVIF), `tiff` and
`tiffpixels` (TIFF layouts Pillow cannot read, through tifffile), `pdf` (PDFium), `load` (the
loading API) and `precheck` (the cheap check at upload time).
"""

from __future__ import annotations

from appliance.intake.filetypes import (
    ACCEPT,
    ACCEPTED_TEXT,
    LABELS,
    MIME_TYPES,
    SUPPORTED_TYPES,
    sniff,
)
from appliance.intake.load import load_file, load_pages, page_count, thumbnail
from appliance.intake.precheck import Checked, precheck

__all__ = [
    "ACCEPT",
    "ACCEPTED_TEXT",
    "LABELS",
    "MIME_TYPES",
    "SUPPORTED_TYPES",
    "Checked",
    "load_file",
    "load_pages",
    "page_count",
    "precheck",
    "sniff",
    "thumbnail",
]
