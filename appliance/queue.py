"""The Redis side of the job queue: Celery configuration, sending, inspecting, events.

Redis only carries *messages* ("run job X"); the job store says what is true. A lost message
is harmless because the reconciler re-sends it from the store, and a duplicate one is harmless
because a worker only runs a job it can claim (queued -> running) in the store.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Iterator
from typing import Any

import redis
from celery import Celery
from kombu import Exchange, Queue

from appliance.errors import ApplianceError
from appliance.redis_conn import (
    RedisUnsafe,
    redis_client_kwargs,
    redis_ssl,
    redis_url,
    require_credentials,
)
from appliance.settings import Settings
from appliance.vocab import BULK, INTERACTIVE

log = logging.getLogger(__name__)

TEXT = "text"
# The webhook outbox's doorbell: a drain of the due deliveries (`appliance.webhooks`).
WEBHOOKS = "webhooks"
LANES: tuple[str, ...] = (INTERACTIVE, BULK)
# Consumed in this order (kombu's "priority" strategy): a waiting panel/API job always goes
# before the drop folders' backlog; summaries and webhook drains are short and come between.
QUEUE_ORDER: tuple[str, ...] = (INTERACTIVE, TEXT, WEBHOOKS, BULK)

RUN_JOB = "appliance.run_job"
SUMMARIZE_JOB = "appliance.summarize_job"
DIGEST_BATCH = "appliance.digest_batch"
DELIVER_WEBHOOKS = "appliance.deliver_webhooks"

# Exit status of a worker that must not run as configured: its supervisor does not restart it.
EXIT_CONFIG = 78

# kombu's Redis transport keeps delivered, unacknowledged messages here.
_UNACKED = "unacked"
_UNACKED_INDEX = "unacked_index"


class QueueMisconfigured(ApplianceError):
    """Redis or the queue settings would lose or duplicate jobs; the worker refuses to start."""


def celery_config(settings: Settings) -> dict[str, Any]:
    """Celery settings for long GPU jobs on Redis (see RELIABILITY.md)."""
    q = settings.queue
    transport = {
        "visibility_timeout": q.visibility_timeout_s,
        "queue_order_strategy": "priority",
        "socket_connect_timeout": 5,
        "socket_timeout": 30,
        "retry_on_timeout": True,
        "health_check_interval": 25,
    }
    exchange = Exchange("appliance", type="direct")
    return {
        "broker_url": redis_url(settings),
        "broker_use_ssl": redis_ssl(settings),
        # No result backend: the job store holds results. (A Redis one would also make every
        # send wait ~20 s for it when Redis is down.) Its options are set anyway, should an
        # operator enable one: a shorter visibility timeout there would re-run long jobs.
        "result_backend": None,
        "broker_transport_options": transport,
        "result_backend_transport_options": {"visibility_timeout": q.visibility_timeout_s},
        "visibility_timeout": q.visibility_timeout_s,
        "broker_connection_retry_on_startup": True,
        "broker_connection_max_retries": None,
        # The store holds results; Celery's result backend is never read.
        "task_ignore_result": True,
        "task_store_errors_even_if_ignored": False,
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "task_acks_on_failure_or_timeout": True,
        "worker_prefetch_multiplier": 1,
        "worker_concurrency": 1,
        "worker_direct": True,
        "worker_send_task_events": False,
        "worker_soft_shutdown_timeout": 10.0,
        # Only enforced by the prefork pool; solo workers use JobRunner's own watchdog.
        "task_time_limit": q.time_limit_s * max(1, q.batch_size) + 60,
        "task_serializer": "json",
        "accept_content": ["json"],
        "task_default_queue": INTERACTIVE,
        "task_default_exchange": "appliance",
        "task_queues": [Queue(name, exchange, routing_key=name) for name in QUEUE_ORDER],
        "task_routes": {
            SUMMARIZE_JOB: {"queue": TEXT, "routing_key": TEXT},
            DIGEST_BATCH: {"queue": TEXT, "routing_key": TEXT},
            DELIVER_WEBHOOKS: {"queue": WEBHOOKS, "routing_key": WEBHOOKS},
        },
        "task_publish_retry_policy": {
            "max_retries": 2,
            "interval_start": 0.2,
            "interval_step": 0.5,
            "interval_max": 1.0,
        },
    }


def make_celery(settings: Settings, main: str = "appliance") -> Celery:
    app = Celery(main, set_as_current=False)
    app.conf.update(celery_config(settings))
    return app


def check_settings(settings: Settings) -> None:
    """Refuse queue settings under which Redis would hand a running job to a second worker,
    or a Redis on the network without credentials."""
    q = settings.queue
    longest = q.time_limit_s * max(1, q.batch_size)
    if q.visibility_timeout_s <= longest:
        raise QueueMisconfigured(
            f"queue.visibility_timeout_s ({q.visibility_timeout_s}) must exceed the longest run "
            f"(time_limit_s {q.time_limit_s} x batch_size {q.batch_size} = {longest} s)"
        )
    if q.stale_after_s <= 2 * q.heartbeat_s:
        raise QueueMisconfigured("queue.stale_after_s must be more than twice heartbeat_s")
    try:
        require_credentials(settings)
    except RedisUnsafe as exc:
        raise QueueMisconfigured(str(exc)) from None


class Broker:
    """Sends job messages and reads what Redis holds. Failures to send are logged, not raised:
    the job is already in the store and the reconciler sends it again."""

    def __init__(self, settings: Settings, app: Celery | None = None) -> None:
        self.settings = settings
        self.app = app or make_celery(settings)
        self.redis = redis.Redis.from_url(
            redis_url(settings),
            socket_connect_timeout=5,
            socket_timeout=30,
            **redis_client_kwargs(settings),
        )

    # -- sending ----------------------------------------------------------------------------

    def _send(self, name: str, args: list[Any], task_id: str, queue: str, countdown: float) -> bool:
        try:
            self.app.send_task(
                name,
                args=args,
                task_id=task_id,
                queue=queue,
                routing_key=queue,
                countdown=countdown if countdown > 0 else None,
            )
            return True
        except Exception as exc:  # broker down: the store still has it
            log.warning("could not send %s %s to Redis (will be re-sent): %s", name, args, exc)
            return False

    def send_job(self, job_id: str, lane: str, countdown: float = 0.0) -> bool:
        return self._send(RUN_JOB, [job_id], job_id, lane, countdown)

    def send_summary(self, job_id: str, countdown: float = 0.0) -> bool:
        return self._send(SUMMARIZE_JOB, [job_id], f"summary-{job_id}", TEXT, countdown)

    def send_digest(self, batch_id: str, countdown: float = 0.0) -> bool:
        return self._send(DIGEST_BATCH, [batch_id], f"digest-{batch_id}", TEXT, countdown)

    def send_webhooks(self) -> bool:
        """Ring for a drain of the webhook outbox, unless a ring is already waiting. The rows
        are the truth: a lost ring only delays them until the reconciler rings again."""
        try:
            if self.redis.llen(WEBHOOKS):
                return True
        except redis.RedisError as exc:
            log.debug("webhook ring skipped, Redis unavailable: %s", exc)
            return False
        return self._send(DELIVER_WEBHOOKS, [], f"webhooks-{uuid.uuid4()}", WEBHOOKS, 0.0)

    # -- inspecting -------------------------------------------------------------------------

    def present_ids(self, unacked_max_age_s: float) -> set[str]:
        """Task ids of messages waiting in a queue, or delivered less than `max_age` ago.

        An older unacknowledged message belongs to a worker that is busy with it (its job is
        then `running`, not `queued`) or dead, so it does not count as present.
        """
        ids: set[str] = set()
        for key in QUEUE_ORDER:  # messages carry no priority: no kombu priority sub-queues
            for raw in self.redis.lrange(key, 0, -1):
                ids.add(_task_id(raw))
        cutoff = time.time() - unacked_max_age_s
        fresh = self.redis.zrangebyscore(_UNACKED_INDEX, cutoff, "+inf")
        if fresh:
            for raw in self.redis.hmget(_UNACKED, fresh):
                if raw is not None:
                    try:
                        ids.add(_task_id(json.loads(raw)[0]))
                    except (ValueError, IndexError, TypeError):
                        continue
        ids.discard("")
        return ids

    def lengths(self) -> dict[str, int]:
        """Messages waiting in Redis per queue (not the truth: see `JobService.queue_depth`)."""
        return {name: int(self.redis.llen(name)) for name in QUEUE_ORDER}

    def check_noeviction(self) -> None:
        """Raise QueueMisconfigured unless Redis keeps every key under memory pressure."""
        try:
            policy = self.redis.config_get("maxmemory-policy").get("maxmemory-policy")
        except redis.ResponseError as exc:  # CONFIG disabled (managed Redis): say so loudly
            raise QueueMisconfigured(
                f"cannot read Redis maxmemory-policy ({exc}); it must be noeviction"
            ) from exc
        if policy != "noeviction":
            raise QueueMisconfigured(
                f"Redis maxmemory-policy is {policy!r}: it would evict queued jobs under memory "
                "pressure; set `maxmemory-policy noeviction` in redis.conf"
            )

    # -- events -----------------------------------------------------------------------------

    def cancel_channel(self, worker: str) -> str:
        return f"{self.settings.queue.events_channel}:cancel:{worker}"

    def send_cancel(self, worker: str, job_id: str) -> None:
        """Tell `worker` at once that its job was cancelled (best effort: its heartbeat finds
        the cancel in the store anyway, within `queue.heartbeat_s`)."""
        try:
            self.redis.publish(self.cancel_channel(worker), json.dumps({"job_id": job_id}))
        except redis.RedisError as exc:
            log.debug("cancel notice failed: %s", exc)

    def _partial_key(self, job_id: str) -> str:
        return f"{self.settings.queue.events_channel}:partial:{job_id}"

    def set_partial(self, job_id: str, text: str) -> None:
        """A running job's text so far (streaming); best effort, gone after 10 minutes."""
        try:
            self.redis.set(self._partial_key(job_id), text, ex=600)
        except redis.RedisError as exc:  # the stream then gets the whole text at the end
            log.debug("partial text not stored: %s", exc)

    def partial(self, job_id: str) -> str:
        """The text a running job has produced so far ('' when none is known)."""
        try:
            value = self.redis.get(self._partial_key(job_id))
        except redis.RedisError:
            return ""
        return value.decode() if isinstance(value, bytes) else (value or "")

    def publish(self, events: list[dict[str, Any]]) -> None:
        channel = self.settings.queue.events_channel
        try:
            pipe = self.redis.pipeline(transaction=False)
            for event in events:
                pipe.publish(channel, json.dumps(event))
            pipe.execute()
        except redis.RedisError as exc:  # listeners fall back to the store's event log
            log.debug("event publish failed: %s", exc)

    def subscribe(
        self, poll_s: float = 1.0, channel: str | None = None
    ) -> Iterator[dict[str, Any] | None]:
        """Events (or what `channel` carries, e.g. `cancel_channel(worker)`) as they are
        published; None after each quiet `poll_s` (for keep-alives).

        Subscribes before returning (raises if Redis is down), so nothing published after
        this call is missed by the returned iterator.
        """
        pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
        pubsub.subscribe(channel or self.settings.queue.events_channel)
        return self._listen(pubsub, poll_s)

    @staticmethod
    def _listen(pubsub: Any, poll_s: float) -> Iterator[dict[str, Any] | None]:
        try:
            while True:
                message = pubsub.get_message(timeout=poll_s)
                if message is None:
                    yield None
                elif message.get("type") == "message":
                    yield json.loads(message["data"])
        finally:
            pubsub.close()


def _task_id(message: bytes | str | dict[str, Any]) -> str:
    try:
        payload = json.loads(message) if isinstance(message, bytes | str) else message
        return str(payload.get("headers", {}).get("id") or "")
    except (ValueError, AttributeError):
        return ""
