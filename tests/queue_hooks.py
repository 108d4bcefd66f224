"""Loaded into test workers with `appliance worker --include tests.queue_hooks`.

Wraps the model call so that tests can steer a job by its file name:
- `slow-*`: the run takes `APPLIANCE_TEST_SLOW_S` seconds longer (so a kill lands mid-job);
- `poison-*`: the worker SIGKILLs itself while running it (a job that crashes CUDA every time).
"""

from __future__ import annotations

import os
import signal
import time

from appliance.runtime.runner import JobRunner

_infer = JobRunner._infer


def _steered_infer(self, jobs, items):  # type: ignore[no-untyped-def]
    names = [job.filename for job in jobs]
    if any(name.startswith("poison") for name in names):
        os.kill(os.getpid(), signal.SIGKILL)
    if any(name.startswith("slow") for name in names):
        time.sleep(float(os.environ.get("APPLIANCE_TEST_SLOW_S", "1.0")))
    return _infer(self, jobs, items)


JobRunner._infer = _steered_infer  # type: ignore[method-assign]
