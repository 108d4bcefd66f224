"""The one settings object: `APPLIANCE_*` env vars over an optional TOML file over defaults.

Build it once at the edge (CLI, Celery app, Flask factory, watcher) with `load_settings()` and
pass it down; nothing else in the code base reads the environment for configuration.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from appliance.vocab import CLOSED, OFF, WEBHOOK_EVENTS, FailMode, SafetyMode

DEFAULT_CONFIG_FILE = Path("/etc/appliance/appliance.toml")


class Limits(BaseModel):
    """Guards applied to every incoming file before it reaches a model."""

    max_bytes: int = 64 * 1024 * 1024
    # Pillow's own default is ~89 Mpx; a 40000x40000 bomb is 1.6 Gpx.
    max_pixels: int = 60_000_000
    max_pages: int = 50
    pdf_dpi: int = 150
    # Mllama tiles are 560 px and at most 2x2 tiles are used: anything larger is wasted work.
    max_side: int = 1120


class Generation(BaseModel):
    max_new_tokens: int = 256
    temperature: float = 0.0
    seed: int | None = None


class Api(BaseModel):
    """Guards and limits of the HTTP API (`web/`)."""

    # A whole request: every file of a multi-file upload plus the form, or one JSON body with
    # base64 images (4/3 of the raw size).
    max_request_bytes: int = 256 * 1024 * 1024
    max_files: int = 32
    # Per token, fixed one-minute window; 0 switches the limit off.
    rate_limit_per_minute: int = 600
    # Waiting jobs beyond this answer 503 instead of letting the queue grow without bound.
    max_queue_depth: int = 10_000
    queue_full_retry_after: int = 30
    # How long /v1/chat/completions waits for its job before giving up with 504.
    sync_timeout_seconds: float = 300.0
    # An SSE stream ends after this long; clients reconnect (EventSource does on its own).
    events_max_seconds: float = 300.0
    # Verified tokens are cached per process this long, so a revoke takes up to this long.
    token_cache_seconds: float = 5.0
    # OpenAI Files + Batches (`/v1/files`, `/v1/batches`): an uploaded JSONL's size and its
    # lines (OpenAI's own limits: 200 MB, 50 000 requests).
    max_batch_file_bytes: int = 200 * 1024 * 1024
    max_batch_requests: int = 50_000


class Panel(BaseModel):
    """The browser panel (`web/panel/`): login sessions. Added for the panel (issue 6)."""

    # Signs session cookies; made (0600) on first start when missing. Default: data_dir/panel.key.
    secret_key_file: Path | None = None
    session_hours: float = 12.0
    # auto: the cookie is `Secure` when the request came over HTTPS (a plain-HTTP LAN box still
    # works); always/never force it.
    cookie_secure: Literal["auto", "always", "never"] = "auto"
    # How long one live-queue SSE stream lasts before the browser reconnects.
    events_max_seconds: float = 120.0


class FolderWebhook(BaseModel):
    """A subscription for one drop folder's jobs and batches, kept in the settings file.

    The secret is configured here (both ends must know it): make one with
    `appliance webhooks secret`. The box keeps these in step with the file on every worker start.
    """

    url: str
    events: list[str] = Field(default_factory=lambda: list(WEBHOOK_EVENTS))
    secret: str = Field(pattern=r"^whsec_[A-Za-z0-9+/]{32,}={0,2}$")
    description: str = ""


class Webhooks(BaseModel):
    """Signed HTTP callbacks when jobs and batches end (`appliance.webhooks`). Issue 16."""

    # Hosts (exact names), addresses and CIDR networks a target may be on. Empty: no target is
    # allowed. A box inside a hospital network must not become a way to probe it, so a target is
    # resolved and checked at creation and again before every attempt (DNS can change).
    allow: list[str] = Field(default_factory=list)
    # Seconds to wait after each failed attempt (Standard Webhooks' schedule: 5 s, 5 min,
    # 30 min, 2 h, 5 h, 10 h): 7 attempts over about 17 hours, then the delivery has failed.
    retry_schedule_s: list[float] = Field(
        default_factory=lambda: [5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0]
    )
    # Each wait is stretched or shrunk by up to this fraction, so a receiver that comes back
    # is not hit by every backlogged delivery in the same second.
    jitter: float = Field(default=0.2, ge=0.0, le=1.0)
    # A subscription is disabled (with the reason) after this many failed attempts in a row
    # that also span at least disable_after_hours with no success in between.
    disable_after_failures: int = Field(default=10, ge=1)
    disable_after_hours: float = Field(default=24.0, ge=0.0)
    connect_timeout_s: float = 3.0
    timeout_s: float = 10.0
    # Bytes of a response body kept in the delivery log.
    excerpt_bytes: int = 512
    # CA bundle for https targets signed by an in-house CA; None: the system's trust store.
    ca_file: Path | None = None


class DropFolder(BaseModel):
    """One watched folder (see `appliance.watch`)."""

    path: Path
    task: str = "caption"
    prompt: str | None = None
    labels: list[str] = Field(default_factory=list)
    fields: list[str] = Field(default_factory=list)
    summarize: bool = False
    language: str = "en"
    recursive: bool = False
    include: list[str] = Field(default_factory=list)
    exclude: list[str] = Field(default_factory=list)
    polling: bool = False
    settle_seconds: float = 2.0
    output_dir: Path | None = None
    move_done: bool = True
    dedupe: bool = True
    # How long a file's content is remembered for dedupe; the index forgets older entries
    # (on start and hourly), so a camera dropping files all year keeps a bounded index.
    dedupe_days: float | None = 90.0
    batch_gap_seconds: float = 60.0
    # Added for the watcher (issue 7).
    # A writer that cannot be waited on drops `NAME<marker_suffix>` when NAME is complete.
    marker_suffix: str = ".done"
    # A file renamed into place (FTP `x.jpg.part` -> `x.jpg`) is complete at once, no settle wait.
    rename_completes: bool = False
    # Relative to `path` unless absolute; on the same filesystem so moves are atomic renames.
    done_dir: str = "done"
    failed_dir: str = "failed"
    # Files the safety stage blocked (policy `block`), with their verdict and reason.
    blocked_dir: str = "blocked"
    # Write a `batch-<time>.md` digest per batch (needs the summarizer model).
    digest: bool = True
    # PollingObserver scan interval (network mounts), and the safety rescan in inotify mode.
    poll_seconds: float = 1.0
    rescan_seconds: float = 30.0
    # Added for webhooks (issue 16): subscriptions to this folder's job and batch events.
    webhooks: list[FolderWebhook] = Field(default_factory=list)
    # Added for the safety stage (issue 15): this folder's policy (off | flag | block).
    safety: SafetyMode = OFF


class Safety(BaseModel):
    """The safety stage (Llama Guard 3, `appliance.safety`). Added for issue 15.

    A policy per source: off (no check), flag (check and record the verdict), block (an unsafe
    verdict ends the job `blocked`). Drop folders have their own `safety` in `[[folders]]`."""

    panel: SafetyMode = OFF
    api: SafetyMode = OFF
    openai: SafetyMode = OFF  # /v1/chat/completions and /v1/batches
    cli: SafetyMode = OFF  # `appliance submit`; `appliance analyze --safety` overrides
    # By API token name, over `api` and `openai` for that token's requests.
    tokens: dict[str, SafetyMode] = Field(default_factory=dict)
    # What is checked: the image and prompt before analysis, the answer after it, or both.
    # Meta reports the vision guard far stronger on responses, hence the default.
    check: Literal["input", "output", "both"] = "output"
    # An answer that is not a well-formed verdict: closed = unsafe, open = flagged, released.
    fail_mode: FailMode = CLOSED
    # Codes left out of the list the guard is shown (the template's excluded_category_keys).
    exclude: list[str] = Field(default_factory=list)
    # Site-specific categories added to S1..S13: {"S14": "Patient names. ..."}.
    categories: dict[str, str] = Field(default_factory=dict)
    # Registry names (role `safety`); empty: the first guard of that architecture.
    vision_model: str = ""
    text_model: str = ""
    # Also judge follow-up summaries and batch digests with the text guard.
    check_summaries: bool = True

    @field_validator("categories")
    @classmethod
    def _codes(cls, value: dict[str, str]) -> dict[str, str]:
        bad = [code for code in value if not re.fullmatch(r"S[1-9][0-9]*", code)]
        if bad:
            raise ValueError(f"category codes look like S14 (got {', '.join(bad)})")
        return value


class Queue(BaseModel):
    """The job queue and its workers (`appliance.jobs`, `workers/`). Added for issue 4."""

    # Hard limit for one job; a dynamically batched run gets it once per job in the batch.
    time_limit_s: int = 900
    # Must stay above the longest run (time_limit_s * batch_size), or Redis hands a running
    # job to a second worker. Checked when a worker starts.
    visibility_timeout_s: int = 6 * 3600
    # A job that keeps killing its worker (or keeps failing transiently) fails after this many.
    max_attempts: int = 3
    retry_backoff_s: float = 2.0
    retry_backoff_max_s: float = 120.0
    # Continuous batching: a worker's in-flight batch holds up to batch_size rows (pages or
    # chats, any generation parameters); a row that leaves is refilled from the queue at
    # once, and while rows stay free it looks again every batch_wait_ms. continuous=False emulates static batching (rows join only an empty
    # batch), for benchmarks. A row joins only if the batch's KV and cross-attention memory
    # stays within the budget: batch_memory_mb on a CPU, gpu_memory_fraction of the GPU
    # memory free after the model loaded on a GPU.
    batch_size: int = 4
    batch_wait_ms: int = 50
    continuous: bool = True
    batch_memory_mb: int = Field(default=4096, ge=1)
    gpu_memory_fraction: float = Field(default=0.8, gt=0, le=1)
    # Worker liveness: heartbeat period; a worker silent for stale_after_s is presumed dead
    # and its running jobs are re-queued by the reconciler (which runs every reconcile_s).
    heartbeat_s: float = 5.0
    stale_after_s: float = 30.0
    reconcile_s: float = 15.0
    # A queued job not seen in Redis this long after it was sent is re-sent from the store.
    lost_after_s: float = 10.0
    # Purge input files of jobs finished this many days ago; None keeps them forever.
    retention_days: float | None = None
    events_channel: str = "appliance:events"
    # Testing on CPU-only boxes: `--devices 0,1` starts CPU workers named gpu0@, gpu1@.
    simulate_gpus: bool = False


class Storage(BaseModel):
    """Where inputs and artifacts (OpenAI files, batch outputs) live: `appliance.storage`.

    Empty `url`: files under `data_dir` (one box). `s3://BUCKET/PREFIX`: any S3-compatible
    store (SeaweedFS, MinIO, Ceph RGW) shared by every box of a fleet. Added for issue 13.
    """

    url: str = Field(default="", pattern=r"^(s3://[a-z0-9][a-z0-9.-]{1,62}(/.*)?)?$")
    # http(s)://HOST:PORT of the S3 gateway; empty: AWS's own endpoints.
    endpoint_url: str = ""
    region: str = "us-east-1"
    access_key: str = ""
    secret_key: str = ""
    # Files holding the keys (readable by the service user only); they win over the values.
    access_key_file: Path | None = None
    secret_key_file: Path | None = None
    # CA bundle for an https endpoint signed by an in-house CA; None: the system's trust store.
    ca_file: Path | None = None
    # Workers keep downloaded inputs in a local cache of at most this many bytes (least
    # recently used out), so a retry or a multi-page job does not download again. 0: no cache.
    cache_bytes: int = Field(default=2 * 1024**3, ge=0)
    # Default: data_dir/cache.
    cache_dir: Path | None = None
    # One S3 call's connect/read timeouts; the store being away is a wait, never a failure.
    connect_timeout_s: float = 3.0
    read_timeout_s: float = 30.0
    # How long the API tells clients to wait (Retry-After) while the store or database is away.
    retry_after_s: int = 10


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="APPLIANCE_",
        env_nested_delimiter="__",
        extra="ignore",
    )

    config_file: Path | None = None
    models_dir: Path = Path("/var/lib/appliance/models")
    data_dir: Path = Path("/var/lib/appliance/data")
    redis_url: str = "redis://127.0.0.1:6379/0"
    # Credentials for a Redis shared across boxes (ACL user + password); a worker or web
    # process refuses a non-loopback Redis without them. From here or from a file readable by
    # the service user only (never the command line); they win over any in `redis_url`.
    redis_username: str = ""
    redis_password: str = ""
    redis_password_file: Path | None = None
    # For rediss:// with an in-house CA; None: the system's trust store.
    redis_ca_file: Path | None = None
    # Empty means SQLite in the data dir; a postgresql+psycopg:// URL lets boxes share one queue.
    database_url: str = ""
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    # What this worker process reports as its device ("cuda:0 NVIDIA H100 ..."): set per
    # process by `appliance worker` (APPLIANCE_WORKER_DEVICE); None: `device` itself.
    worker_device: str | None = None
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = "auto"
    quantization: Literal["none", "int8", "int4"] = "none"
    # Threads for a process's model work on the CPU (torch intra-op, onnxruntime). 0: the
    # libraries' default (every core) for `appliance analyze`; `appliance worker` instead gives
    # each worker its share of the cores (see workers.gpus.cpu_threads_per_worker), because
    # several spinning OpenMP pools on the same cores slow every one of them.
    cpu_threads: int = Field(default=0, ge=0)
    # Model names from the registry; empty means the first model of that role.
    vision_model: str = ""
    summarizer_model: str = ""
    limits: Limits = Field(default_factory=Limits)
    generation: Generation = Field(default_factory=Generation)
    folders: list[DropFolder] = Field(default_factory=list)
    api: Api = Field(default_factory=Api)
    panel: Panel = Field(default_factory=Panel)
    queue: Queue = Field(default_factory=Queue)
    webhooks: Webhooks = Field(default_factory=Webhooks)
    safety: Safety = Field(default_factory=Safety)
    storage: Storage = Field(default_factory=Storage)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        init_kwargs = getattr(init_settings, "init_kwargs", {})
        path = (
            init_kwargs.get("config_file")
            or os.environ.get("APPLIANCE_CONFIG_FILE")
            or DEFAULT_CONFIG_FILE
        )
        return (
            init_settings,
            env_settings,
            TomlConfigSettingsSource(settings_cls, toml_file=Path(path)),
        )

    @property
    def db_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir / 'appliance.db'}"

    @property
    def uploads_dir(self) -> Path:
        return self.data_dir / "files"

    @property
    def openai_files_dir(self) -> Path:
        """`/v1/files` uploads and batch output files (by file id; not content-addressed:
        deleting one file must not take another's bytes)."""
        return self.data_dir / "openai-files"


def load_settings(config_file: Path | str | None = None, **overrides: object) -> Settings:
    """Settings from (in order of precedence) overrides, env, the TOML file, defaults."""
    if config_file is not None:
        overrides["config_file"] = Path(config_file)
    return Settings(**overrides)
