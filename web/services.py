"""What the views talk to, built once per process and kept in `app.extensions["appliance"]`.

Everything is created lazily: importing the app or serving `/healthz` must not need Redis, the
database or a model, and gunicorn forks workers after `create_app`, so connections are opened
in the worker that uses them.
"""

from __future__ import annotations

import threading
from functools import cached_property
from typing import TYPE_CHECKING, Any

from flask import current_app

from appliance.settings import Settings

if TYPE_CHECKING:
    from redis import Redis

    from appliance.jobs import JobService
    from appliance.openai import OpenAIBatches, OpenAIFiles
    from appliance.tokens import RateLimiter, TokenStore
    from appliance.webhooks import WebhookService
    from web.auth import _TokenCache


class Services:
    def __init__(self, settings: Settings, **overrides: Any) -> None:
        self.settings = settings
        self._lock = threading.Lock()
        # Tests may pass ready-made collaborators (jobs=..., tokens=..., redis=...).
        for key, value in overrides.items():
            self.__dict__[key] = value

    @cached_property
    def redis(self) -> Redis:
        from redis import Redis

        from appliance.redis_conn import redis_client_kwargs, redis_url

        return Redis.from_url(
            redis_url(self.settings),
            socket_timeout=10,
            socket_connect_timeout=5,
            **redis_client_kwargs(self.settings),
        )

    @cached_property
    def jobs(self) -> JobService:
        from appliance.jobs import JobService

        with self._lock:
            return JobService.from_settings(self.settings)

    @cached_property
    def tokens(self) -> TokenStore:
        from appliance.tokens import TokenStore

        with self._lock:
            return TokenStore.from_settings(self.settings)

    @cached_property
    def webhooks(self) -> WebhookService:
        from appliance.webhooks import WebhookService

        # The job service's store: its doorbell rings the workers for a redelivery.
        return WebhookService(self.jobs.backend.store, self.settings)

    @cached_property
    def openai_files(self) -> OpenAIFiles:
        from appliance.openai import OpenAIFiles

        return OpenAIFiles(self.jobs.store, self.settings, self.jobs.backend.blobs)

    @cached_property
    def openai_batches(self) -> OpenAIBatches:
        from appliance.openai import OpenAIBatches

        return OpenAIBatches(self.jobs, self.openai_files)

    @cached_property
    def limiter(self) -> RateLimiter:
        from appliance.tokens import RateLimiter

        return RateLimiter(self.redis, self.settings.api.rate_limit_per_minute)

    @cached_property
    def demo_models(self) -> list[str]:
        """Names of the configured models that are tiny demo ones (random weights): the panel
        says so, so nobody mistakes their gibberish for a broken box. Read once per process."""
        from appliance.errors import ModelError
        from appliance.registry import ModelRegistry

        registry = ModelRegistry(self.settings.models_dir)
        names = []
        for role, name in (
            ("vision", self.settings.vision_model),
            ("summarizer", self.settings.summarizer_model),
        ):
            try:
                info = registry.resolve(role, name)
            except ModelError:  # not installed here (e.g. a web-only box): nothing to say
                continue
            if info.demo:
                names.append(info.name)
        return names

    @cached_property
    def token_cache(self) -> _TokenCache:
        from web.auth import _TokenCache

        return _TokenCache(self.settings.api.token_cache_seconds)


def services() -> Services:
    return current_app.extensions["appliance"]
