"""Loaded into test workers with `appliance worker --include tests.queue_hooks`.

Wraps a job's joining of the in-flight batch so that tests can steer a job by its file name:
- `slow-*`: the run takes `APPLIANCE_TEST_SLOW_S` seconds longer (so a kill lands mid-job);
- `poison-*`: the worker SIGKILLs itself while running it (a job that crashes CUDA every time).
"""

from __future__ import annotations

import os
import signal
import time

from appliance.runtime.runner import JobRunner

_joining = JobRunner._joining


def _steered_joining(self, job):  # type: ignore[no-untyped-def]
    # As the job joins the in-flight batch (claimed, running): the batch's other rows wait.
    if job.filename.startswith("poison"):
        os.kill(os.getpid(), signal.SIGKILL)
    if job.filename.startswith("slow"):
        time.sleep(float(os.environ.get("APPLIANCE_TEST_SLOW_S", "1.0")))
    return _joining(self, job)


JobRunner._joining = _steered_joining  # type: ignore[method-assign]
