"""The hard time limit of a worker's runs, on one thread."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any


class Watchdog:
    """One thread for the hard time limit of every run: arming it per job costs a lock, where
    a `threading.Timer` per job would start (and stop) a thread on the job's path."""

    def __init__(self, on_expiry: Callable[..., None]) -> None:
        self._on_expiry = on_expiry
        self._cond = threading.Condition()
        self._deadline: float | None = None
        self._args: tuple[Any, ...] = ()
        self._limit = 0.0
        self._wakes_at = float("inf")  # when the waiting thread looks at the deadline again
        self._thread: threading.Thread | None = None

    @property
    def armed(self) -> bool:
        return self._deadline is not None

    def arm(self, limit: float, *args: Any) -> None:
        """Call `on_expiry(limit, *args)` unless `disarm()` comes within `limit` seconds."""
        with self._cond:
            self._deadline = time.monotonic() + limit
            self._limit, self._args = limit, args
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="job-watchdog", daemon=True)
                self._thread.start()
            elif self._deadline < self._wakes_at:  # else it wakes in time anyway
                self._cond.notify()

    def disarm(self) -> None:
        with self._cond:
            self._deadline = None  # the thread finds out when it next wakes; no wake-up needed

    def _run(self) -> None:
        while True:
            with self._cond:
                while self._deadline is None or time.monotonic() < self._deadline:
                    self._wakes_at = float("inf") if self._deadline is None else self._deadline
                    self._cond.wait(
                        None if self._deadline is None else self._deadline - time.monotonic()
                    )
                limit, args, self._deadline = self._limit, self._args, None
                self._wakes_at = float("inf")
            self._on_expiry(limit, *args)
