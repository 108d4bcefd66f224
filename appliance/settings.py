"""The one settings object: `APPLIANCE_*` env vars over an optional TOML file over defaults.

Build it once at the edge (CLI, Celery app, Flask factory, watcher) with `load_settings()` and
pass it down; nothing else in the code base reads the environment for configuration.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

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
    batch_gap_seconds: float = 60.0


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
    # Empty means SQLite in the data dir; a postgresql+psycopg:// URL lets boxes share one queue.
    database_url: str = ""
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = "auto"
    quantization: Literal["none", "int8", "int4"] = "none"
    # Model names from the registry; empty means the first model of that role.
    vision_model: str = ""
    summarizer_model: str = ""
    limits: Limits = Field(default_factory=Limits)
    generation: Generation = Field(default_factory=Generation)
    folders: list[DropFolder] = Field(default_factory=list)

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


def load_settings(config_file: Path | str | None = None, **overrides: object) -> Settings:
    """Settings from (in order of precedence) overrides, env, the TOML file, defaults."""
    if config_file is not None:
        overrides["config_file"] = Path(config_file)
    return Settings(**overrides)
