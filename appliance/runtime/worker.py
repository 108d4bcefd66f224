"""One worker process's life: checks, registration, recovery, warm-up, heartbeats.

`WorkerRuntime.start()` runs in Celery's `worker_init` (solo pool: the same process that will
run the tasks, after any fork, before the first message is consumed), in this order:

1. refuse to start on settings or a Redis that could lose jobs (`QueueMisconfigured`);
2. migrate the store; refuse to start twice under one hostname;
3. re-queue the jobs this hostname was running when it died (the reconciler);
4. keep the settings' per-folder webhook subscriptions in step with the file;
5. start the heartbeat thread (heartbeat, periodic reconcile, self-healing, retention);
6. load and warm the models.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

from appliance.jobs.backend import JobBackend
from appliance.queue import LANES, QUEUE_ORDER, TEXT, Broker, QueueMisconfigured, check_settings
from appliance.runtime.recovery import Reconciler
from appliance.runtime.runner import JobRunner
from appliance.settings import Settings
from appliance.store.base import utcnow
from appliance.store.tables import WorkerRow
from appliance.webhooks import Deliverer, WebhookService

log = logging.getLogger(__name__)


class WorkerRuntime:
    def __init__(
        self,
        settings: Settings,
        hostname: str,
        *,
        device: str | None = None,
        queues: list[str] | None = None,
    ) -> None:
        self.settings = settings
        self.hostname = hostname
        self.device = device or settings.worker_device or settings.device
        self.queues = queues or list(QUEUE_ORDER)
        self.boot = str(uuid.uuid4())
        self.backend: JobBackend | None = None
        self.runner: JobRunner | None = None
        self.reconciler: Reconciler | None = None
        self.deliverer: Deliverer | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.cancels: CancelListener | None = None
        self.ready = False

    def start(self, warm: bool = True) -> None:
        check_settings(self.settings)
        backend = JobBackend.from_settings(self.settings)
        backend.broker.check_noeviction()
        self._refuse_duplicate(backend)
        self.backend = backend
        self.runner = JobRunner(backend, hostname=self.hostname, device=self.device)
        self.runner.boot = self.boot
        self.reconciler = Reconciler(backend, self.hostname)
        # The worker side writes an OpenAI batch's files when its last job ends here.
        backend.on_batch_finished.append(self.reconciler.openai_batches.on_batch_finished)
        self.deliverer = Deliverer(backend.store, self.settings)
        backend.store.register_worker(
            WorkerRow(
                hostname=self.hostname,
                pid=os.getpid(),
                boot=self.boot,
                device=self.device,
                model=None,
                queues=self.queues,
                state="starting",
                current_jobs=[],
            )
        )
        recovered = self.reconciler.recover_worker(
            self.hostname, f"worker {self.hostname} restarted while running it"
        )
        if recovered:
            log.warning("%s: re-queued %d interrupted job(s)", self.hostname, recovered)
        try:
            WebhookService(backend.store, self.settings).sync_settings()
        except Exception as exc:  # jobs matter more than callbacks: run, and say why
            log.error("%s: folder webhooks not synced from the settings: %s", self.hostname, exc)
        self._thread = threading.Thread(target=self._loop, name="appliance-heartbeat", daemon=True)
        self._thread.start()
        self.cancels = CancelListener(backend.broker, self.hostname, self.runner.check_cancelled)
        self.cancels.start()
        if warm:
            started = time.monotonic()
            # Only the models its queues need: `--queues interactive,bulk` needs no summarizer,
            # `--queues text` no vision model.
            self.runner.warm(
                vision=bool(set(self.queues) & set(LANES)), summarizer=TEXT in self.queues
            )
            log.info("%s: models warm in %.1f s", self.hostname, time.monotonic() - started)
        self.ready = True
        backend.store.heartbeat(self.hostname, self.boot, state="idle", model=self._model_name())

    def stop(self) -> None:
        self._stop.set()
        if self.cancels is not None:
            self.cancels.stop()
        if self.runner is not None:
            self.runner.changed.set()
        if self.backend is not None:
            try:
                self.backend.store.heartbeat(self.hostname, self.boot, state="stopped")
            except Exception as exc:
                log.debug("final heartbeat failed: %s", exc)

    def deliver_webhooks(self) -> str:
        """Drain the due webhook deliveries; ring again if some are still due after the
        drain's time slice, so one busy receiver cannot hold this worker for long."""
        assert self.deliverer is not None and self.backend is not None
        counts = self.deliverer.drain()
        if self.backend.store.has_due_deliveries():
            self.backend.broker.send_webhooks()
        return " ".join(f"{k}={v}" for k, v in counts.items())

    def _refuse_duplicate(self, backend: JobBackend) -> None:
        fresh = utcnow() - timedelta(seconds=self.settings.queue.stale_after_s)
        for row in backend.store.list_workers():
            if (
                row.hostname == self.hostname
                and row.state != "stopped"
                and row.heartbeat_at >= fresh
                and row.pid != os.getpid()
                and _same_worker_alive(row.pid, self.hostname)
            ):
                raise QueueMisconfigured(
                    f"worker {self.hostname} is already running (pid {row.pid}); "
                    "give each worker its own hostname"
                )

    def _model_name(self) -> str | None:
        """The vision model this worker loaded (None for a text worker or before warm-up)."""
        assert self.runner is not None
        pipeline = self.runner._pipeline
        if pipeline is not None and "vision" in pipeline.__dict__:
            return getattr(pipeline.vision, "name", None)
        return None

    def _loop(self) -> None:
        q = self.settings.queue
        assert self.backend is not None and self.runner and self.reconciler
        runner = self.runner
        next_reconcile = time.monotonic()
        next_purge = time.monotonic() + 60
        last_beat = 0.0
        while not self._stop.is_set():
            # Beat every heartbeat_s, and soon (at most once a second) after a change. A beat
            # (a store write and a read) takes the GIL from the model thread for ~3 ms: four
            # a second, while short jobs came and went, cost ~1 % of the tiny model's pace.
            runner.changed.wait(q.heartbeat_s)
            self._stop.wait(max(0.0, last_beat + 1.0 - time.monotonic()))
            if self._stop.is_set():
                break
            runner.changed.clear()
            last_beat = time.monotonic()
            try:
                if not self.backend.store.heartbeat(
                    self.hostname,
                    self.boot,
                    state=runner.state if self.ready else "starting",
                    current_jobs=list(runner.current),
                    jobs_done=runner.jobs_done,
                ):
                    log.error("%s: another process took over this worker's row", self.hostname)
            except Exception as exc:
                log.warning("heartbeat failed: %s", exc)
            try:
                runner.check_cancelled()
            except Exception as exc:
                log.warning("checking for cancelled jobs failed: %s", exc)
            now = time.monotonic()
            if now >= next_reconcile:
                next_reconcile = now + q.reconcile_s
                self._reconcile()
            if q.retention_days and now >= next_purge:
                next_purge = now + 3600
                try:
                    self.reconciler.purge()
                except Exception as exc:
                    log.warning("retention purge failed: %s", exc)

    def _reconcile(self) -> None:
        assert self.runner is not None and self.reconciler is not None
        try:
            self.reconciler.run_once()
            # Self-healing: a job the store says we run while we run nothing (a write that
            # failed after the model call, say) goes back to the queue.
            if self.runner.lock.acquire(blocking=False):
                try:
                    self.reconciler.recover_worker(
                        self.hostname, f"worker {self.hostname} lost track of it"
                    )
                finally:
                    self.runner.lock.release()
        except Exception as exc:
            log.warning("reconcile failed: %s", exc)


