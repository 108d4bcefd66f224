"""Every model call of a process on one long-lived thread, whoever asks for it.

CPython 3.11 keeps Python frames in 16 KiB chunks, mapped and unmapped as the call depth
crosses a chunk's end. A decode loop whose per-token calls straddle such an edge pays an
mmap/munmap pair and fresh page faults many times per token: measured here, ~1,100 pairs per
64-token tiny-model job and 20 % more time per job. Where the edge falls depends on how deep
the caller's stack is (Celery's, the job runner's), so the same model ran at different speeds
in the worker and in a plain loop, and any edit to the runner could move it. On its own thread
the model always starts from the same, shallow stack, in every process that runs it.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")


class ModelThread:
    def __init__(self) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="model")

    def run(self, fn: Callable[..., T], *args: object, **kwargs: object) -> T:
        """`fn(*args, **kwargs)` on the model thread; waits, and re-raises what it raised."""
        return self._executor.submit(fn, *args, **kwargs).result()
