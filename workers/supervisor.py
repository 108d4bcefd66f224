"""`appliance worker`: start one Celery worker process per device and keep them running.

Each child is `celery -A workers.celery_app worker --pool=solo --concurrency=1` with its own
hostname (`gpuN@host`) and `CUDA_VISIBLE_DEVICES`. A child that dies is started again at once
(then with growing pauses if it keeps dying); on start it re-queues the job it was running. A
child that exits with EXIT_CONFIG (Redis would evict jobs, a second worker under one name, no
model) is not restarted: the supervisor stops and exits with that status. SIGTERM/SIGINT are
passed on (Celery's warm shutdown: the current job finishes) and the children are killed after
`stop_timeout`. Children die with the supervisor (PR_SET_PDEATHSIG), so a killed supervisor
leaves no orphan holding a GPU.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass

from appliance.queue import EXIT_CONFIG
from workers.gpus import WorkerSpec

log = logging.getLogger("appliance.supervisor")

_PR_SET_PDEATHSIG = 1
# A child that exits sooner than this after its start is crash-looping: back off.
QUICK_EXIT_S = 5.0


def celery_command(
    spec: WorkerSpec, loglevel: str = "INFO", include: list[str] | None = None
) -> list[str]:
    cmd = [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "workers.celery_app",
        "worker",
        "--pool=solo",
        "--concurrency=1",
        "--prefetch-multiplier=1",
        f"--hostname={spec.hostname}",
        f"--queues={','.join(spec.queues)}",
        f"--loglevel={loglevel}",
        "--without-gossip",
        "--without-mingle",
        "--without-heartbeat",
    ]
    if include:
        cmd.append(f"--include={','.join(include)}")
    return cmd


def _die_with_parent() -> None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        pass


@dataclass
class _Child:
    spec: WorkerSpec
    proc: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    failures: int = 0
    next_start: float = 0.0


class Supervisor:
    def __init__(
        self,
        specs: list[WorkerSpec],
        *,
        loglevel: str = "INFO",
        include: list[str] | None = None,
        stop_timeout: float = 60.0,
    ) -> None:
        self.children = [_Child(spec) for spec in specs]
        self.loglevel = loglevel
        self.include = include or []
        self.stop_timeout = stop_timeout
        self._stopping = False

    def _start(self, child: _Child) -> None:
        env = dict(os.environ, **child.spec.env)
        child.proc = subprocess.Popen(
            celery_command(child.spec, self.loglevel, self.include),
            env=env,
            preexec_fn=_die_with_parent,  # noqa: PLW1509 - no threads in the supervisor
        )
        child.started = time.monotonic()
        log.info(
            "started %s (pid %d) on %s", child.spec.hostname, child.proc.pid, child.spec.device
        )

    def _on_signal(self, signum: int, _frame: object) -> None:
        if not self._stopping:
            log.info("stopping workers (signal %d)", signum)
        self._stopping = True

    def run(self) -> int:
        """Run until a signal or a configuration failure; returns the exit status."""
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        status = 0
        for child in self.children:
            self._start(child)
        while not self._stopping:
            time.sleep(0.2)
            now = time.monotonic()
            for child in self.children:
                if child.proc is None:
                    if now >= child.next_start:
                        self._start(child)
                    continue
                code = child.proc.poll()
                if code is None:
                    continue
                child.proc = None
                if self._stopping:
                    break
                if code == EXIT_CONFIG:
                    log.error("%s cannot run as configured; stopping", child.spec.hostname)
                    status = EXIT_CONFIG
                    self._stopping = True
                    break
                # Restart at once, unless it keeps dying within seconds of its start.
                quick = now - child.started < QUICK_EXIT_S
                child.failures = child.failures + 1 if quick else 0
                delay = min(30.0, 2.0 ** (child.failures - 1)) if quick else 0.2
                child.next_start = now + delay
                log.warning(
                    "%s exited with status %s; restarting in %.1f s",
                    child.spec.hostname,
                    code,
                    delay,
                )
        self._stop_all()
        return status

    def _stop_all(self) -> None:
        running = [c.proc for c in self.children if c.proc is not None and c.proc.poll() is None]
        for proc in running:
            proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.stop_timeout
        for proc in running:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("pid %d did not stop in time; killing it", proc.pid)
                proc.kill()
                proc.wait()
