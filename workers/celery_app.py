"""The Celery app: `celery -A workers.celery_app worker --pool=solo` (`appliance worker` runs it).

Settings come from `appliance.settings` (env + TOML); the queue policy lives in
`appliance.queue.celery_config`; what a worker does on start lives in `appliance.runtime.worker`.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import signals

from appliance.quiet import silence_known_noise

# Before torch and transformers are imported (by the worker runtime, below and at start).
silence_known_noise()

from appliance.errors import ModelError  # noqa: E402
from appliance.queue import EXIT_CONFIG, QueueMisconfigured, make_celery  # noqa: E402
from appliance.settings import load_settings  # noqa: E402
from workers.runtime import start_runtime, stop_runtime  # noqa: E402

settings = load_settings()
app = make_celery(settings)
# The tasks import this module for `app`; Celery imports them when the worker starts.
app.conf.include = ["workers.tasks"]


@signals.worker_init.connect
def _start_worker(sender: Any = None, **_: Any) -> None:
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s: %(levelname)s] %(message)s")
    logging.getLogger("alembic").setLevel(logging.WARNING)
    log = logging.getLogger("appliance.runtime.worker")
    try:
        queues = sender.app.amqp.queues
        start_runtime(settings, sender.hostname, queues=list(queues.consume_from or queues))
    except (QueueMisconfigured, ModelError) as exc:  # restarting would not help
        log.critical("worker cannot run as configured: %s", exc)
        raise SystemExit(EXIT_CONFIG) from exc
    except Exception as exc:  # Redis or the database not up yet: the supervisor retries
        log.critical("worker could not start: %s", exc)
        raise SystemExit(1) from exc


@signals.worker_shutdown.connect
def _stop_worker(**_: Any) -> None:
    stop_runtime()