class CancelListener:
    """Hears the cancel notices for one worker (`Broker.send_cancel`) and calls `on_cancel`,
    which stops the running generation if its jobs are no longer the worker's to finish.

    Only an accelerator: a notice lost while Redis is down is caught by the heartbeat's own
    store check. Survives Redis restarts by subscribing again."""

    def __init__(self, broker: Broker, hostname: str, on_cancel: Callable[[], object]) -> None:
        self.broker = broker
        self.hostname = hostname
        self.on_cancel = on_cancel
        self.subscribed = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cancel-listener", daemon=True)

    def start(self, wait_s: float = 5.0) -> None:
        """Start, and wait (up to `wait_s`) until notices published from now on are heard."""
        self._thread.start()
        self.subscribed.wait(wait_s)

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                notices = self.broker.subscribe(channel=self.broker.cancel_channel(self.hostname))
                self.subscribed.set()
                for notice in notices:
                    if self._stop.is_set():
                        return
                    if notice is not None:
                        self.on_cancel()
            except Exception as exc:  # Redis away: the heartbeat's check covers the gap
                log.debug("cancel listener: %s; subscribing again", exc)
                self._stop.wait(1.0)


def _same_worker_alive(pid: int, hostname: str) -> bool:
    """Whether `pid` is a live process on this machine started for `hostname`."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return True
    return hostname.encode() in cmdline
