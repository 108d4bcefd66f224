"""The one `WorkerRuntime` of this worker process, started by Celery's `worker_init` signal
(see `celery_app`) and used by the tasks. Imports neither `celery_app` nor `tasks`, so the
Celery module and the task module depend on it without importing each other both ways."""

from __future__ import annotations

import socket

from appliance.runtime.worker import WorkerRuntime
from appliance.settings import Settings

_runtime: WorkerRuntime | None = None


def start_runtime(settings: Settings, hostname: str, queues: list[str] | None = None) -> None:
    global _runtime
    _runtime = WorkerRuntime(settings, hostname, queues=queues)
    _runtime.start()


def stop_runtime() -> None:
    if _runtime is not None:
        _runtime.stop()


def runtime(settings: Settings) -> WorkerRuntime:
    """This process's runtime; outside a worker (eager calls, a shell) one is started without
    warm-up."""
    global _runtime
    if _runtime is None:
        _runtime = WorkerRuntime(settings, "local@" + socket.gethostname())
        _runtime.start(warm=False)
    return _runtime
