"""Known-harmless library messages, filtered where they are raised.

A newcomer who types `make run` should see the URL, not screens of warnings that say nothing
about their box. Each entry below is one message we have read and judged harmless here, with
why; anything else (a real warning) still shows. Filters match the logger (or warning
category's module) and the start of the message, never a whole library.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass


@dataclass(frozen=True)
class Noise:
    logger: str  # the logger that emits it (a logging.Filter is per logger, not inherited)
    pattern: str  # regular expression searched in the formatted message
    why: str


KNOWN_NOISE: tuple[Noise, ...] = (
    Noise(
        "torchao",
        r"^Failed to load .*/torchao/_C.*\.so",
        "torchao's CUDA-only kernels (mxfp8, cutlass) cannot load on the CPU build of torch",
    ),
    Noise(
        "torchao.kernel.intmm",
        r"Detected no triton",
        "triton is a GPU compiler; the CPU build has none and needs none",
    ),
    Noise(
        "torch.utils._pytree",
        r"is an Enum subclass and is now natively supported by torch\.compile",
        "torchao registers its enums the old way at import; we never torch.compile them",
    ),
    Noise(
        "transformers.configuration_utils",
        r"^`torch_dtype` is deprecated! Use `dtype` instead!",
        "optimum's ONNX export reads the old attribute; our own loaders pass `dtype`",
    ),
)

# Python warnings (warnings.warn), by message start. Only for `appliance up`'s children: a
# demo run as root on a developer's machine; the systemd units never run as root.
DEMO_WARNINGS: tuple[str, ...] = ("You're running the worker with superuser privileges",)


class _Drop(logging.Filter):
    def __init__(self, patterns: list[re.Pattern[str]]) -> None:
        super().__init__()
        self.patterns = patterns

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(p.search(message) for p in self.patterns)


_installed = False


def silence_known_noise() -> None:
    """Install the filters (idempotent). Call before the libraries are imported: some of these
    messages are logged at import time."""
    global _installed
    if _installed:
        return
    _installed = True
    by_logger: dict[str, list[re.Pattern[str]]] = {}
    for noise in KNOWN_NOISE:
        by_logger.setdefault(noise.logger, []).append(re.compile(noise.pattern))
    for name, patterns in by_logger.items():
        logging.getLogger(name).addFilter(_Drop(patterns))


def demo_pythonwarnings() -> str:
    """`PYTHONWARNINGS` for `appliance up`'s children (Celery warns at its own start, before
    any of our code could install a filter)."""
    return ",".join(f"ignore:{start}" for start in DEMO_WARNINGS)
